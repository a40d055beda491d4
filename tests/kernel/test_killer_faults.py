"""The killer under faults, on real cgroups: a fork bomb in a job that only
signals can kill, a daemon killed in the middle of a kill, a private cgroup
namespace, a job that empties or vanishes by itself.

Every fork bomb here lives in an arena job with a v1 pids cgroup of its own
(``pids.max``) and caps its own forks; the arena kills what is left on close.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kproc import DaemonProc, wait_for

from oomkiller import killer as killer_mod, report
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.killer import EMPTIED_BEFORE_SIGNAL, Killer, Releaser
from oomkiller.core.rank import Policy, rank

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A respawning fork bomb: each member below generation G keeps K children
# alive, each through a loop that forks a replacement the moment its child
# dies, at most F times. K=3, G=5: 727 processes (364 members, 363 loops),
# about 160 KiB each. It sits in wait() once grown, so it costs no CPU until
# someone starts killing it.
BOMB = r"""
K=$1 G=$2 F=$3
m() {
  if [ "$1" -ge "$G" ]; then exec sleep 3600; fi
  i=0
  while [ $i -lt $K ]; do
    ( f=0; while [ $f -lt $F ]; do m $(($1 + 1)) & wait $!; f=$((f + 1)); done; exec sleep 3600 ) &
    i=$((i + 1))
  done
  wait
  exec sleep 3600
}
echo ready
exec >/dev/null
m 0
"""
BOMB_PROCS = 727
PIDS_MAX = 1000

TIMEOUT_USEC = 5_000_000        # kill_timeout_ms's default
# What a kill may take beyond its timeout: one read of the subtree and one
# signal (measured: under 11 ms on 2 cores with a fork bomb spinning on one),
# with room for a loaded CI machine.
MARGIN_USEC = 250_000


def spawn_bomb(arena, job):
    p = arena.spawn(job, ["dash", "-c", BOMB, "bomb", "3", "5", "50"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "ready"
    cg = Cgroupfs()
    wait_for(lambda: len(cg.subtree_pids(job.path)) >= BOMB_PROCS, 60, "the bomb to grow")
    return p


def the_candidate(cg, arena, name):
    ranking = rank(cg.jobs(arena.path, (name,)), Policy(self_pid=os.getpid()), 256 << 20)
    (c,) = ranking.killable()
    return c


class SlowMrelease:
    """A process_mrelease that takes its time, and notes the thread it ran on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[int] = []

    def __call__(self, pidfd: int) -> int:
        self.threads.append(threading.get_ident())
        time.sleep(self.seconds)
        return 0


def freeze(path: str, state: str) -> None:
    with open(os.path.join(path, "freezer.state"), "w") as f:
        f.write(state)
    wait_for(lambda: open(os.path.join(path, "freezer.state")).read().strip() == state, 10, f"{state} {path}")


def test_a_fork_bomb_in_a_signal_only_job_is_emptied_within_the_timeout(arena):
    job = arena.job("bomb", v2=False, pids_max=PIDS_MAX)
    spawn_bomb(arena, job)
    cg = Cgroupfs()
    c = the_candidate(cg, arena, "bomb")
    assert c.job.v2_path == "", "the job must have no cgroup.kill to write"
    slow = SlowMrelease(0.05)
    releaser = Releaser(syscall=slow)
    killer = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC, releaser=releaser)
    t0 = time.monotonic()
    res = killer.kill(c)
    wall_usec = int((time.monotonic() - t0) * 1e6)
    assert (res.ok, res.method, res.error) == (True, "signal", "")
    assert len(res.signalled_pids) >= BOMB_PROCS
    assert cg.subtree_pids(job.path) == []
    assert res.signal_to_empty_usec <= TIMEOUT_USEC and wall_usec <= TIMEOUT_USEC + MARGIN_USEC
    # process_mrelease ran on another thread, and the kill did not wait for
    # it: done one after the other, the calls queued would take longer.
    wait_for(releaser.idle, 30, "the queued process_mrelease calls")
    assert slow.threads and threading.get_ident() not in slow.threads
    assert releaser.queued + releaser.dropped >= BOMB_PROCS
    assert wall_usec < releaser.queued * slow.seconds * 1e6


