"""The killer's bookkeeping on fixture trees, and process_mrelease's thread.

The pids here are above PID_MAX_LIMIT (4194304), so no real process can be
hit: ``pidfd_open`` fails for them with ESRCH."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from oomkiller import cgroupfs as cgroupfs_mod
from oomkiller import report
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.killer import EMPTIED_BEFORE_SIGNAL, VANISHED_BEFORE_SIGNAL, Killer, Releaser
from oomkiller.files import vanishing
from oomkiller.procfs import Procfs
from oomkiller.core.rank import Policy, rank

NO_SUCH_PID = 4194401


def wait(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture
def two_jobs(proc_tree, v1_tree):
    """Jobs 'big' and 'small', both ranked with one process each."""
    proc_tree.proc(NO_SUCH_PID, "big", anon_kb=90_000, shmem_kb=0, swap_kb=0)
    proc_tree.proc(NO_SUCH_PID + 1, "small", anon_kb=10_000, shmem_kb=0, swap_kb=0)
    v1_tree.cgroup("big", (NO_SUCH_PID,))
    v1_tree.cgroup("small", (NO_SUCH_PID + 1,))
    cg = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    ranking = rank(cg.jobs(str(v1_tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)
    assert [c.job.name for c in ranking.killable()] == ["big", "small"]
    return cg, ranking, v1_tree


def test_a_job_that_emptied_before_our_signal_is_not_our_kill(two_jobs):
    cg, ranking, tree = two_jobs
    (tree.mem / "big" / "cgroup.procs").write_text("")      # the kernel took it meanwhile
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking)
    (big, r1), (small, r2) = attempts
    assert (r1.ok, r1.method, r1.signalled_pids, r1.error) == (False, "none", (), EMPTIED_BEFORE_SIGNAL)
    # the walk went on; 'small' lists a pid no one could signal: not ours either
    assert not r2.ok and r2.signalled_pids == () and r2.error.startswith("1 procs left after ")
    lines = report.walk_lines(ranking, attempts)
    assert lines == [f"OOM:   (fail) job {big.job.inode:6d} 'big': {EMPTIED_BEFORE_SIGNAL}",
                     f"OOM:   (fail) job {small.job.inode:6d} 'small': {r2.error}",
                     "OOM: no killable job found"]
    assert report.result_record(r1)["ok"] is False


def test_after_a_job_emptied_by_someone_else_the_walk_asks_if_memory_is_still_short(two_jobs):
    cg, ranking, tree = two_jobs
    (tree.mem / "big" / "cgroup.procs").write_text("")      # the kernel's OOM killer took it, and its memory
    asked = []

    def still_short() -> bool:
        asked.append(True)
        return False
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking, still_short)
    assert [(c.job.name, r.ok) for c, r in attempts] == [("big", False)] and asked == [True]
    # not asked before the first attempt
    asked.clear()
    (tree.mem / "big" / "cgroup.procs").write_text(str(NO_SUCH_PID))
    Killer(cg, dry_run=True, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking, still_short)
    assert asked == []


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENODEV])
def test_a_cgroup_gone_mid_kill_is_not_our_kill_and_the_walk_goes_on(two_jobs, monkeypatch, err):
    cg, ranking, tree = two_jobs
    big = str(tree.mem / "big")
    reads = []
    real = cg.subtree_pids

    def subtree_pids(path):
        reads.append(path)
        if path == big and reads.count(big) > 1:
            raise OSError(err, os.strerror(err))
        return real(path)
    monkeypatch.setattr(cg, "subtree_pids", subtree_pids)
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking)
    assert [(c.job.name, r.ok, r.error) for c, r in attempts][0] == ("big", False, VANISHED_BEFORE_SIGNAL)
    assert [c.job.name for c, _ in attempts] == ["big", "small"]


def test_a_cgroup_gone_before_the_kill(two_jobs):
    cg, ranking, tree = two_jobs
    (tree.mem / "big" / "cgroup.procs").unlink()
    (tree.mem / "big").rmdir()
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking)
    assert (attempts[0][1].ok, attempts[0][1].error) == (False, "cgroup vanished before the kill")
    # a walk with nothing to re-check ends there: the shortage may have gone with it
    attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=20_000).walk(ranking, past_gone=False)
    assert [(c.job.name, r.error) for c, r in attempts] == [("big", "cgroup vanished before the kill")]


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENODEV])
def test_subtree_pids_passes_over_a_descendant_gone_while_read(proc_tree, v1_tree, monkeypatch, err):
    v1_tree.cgroup("j", (11,))
    v1_tree.cgroup("j/a", (12,))
    v1_tree.cgroup("j/b", (13,))
    real = cgroupfs_mod.read_pids

    def read_pids(path):
        if "/j/a/" in path:
            with vanishing(path):       # as the real readers raise it
                raise OSError(err, os.strerror(err))
        return real(path)
    monkeypatch.setattr(cgroupfs_mod, "read_pids", read_pids)
    cg = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    assert cg.subtree_pids(str(v1_tree.mem / "j")) == [11, 13]
    with pytest.raises(OSError):
        cg.subtree_pids(str(v1_tree.mem / "j" / "a"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_releaser_works_off_the_calling_thread_and_closes_its_dups():
    gate = threading.Event()
    seen = []

    def syscall(fd):
        seen.append((threading.get_ident(), os.readlink(f"/proc/self/fd/{fd}")))
        gate.wait(5)
        return 0
    r = Releaser(depth=2, syscall=syscall)
    rfd, wfd = os.pipe()
    try:
        before = open_fds()
        t0 = time.monotonic()
        # the first is taken by the thread and blocks there; two wait in the
        # queue; the rest find it full and are dropped
        results = [r.submit(rfd)]
        wait(lambda: seen)
        results += [r.submit(rfd) for _ in range(4)]
        assert time.monotonic() - t0 < 1, "submit never waits on the syscall"
        assert results == [True, True, True, False, False]
        assert (r.queued, r.dropped) == (3, 2)
        gate.set()
        wait(r.idle)
        assert r.released == 3 and r.stats()["pending"] == 0
        assert open_fds() == before, "every dup was closed"
        assert {t for t, _ in seen} != {threading.get_ident()}
        assert {link for _, link in seen} == {os.readlink(f"/proc/self/fd/{rfd}")}
    finally:
        os.close(rfd)
        os.close(wfd)


def test_the_releaser_stops_asking_once_the_kernel_lacks_the_call():
    r = Releaser(syscall=lambda fd: errno.ENOSYS)
    rfd, wfd = os.pipe()
    try:
        assert r.submit(rfd)
        wait(r.idle)
        assert not r.available and not r.submit(rfd)
        assert Killer(Cgroupfs.__new__(Cgroupfs), dry_run=True, self_pid=0, timeout_usec=1,
                      releaser=r).mrelease_ok is False
    finally:
        os.close(rfd)
        os.close(wfd)


def test_a_transient_unit_removed_as_it_empties_after_our_cgroup_kill_is_our_kill(proc_tree, v2_tree, monkeypatch):
    # systemd removes a transient unit's cgroup as soon as it is empty: a read
    # after our cgroup.kill may find it gone, which means done, not "vanished
    # before the kill"
    from oomkiller import killer as killer_mod
    from oomkiller.files import vanishing
    proc_tree.proc(NO_SUCH_PID, "hog", anon_kb=90_000, shmem_kb=0, swap_kb=0)
    job_dir = v2_tree.cgroup("hog.service", (NO_SUCH_PID,), cgroup__kill="", cgroup__events="populated 1\n")
    cg = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    ranking = rank(cg.jobs(str(v2_tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)
    reads = iter([[NO_SUCH_PID], [NO_SUCH_PID], []])     # the kill's read, its check before the write, the sweep

    def subtree_pids(path):
        try:
            return next(reads)
        except StopIteration:
            with vanishing(path):
                raise OSError(errno.ENOENT, "No such file or directory")
    monkeypatch.setattr(cg, "subtree_pids", subtree_pids)
    written = []
    monkeypatch.setattr(killer_mod, "_write", lambda path, value: written.append((path, value)))
    (c, r), = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=200_000).walk(ranking)
    assert written == [(str(job_dir / "cgroup.kill"), "1")]
    assert r.ok and r.method == "cgroup.kill" and "vanished before" not in r.error


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_cgroup_kill_that_may_not_be_written_falls_back_to_signals(proc_tree, v2_tree, monkeypatch, err):
    # A container runtime mounts the cgroup tree read-only in a container
    # that is not privileged: the sweep's signals must still kill.
    from oomkiller import killer as killer_mod
    proc_tree.proc(NO_SUCH_PID, "hog", anon_kb=90_000, shmem_kb=0, swap_kb=0)
    job_dir = v2_tree.cgroup("hog.service", (NO_SUCH_PID,), cgroup__kill="", cgroup__events="populated 1\n")
    cg = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    ranking = rank(cg.jobs(str(v2_tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)

    def refuse(path, value):
        raise OSError(err, os.strerror(err), path)
    monkeypatch.setattr(killer_mod, "_write", refuse)
    swept = []
    monkeypatch.setattr(killer_mod._Kill, "_sweep", lambda self, pids, *rest: swept.append(pids) or [])
    k = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=200_000)
    (c, r), = k.walk(ranking)
    assert swept == [[NO_SUCH_PID]] and r.method != "cgroup.kill" and not r.error.startswith("kill failed")
    assert k.kill_file_refused == f"{job_dir / 'cgroup.kill'}: {os.strerror(err)}"


def test_a_cgroup_kill_the_kernel_turns_down_falls_back_to_signals(proc_tree, v2_tree, monkeypatch):
    # Whoever owns the job's cgroup may make it threaded after it was
    # checked (one write to cgroup.type): cgroup.kill then fails with
    # EOPNOTSUPP. That failed the kill of the chosen job ("kill failed"),
    # and the walk went on to the next, innocent one while the hog lived.
    from oomkiller import killer as killer_mod
    proc_tree.proc(NO_SUCH_PID, "hog", anon_kb=90_000, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("hog.service", (NO_SUCH_PID,), cgroup__kill="", cgroup__events="populated 1\n")
    cg = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    ranking = rank(cg.jobs(str(v2_tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)

    def refuse(path, value):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), path)
    monkeypatch.setattr(killer_mod, "_write", refuse)
    swept = []
    monkeypatch.setattr(killer_mod._Kill, "_sweep", lambda self, pids, *rest: swept.append(pids) or [])
    k = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=200_000)
    (c, r), = k.walk(ranking)
    assert swept == [[NO_SUCH_PID]] and r.method != "cgroup.kill" and not r.error.startswith("kill failed")
    assert k.kill_file_refused == ""        # not a read-only mount: nothing to tell the operator


# -- processes that leave the job while it is killed (real children of the test, fixture cgroups) -----

@pytest.fixture
def child():
    """A process of the test's own, older than the current clock tick."""
    import subprocess
    import sys
    from oomkiller.procfs import boot_ticks, start_ticks
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    while start_ticks("/proc", p.pid) >= boot_ticks():
        time.sleep(0.002)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def _moving_job(tmp_path, child, reads, v2: bool, monkeypatch):
    """A job holding ``child`` in a fixture tree whose subtree reads are
    ``reads`` in turn (then empty): its process leaves it mid-kill."""
    from trees import CgroupTree
    tree = CgroupTree(tmp_path / "cg", v2=v2)
    files = {"cgroup__kill": "", "cgroup__events": "populated 0\n"} if v2 else {}
    tree.cgroup("job", (child.pid,), **files)
    cg = Cgroupfs(str(tree.root), Procfs("/proc"))
    ranking = rank(cg.jobs(str(tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)
    reads = iter(reads)
    monkeypatch.setattr(cg, "subtree_pids", lambda path: next(reads, []))
    return cg, ranking


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup.kill", "signals"])
def test_a_process_that_leaves_the_job_after_it_was_listed_dies_by_its_pidfd(tmp_path, child, monkeypatch, v2):
    from oomkiller import killer as killer_mod
    # listed by the kill's first read (and, for cgroup.kill, by the read
    # that confirms it alive just before the write), then gone from the job:
    # the write, a no-op here as for a process that left, kills no one
    reads = [[child.pid], [child.pid]] if v2 else [[child.pid]]
    cg, ranking = _moving_job(tmp_path, child, reads, v2, monkeypatch)
    written = []
    monkeypatch.setattr(killer_mod, "_write", lambda path, value: written.append(value))
    (c, r), = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000).walk(ranking)
    assert child.wait(timeout=10) == -9
    assert written == (["1"] if v2 else [])
    assert (r.ok, r.emptied, r.signalled_pids, r.evaded_pids) == (True, True, (child.pid,), ())


def test_a_ranked_process_outside_the_job_at_the_kill_is_still_the_jobs(tmp_path, child, monkeypatch):
    # ranked in the job, out of it at every read of the kill: the same pid
    # and start time say it is the process ranked
    cg, ranking = _moving_job(tmp_path, child, [], False, monkeypatch)
    (c, r), = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000).walk(ranking)
    assert child.wait(timeout=10) == -9
    assert (r.ok, r.emptied, r.signalled_pids) == (True, True, (child.pid,))


