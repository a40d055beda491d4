"""The daemon end to end on real cgroups: it kills real jobs, and only them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from kproc import wait_for

from oomkiller.cgroupfs import Cgroupfs
from oomkiller.killer import Killer, _Kill
from oomkiller.procfs import start_ticks
from oomkiller.core.rank import Policy, rank

FORKER = r"""
import os, sys, time
print("ready", flush=True)
kids = 0
while True:
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    kids += 1
    if kids > 400:
        time.sleep(3600)
"""


def test_redline_kills_the_growing_job_before_the_kernel(arena, daemon):
    svc, hog = arena.job("svc"), arena.job("hog")
    service = arena.spawn_idle(svc, 32 << 20)
    d = daemon("--domain", arena.path, "--redline", "64M", "--sleep-ms", "100", "--protect", "svc")
    grower = arena.spawn_hog(hog, 8 << 20, 0.05)
    assert grower.wait(timeout=60) == -signal.SIGKILL
    assert service.poll() is None, "the protected job was killed"
    assert arena.kernel_oom_kills() == 0, "the kernel OOM killer acted first"
    wait_for(lambda: [r for r in d.records() if r["event"] == "oom_decision"], 5, "a decision record")
    (rec,) = [r for r in d.records() if r.get("result") == "killed"]
    assert rec["decision"] == "free below redline"
    assert rec["victim"]["job"] == "hog" and rec["attempts"][0]["pids"] == [grower.pid]
    assert rec["attempts"][0]["signal_to_empty_usec"] > 0 and rec["freed_bytes"] > 64 << 20
    assert [c["job"] for c in rec["ranking"]] == ["hog", "svc"] and rec["ranking"][1]["killable"] is False
    # the log is written off the loop: its walk lines may come after the record
    kill_line = f"OOM:   *KILL* job {os.stat(hog.path).st_ino:6d} 'hog'"
    err = wait_for(lambda: (lambda e: e if kill_line in e and "OOM:        = " in e else None)(d.stderr()), 5,
                   "the walk in the log")
    assert "OOM: Finding a job to kill..." in err
    assert kill_line in err
    assert f"OOM:        + proc {grower.pid:5d}  run 'python" in err
    assert "OOM:        = 1 running procs (1 total), 0 jobs" in err
    assert d.stop() == 0


def test_control_commands_and_lowmem_walk(arena, daemon):
    big, small = arena.job("big"), arena.job("small")
    b = arena.spawn_idle(big, 40 << 20)
    s = arena.spawn_idle(small, 20 << 20)
    d = daemon("--domain", arena.path, "--redline", "1M", "--sleep-ms", "1000")
    info = d.ctl("info")
    assert info.returncode == 0
    assert "OOM info:\n  running: true\n  printing: false\n  simulating lowmem: false\n" \
           "  sleep duration: 1000ms\n  redline: 1M (1048576 bytes)\n" in info.stdout
    assert "timer: live" in info.stdout and "kills: 0" in info.stdout
    assert d.ctl("stop").returncode == 0
    assert json.loads(d.ctl("info", "--json").stdout)["running"] is False
    assert d.ctl("print").returncode == 0 and d.ctl("start").returncode == 0
    data = json.loads(d.ctl("info", "--json").stdout)
    assert data["running"] is True and data["printing"] is True
    assert d.ctl("lowmem").returncode == 0
    assert b.wait(timeout=10) == -signal.SIGKILL
    assert s.poll() is None, "only one job is killed per walk"
    wait_for(lambda: "OOM:   (next) job" in d.stderr(), 5, "the walk in the log")
    err = d.stderr()
    assert "OOM: oom_lowmem(shortfall_bytes=524288) called" in err
    assert f"OOM:   (next) job {os.stat(small.path).st_ino:6d} 'small'" in err
    assert " free (" in err and " total" in err
    data = json.loads(d.ctl("info", "--json").stdout)
    assert data["kills"] == 1
    # the first timer tick listed the jobs, and PSI now watches the two it saw
    assert data["sources"]["psi"]["job_files"] == 2


def test_a_job_that_forks_during_the_kill_is_emptied(arena, daemon):
    job = arena.job("forker")
    p = arena.spawn(job, [sys.executable, "-c", FORKER], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    wait_for(lambda: len(Cgroupfs().subtree_pids(job.path)) > 20, 10, "the forker to fork")
    d = daemon("--domain", arena.path, "--redline", "1M")
    assert d.ctl("lowmem").returncode == 0
    assert p.wait(timeout=20) == -signal.SIGKILL
    wait_for(lambda: d.records(), 10, "a decision record")
    rec = d.records()[-1]
    assert rec["result"] == "killed" and rec["attempts"][0]["error"] == ""
    assert len(rec["attempts"][0]["pids"]) > 20
    assert Cgroupfs().subtree_pids(job.path) == []


def test_dry_run_kills_nothing(arena, daemon):
    job = arena.job("victim")
    v = arena.spawn_idle(job, 30 << 20)
    d = daemon("--domain", arena.path, "--redline", "1M", "--dry-run")
    assert d.ctl("lowmem").returncode == 0
    wait_for(d.records, 10, "a decision record")
    rec = d.records()[-1]
    assert rec["result"] == "dry_run" and rec["victim"]["job"] == "victim" and rec["dry_run"]
    assert v.poll() is None
    d.wait_log("OOM:        (dry run: nothing was killed)")
    assert json.loads(d.ctl("info", "--json").stdout)["kills"] == 0


def test_a_job_that_vanishes_mid_kill_is_passed_over(arena):
    gone, nxt = arena.job("gone"), arena.job("next")
    g = arena.spawn_idle(gone, 60 << 20)
    n = arena.spawn_idle(nxt, 20 << 20)
    cg = Cgroupfs()
    ranking = rank(cg.jobs(arena.path, ("*",)), Policy(self_pid=os.getpid()), 256 << 20)
    assert [c.job.name for c in ranking.killable()] == ["gone", "next"]
    # the job ends and its cgroup is removed between the ranking and the kill
    g.kill()
    g.wait()
    wait_for(lambda: not cg.subtree_pids(gone.path), 5, "the cgroup to empty")
    for d in dict.fromkeys((gone.path, gone.v2_path)):     # one folder on pure v2
        os.rmdir(d)
        arena._dirs.remove(d)
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000).walk(ranking)
    assert [(c.job.name, r.ok, r.error) for c, r in attempts] == [
        ("gone", False, "cgroup vanished before the kill"), ("next", True, "")]
    assert n.wait(timeout=5) == -signal.SIGKILL


def test_a_reused_pid_is_not_signalled(arena):
    job = arena.job("j")
    member = arena.spawn_idle(job, 1 << 20)
    cg = Cgroupfs()
    (c,) = rank(cg.jobs(arena.path, ("*",)), Policy(), 1 << 30).candidates
    kill = _Kill(Killer(cg, dry_run=False, self_pid=0, timeout_usec=1_000_000), c)
    kill.deadline = kill.k.now_usec() + 1_000_000
    # our own pid is not in the job: as if a pid read from the job had been
    # reused by us before its pidfd was opened, so that we started after the
    # read (listed_tick: our start). The read after the pidfd was opened does
    # not list it, and we are no older than the read that did: only the
    # job's member is signalled.
    assert kill._sweep([os.getpid()], start_ticks("/proc", os.getpid())) == []
    assert list(kill.signalled) == [member.pid] and member.wait(timeout=5) == -signal.SIGKILL


def test_rank_command_prints_the_walk_without_killing(arena):
    a, b = arena.job("aaa"), arena.job("bbb")
    pa = arena.spawn_idle(a, 10 << 20)
    pb = arena.spawn_idle(b, 30 << 20)
    out = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--avoid", "bbb"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "(kill)" in lines[0] and "'aaa' normal" in lines[0]
    assert "'bbb' avoid" in lines[1] and "avoid: glob 'bbb'" in lines[1]
    assert pa.poll() is None and pb.poll() is None


def test_rank_without_options_asks_the_running_daemon_and_ranks_here_without_one(arena, daemon, tmp_path):
    for name, mib in (("a", 10), ("b", 30)):
        arena.spawn_idle(arena.job(name), mib << 20)
    d = daemon("--domain", arena.path, "--redline", "1M", "--avoid", "b", "--dry-run")
    out = d.ctl("rank", "--json")      # `oomkiller rank --control SOCK --json`
    assert out.returncode == 0, out.stderr
    # the daemon's walk: its domain, its avoid glob, which this command was not given
    assert [(c["job"], c["class"]) for c in json.loads(out.stdout)] == [("a", "normal"), ("b", "avoid")]
    assert out.stderr == ""
    nobody = str(tmp_path / "none.sock")
    out = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--control", nobody, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ranked here, with this command's config" in out.stderr, out.stderr
    assert all(c["job"] not in ("a", "b") for c in json.loads(out.stdout))    # the host, by default


def test_rank_prints_the_walk_the_daemon_takes(arena, daemon):
    for name, mib in (("a", 10), ("b", 30), ("c", 20)):
        arena.spawn_idle(arena.job(name), mib << 20)
    out = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--protect", "c",
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    ranked = [(c["job"], c["class"], c["killable"]) for c in json.loads(out.stdout)]
    d = daemon("--domain", arena.path, "--redline", "1M", "--protect", "c", "--dry-run")
    assert d.ctl("lowmem").returncode == 0
    wait_for(lambda: [r for r in d.records() if r["event"] == "oom_decision"], 10, "the walk")
    (walk,) = [r for r in d.records() if r["event"] == "oom_decision"]
    assert [(c["job"], c["class"], c["killable"]) for c in walk["ranking"]] == ranked
    assert ranked == [("b", "normal", True), ("a", "normal", True), ("c", "protect", False)]