def test_the_kill_timeout_holds_when_the_job_cannot_empty(arena, monkeypatch):
    # Frozen below the job, with the killer's thaw of where its victims are
    # turned off (test_freeze_elsewhere.py has it): these v1 frozen tasks do
    # not die until this test thaws them.
    monkeypatch.setattr(killer_mod._Kill, "_thaw_where_frozen", lambda self, pids: False)
    arena.job("stuck", v2=False, freezer=True)
    inner = arena.job("stuck/inner", v2=False, freezer=True)
    procs = [arena.spawn_idle(inner, 1 << 20) for _ in range(3)]
    freeze(inner.freezer_path, "FROZEN")
    cg = Cgroupfs()
    c = the_candidate(cg, arena, "stuck")
    killer = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=300_000,
                    releaser=Releaser(syscall=SlowMrelease(2.0)))
    t0 = time.monotonic()
    res = killer.kill(c)
    wall_usec = int((time.monotonic() - t0) * 1e6)
    assert 300_000 <= wall_usec <= 300_000 + MARGIN_USEC
    assert res.ok and sorted(res.signalled_pids) == sorted(p.pid for p in procs)
    assert res.error.startswith("3 procs left after 3")
    # signalled, not emptied: neither the result nor the line may say empty
    assert not res.emptied and sorted(res.left_pids) == sorted(p.pid for p in procs)
    assert res.signal_to_empty_usec == 0 and not res.thawed
    line = report.outcome_line(c, res, 400_000)
    assert line.startswith("OOM: signalled job 'stuck' by signal: 3 procs, 0B freed, NOT EMPTY: 3 procs left after 3")
    assert "empty 0.0 ms" not in line and "killed" not in line
    rec = report.result_record(res)
    assert (rec["emptied"], sorted(rec["left_pids"])) == (False, sorted(p.pid for p in procs))
    assert open(os.path.join(inner.freezer_path, "freezer.state")).read().strip() == "FROZEN"
    freeze(inner.freezer_path, "THAWED")
    for p in procs:
        assert p.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.parametrize("v2", [False, True])
def test_a_job_frozen_by_someone_else_with_the_v1_freezer_is_thawed_once_signalled_and_dies(arena, v2):
    job = arena.job("paused", v2=v2, freezer=True)
    procs = [arena.spawn_idle(job, 1 << 20) for _ in range(2)]
    freeze(job.freezer_path, "FROZEN")
    cg = Cgroupfs()
    c = the_candidate(cg, arena, "paused")
    killer = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC)
    t0 = time.monotonic()
    res = killer.kill(c)
    assert time.monotonic() - t0 < 1.0, "it must not sit out kill_timeout_ms"
    assert (res.ok, res.error, res.emptied, res.thawed) == (True, "", True, True)
    assert res.method == ("cgroup.kill" if v2 else "signal")
    assert sorted(res.signalled_pids) == sorted(p.pid for p in procs)
    for p in procs:
        assert p.wait(timeout=10) == -signal.SIGKILL
    assert open(os.path.join(job.freezer_path, "freezer.state")).read().strip() == "THAWED"
    assert "thawed its v1 freezer" in report.outcome_line(c, res, 1000)


def test_a_job_frozen_with_the_v2_freezer_dies_as_it_is(arena):
    job = arena.job("paused", v2=True)
    if not job.v2_path:
        pytest.skip("no v2 cgroup for the job")
    procs = [arena.spawn_idle(job, 1 << 20) for _ in range(2)]
    with open(os.path.join(job.v2_path, "cgroup.freeze"), "w") as f:
        f.write("1")
    wait_for(lambda: "frozen 1" in open(os.path.join(job.v2_path, "cgroup.events")).read(), 10, "v2 frozen")
    cg = Cgroupfs()
    c = the_candidate(cg, arena, "paused")
    res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).kill(c)
    assert (res.ok, res.method, res.error, res.emptied, res.thawed) == (True, "cgroup.kill", "", True, False)
    assert res.signal_to_empty_usec < 1_000_000
    for p in procs:
        assert p.wait(timeout=10) == -signal.SIGKILL
    # still frozen as someone left it: nothing was thawed or frozen by the kill
    assert open(os.path.join(job.v2_path, "cgroup.freeze")).read().strip() == "1"


def test_the_daemon_kills_a_fork_bomb_in_a_signal_only_job_within_the_timeout(arena, daemon):
    job = arena.job("bomb", v2=False, pids_max=PIDS_MAX)
    spawn_bomb(arena, job)
    d = daemon("--domain", arena.path, "--redline", "1M")
    assert d.ctl("lowmem").returncode == 0
    wait_for(d.records, 30, "a decision record")
    rec = d.records()[-1]
    assert rec["result"] == "killed" and rec["victim"]["job"] == "bomb"
    (att,) = rec["attempts"]
    assert (att["ok"], att["method"], att["error"]) == (True, "signal", "")
    assert len(att["pids"]) >= BOMB_PROCS
    assert 0 < att["signal_to_empty_usec"] <= TIMEOUT_USEC
    assert rec["timings_usec"]["kill"] <= TIMEOUT_USEC + MARGIN_USEC
    assert Cgroupfs().subtree_pids(job.path) == []