def test_a_ranked_pid_whose_holder_started_at_another_time_is_not_signalled(tmp_path, child, monkeypatch):
    import dataclasses
    cg, ranking = _moving_job(tmp_path, child, [], False, monkeypatch)
    c = ranking.candidates[0]
    other = dataclasses.replace(c.job, procs=tuple(dataclasses.replace(p, start_ticks=p.start_ticks - 1)
                                                   for p in c.job.procs))
    r = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=200_000).kill(dataclasses.replace(c, job=other))
    assert (r.ok, r.error) == (False, EMPTIED_BEFORE_SIGNAL)
    assert child.poll() is None


def test_a_ranked_process_younger_than_the_listing_is_not_signalled(tmp_path, child, monkeypatch):
    # it may have taken the pid of a listed process that died before /proc
    # was read for the ranking: the same pid and start time prove nothing then
    import dataclasses
    cg, ranking = _moving_job(tmp_path, child, [], False, monkeypatch)
    c = ranking.candidates[0]
    assert c.job.listed_ticks > c.job.procs[0].start_ticks > 0
    young = dataclasses.replace(c.job, listed_ticks=c.job.procs[0].start_ticks)
    r = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=200_000).kill(dataclasses.replace(c, job=young))
    assert (r.ok, r.error) == (False, EMPTIED_BEFORE_SIGNAL)
    assert child.poll() is None