def sigkill_pending(pid: int) -> bool:
    """Whether a SIGKILL waits for the process, or it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return True
    bit = 1 << (signal.SIGKILL - 1)
    return bool((int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)) & bit) or fields["State"][0] in "ZX"


def test_a_daemon_killed_mid_kill_leaves_nothing_frozen_and_a_restart_empties_the_job(arena, daemon, tmp_path):
    # A job with a freezer cgroup where a killer that freezes would look,
    # and inside it a cgroup this test freezes itself, so that the kill
    # cannot end before the daemon is killed.
    big = arena.job("big", v2=False, pids_max=PIDS_MAX, freezer=True)
    stuck = arena.job("big/stuck", v2=False, freezer=True)
    spawn_bomb(arena, big)
    held = arena.spawn_idle(stuck, 1 << 20)
    freeze(stuck.freezer_path, "FROZEN")
    first = min(Cgroupfs().subtree_pids(big.path))
    d = daemon("--domain", arena.path, "--redline", "1M")
    assert d.ctl("lowmem").returncode == 0
    # kill -9 the daemon as soon as its first signal is out
    wait_for(lambda: sigkill_pending(first), 20, "the kill to begin", step_s=0.0005)
    d.p.send_signal(signal.SIGKILL)
    assert d.p.wait(timeout=10) == -signal.SIGKILL
    assert d.records() == [], "the kill was to be cut short"
    left = len(Cgroupfs().subtree_pids(big.path))
    assert left >= 1, "the frozen process at least is left"
    # nothing the daemon could have frozen is frozen; ours is as we left it
    assert open(os.path.join(big.freezer_path, "freezer.state")).read().strip() == "THAWED"
    assert open(os.path.join(stuck.freezer_path, "freezer.state")).read().strip() == "FROZEN"
    freeze(stuck.freezer_path, "THAWED")
    try:
        held.wait(timeout=2)        # it dies now if the daemon had signalled it
    except subprocess.TimeoutExpired:
        pass
    again = DaemonProc(tmp_path / "restart", "--domain", arena.path, "--redline", "1M")
    try:
        if Cgroupfs().subtree_pids(big.path):
            assert again.ctl("lowmem").returncode == 0
            wait_for(again.records, 30, "the restarted daemon's record")
            rec = again.records()[-1]
            assert rec["result"] == "killed" and rec["attempts"][-1]["ok"], rec
        wait_for(lambda: not Cgroupfs().subtree_pids(big.path), 10, "the job to empty")
        assert held.wait(timeout=10) == -signal.SIGKILL
    finally:
        again.stop()


# Run inside a private cgroup namespace rooted at a cgroup of the arena: the
# target job lies outside that root, so /proc/PID/cgroup shows its processes
# at paths beginning with "/..".
IN_NAMESPACE = r"""
import json, os, sys
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.killer import Killer
from oomkiller.core.rank import Policy, rank
cg = Cgroupfs()
(c,) = rank(cg.jobs(sys.argv[1], ("sigjob",)), Policy(self_pid=os.getpid()), 256 << 20).killable()
seen = [cg.procfs.cgroups(p.pid).get("memory") for p in c.job.procs]
res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000).kill(c)
print(json.dumps({"own": cg.procfs.cgroups(os.getpid()).get("memory"), "seen": seen, "v2": c.job.v2_path,
                  "ok": res.ok, "method": res.method, "pids": list(res.signalled_pids), "error": res.error}))
"""


def test_a_kill_from_a_private_cgroup_namespace_is_done_and_counted(arena):
    job, ctl = arena.job("sigjob", v2=False), arena.job("ctl", v2=False)
    procs = [arena.spawn_idle(job, 1 << 20) for _ in range(3)]
    out = arena.spawn(ctl, ["unshare", "--cgroup", sys.executable, "-c", IN_NAMESPACE, arena.path],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stdout, stderr = out.communicate(timeout=60)
    assert out.returncode == 0, stderr
    r = json.loads(stdout)
    assert r["own"] == "/", "the namespace is rooted at the runner's own cgroup"
    assert r["seen"] and all(s.startswith("/../") for s in r["seen"]), r["seen"]
    assert r["v2"] == ""
    assert (r["ok"], r["method"], r["error"]) == (True, "signal", "")
    assert sorted(r["pids"]) == sorted(p.pid for p in procs)
    for p in procs:
        assert p.wait(timeout=10) == -signal.SIGKILL


def test_a_job_that_empties_by_itself_is_not_counted_as_our_kill(arena):
    gone, nxt = arena.job("gone", v2=False), arena.job("next", v2=False)
    g = arena.spawn_idle(gone, 60 << 20)
    n = arena.spawn_idle(nxt, 20 << 20)
    cg = Cgroupfs()
    ranking = rank(cg.jobs(arena.path, ("*",)), Policy(self_pid=os.getpid()), 256 << 20)
    assert [c.job.name for c in ranking.killable()] == ["gone", "next"]
    # someone else (the kernel's OOM killer, say) kills it between the ranking and the kill
    g.kill()
    g.wait()
    wait_for(lambda: not cg.subtree_pids(gone.path), 5, "the cgroup to empty")
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).walk(ranking)
    assert [(c.job.name, r.ok, r.method, r.signalled_pids, r.error) for c, r in attempts] == [
        ("gone", False, "none", (), EMPTIED_BEFORE_SIGNAL), ("next", True, "signal", (n.pid,), "")]
    lines = report.walk_lines(ranking, attempts)
    assert lines[0] == f"OOM:   (fail) job {os.stat(gone.path).st_ino:6d} 'gone': {EMPTIED_BEFORE_SIGNAL}"
    assert lines[1] == f"OOM:   *KILL* job {os.stat(nxt.path).st_ino:6d} 'next'"
    assert n.wait(timeout=5) == -signal.SIGKILL


class RemovingCgroupfs(Cgroupfs):
    """Removes a job's cgroup (ending its process first) at a given read of
    its subtree: as if it went away in the middle of the kill."""

    def __init__(self, path: str, at_read: int, proc: subprocess.Popen, arena) -> None:
        super().__init__()
        self.target, self.at_read, self.proc, self.arena = path, at_read, proc, arena
        self.reads = 0

    def subtree_pids(self, path: str) -> list[int]:
        if path == self.target:
            self.reads += 1
            if self.reads == self.at_read:
                self.proc.kill()
                self.proc.wait()
                wait_for(lambda: not super(RemovingCgroupfs, self).subtree_pids(path), 5, "the cgroup to empty")
                os.rmdir(path)
                self.arena._dirs.remove(path)
        return super().subtree_pids(path)


def test_a_job_removed_mid_kill_does_not_end_the_walk(arena):
    gone, nxt = arena.job("gone", v2=False), arena.job("next", v2=False)
    g = arena.spawn_idle(gone, 60 << 20)
    n = arena.spawn_idle(nxt, 20 << 20)
    # read 1 starts the kill, read 2 is the sweep's: the cgroup is gone by then
    cg = RemovingCgroupfs(gone.path, 2, g, arena)
    ranking = rank(cg.jobs(arena.path, ("*",)), Policy(self_pid=os.getpid()), 256 << 20)
    cg.reads = 0
    assert [c.job.name for c in ranking.killable()] == ["gone", "next"]
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).walk(ranking)
    assert [(c.job.name, r.ok, r.error) for c, r in attempts] == [
        ("gone", False, "cgroup vanished before our signal"), ("next", True, "")]
    assert n.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.parametrize("state", ["FROZEN", "THAWED"])
def test_the_arena_empties_a_fork_bomb_job_on_close(state):
    """The arena's own cleanup: a bomb, frozen or not, is gone with it."""
    from oomkiller_bench.arena import Arena
    with Arena(f"oomk-test-close-{os.getpid()}", 256 << 20) as a:
        job = a.job("bomb", v2=False, pids_max=PIDS_MAX, freezer=True)
        spawn_bomb(a, job)
        if state == "FROZEN":
            freeze(job.freezer_path, "FROZEN")
        paths = job.cgroups()
    assert not any(os.path.exists(p) for p in paths)


class KillsBeforeTheWrite(Cgroupfs):
    """Ends some of the job's processes (as the kernel's OOM killer or their
    own exit would) between the kill's read of its pids and its write of
    cgroup.kill: in the check that the v2 cgroup holds only the job's own."""

    def __init__(self, victims: list[subprocess.Popen]) -> None:
        super().__init__()
        self.victims = victims

    def only_holds(self, path, pids):
        for p in self.victims:
            p.kill()
            p.wait()
        return super().only_holds(path, pids)


def test_cgroup_kill_of_a_job_someone_else_emptied_is_not_our_kill(arena):
    job = arena.job("victim")
    p = arena.spawn_idle(job, 8 << 20)
    cg = KillsBeforeTheWrite([p])
    c = the_candidate(cg, arena, "victim")
    assert c.job.v2_path, "the job must have a cgroup.kill to write"
    res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).kill(c)
    assert (res.ok, res.method, res.signalled_pids, res.error) == (False, "none", (), EMPTIED_BEFORE_SIGNAL)


def test_cgroup_kill_counts_only_the_processes_alive_at_the_write(arena):
    job = arena.job("victim")
    gone, alive = arena.spawn_idle(job, 8 << 20), arena.spawn_idle(job, 8 << 20)
    cg = KillsBeforeTheWrite([gone])
    c = the_candidate(cg, arena, "victim")
    res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).kill(c)
    assert (res.ok, res.method, res.signalled_pids, res.error, res.emptied) == (
        True, "cgroup.kill", (alive.pid,), "", True)
    assert alive.wait(timeout=10) == -signal.SIGKILL
    assert res.signal_to_exit_usec > 0