def test_a_signalled_process_alive_outside_the_job_at_the_deadline_is_an_evasion(tmp_path, child, monkeypatch):
    from oomkiller import killer as killer_mod
    cg, ranking = _moving_job(tmp_path, child, [[child.pid]], False, monkeypatch)
    sent = []

    def pidfd_send_signal(fd, sig):     # a process that outlives our SIGKILL (stuck in the kernel)
        sent.append(sig)
    monkeypatch.setattr(killer_mod.signal, "pidfd_send_signal", pidfd_send_signal)
    (c, r), = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=30_000).walk(ranking)
    assert sent and child.poll() is None
    assert (r.ok, r.emptied, r.evaded_pids, r.left_pids) == (True, False, (child.pid,), ())
    assert "1 evaded" in r.error and str(child.pid) in r.error
    assert report.result_record(r)["evaded_pids"] == [child.pid]
    assert "NOT EMPTY" in report.outcome_line(c, r, 0)
    assert "evaded: 1" in report.kmsg_line("job", r, "host", 1, 2)


def test_the_look_for_movers_is_bounded_once_for_the_whole_walk(proc_tree, v1_tree, monkeypatch):
    # jobs that read empty with anonymous memory charged (a process that
    # left charges behind): the walk reads them again, within one bound
    from oomkiller import killer as killer_mod
    for i, name in enumerate(("a", "b", "c")):
        proc_tree.proc(NO_SUCH_PID + i, name, anon_kb=90_000 - i, shmem_kb=0, swap_kb=0)
        v1_tree.cgroup(name, (NO_SUCH_PID + i,), memory__stat="total_rss 4194304\n")
    cg = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    ranking = rank(cg.jobs(str(v1_tree.mem), ("*",)), Policy(self_pid=os.getpid()), 1 << 30)
    monkeypatch.setattr(cg, "subtree_pids", lambda path: [])
    now = [0]

    def clock():        # a read of the subtree takes 1 ms
        return now[0]
    real = killer_mod._Kill._wait_exits

    def wait_exits(self, timeout_ms):
        now[0] += max(timeout_ms, 1) * 1_000_000
        return real(self, 0)
    monkeypatch.setattr(killer_mod._Kill, "_wait_exits", wait_exits)
    k = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000, clock=clock)
    attempts = k.walk(ranking)
    assert [(c.job.name, r.error) for c, r in attempts] == [(n, EMPTIED_BEFORE_SIGNAL) for n in ("a", "b", "c")]
    assert now[0] // 1_000_000 == killer_mod.MOVER_LOOK_MS
