"""Killing a job: every process of a cgroup subtree, forks included.

* v2, or a v1 job whose processes have a v2 cgroup holding them and no one
  else (hybrid hosts): ``cgroup.kill``, atomic and fork-proof, written before
  anything else; then a sweep that waits for the subtree to empty.
* v1: freeze through a freezer cgroup at the same path if there is one,
  SIGKILL every member by pidfd, thaw (v1 frozen tasks act on SIGKILL only
  once thawed), and sweep: re-read ``cgroup.procs`` and signal what a racing
  fork added, until the subtree is empty.

Processes with ``oom_score_adj=-1000`` are spared as the kernel's
``memory.oom.group`` spares them: a job holding one is killed by signals, not
``cgroup.kill``, and is done when only those are left. Kernel threads, PID 1
and oomkiller itself are never signalled, nor a pid that turned out not to
belong to the job (reused). Each victim gets ``process_mrelease`` (Linux
5.15+) so its memory comes back before its exit finishes, on a thread of its
own (``Releaser``): the call reaps a whole address space and can block for
long behind the victim's mmap lock, which stalled the kill for seconds when
it ran here. Its exit is timed through its pidfd. Choosing is the ranker's;
dry-run lives here.
"""
from __future__ import annotations

import ctypes
import errno
import os
import queue
import select
import signal
import threading
import time
from typing import Callable

from .cgroupfs import Cgroupfs
from .model import Candidate, KillResult, Ranking
from .rank import OOM_SCORE_ADJ_MIN

SYS_PROCESS_MRELEASE = 448      # x86_64 and the generic syscall table

# How long to wait for exits between sweeps of cgroup.procs while a job
# empties: exits take well under a millisecond each, so sweeping faster is waste.
SWEEP_PAUSE_MS = 1

# Pidfds kept open per kill to time exits. Beyond this the pidfd is closed
# right after its signal: a job of thousands of processes must not run the
# daemon out of file descriptors.
MAX_TRACKED_PIDFDS = 256

# process_mrelease requests waiting for the releasing thread; more are dropped.
MRELEASE_QUEUE = 64


class Releaser:
    """``process_mrelease`` on a thread of its own, fed by a bounded queue.

    ``submit`` never blocks: it queues a dup of the pidfd (the thread closes
    it) or, with the queue full, drops the request and counts it. ctypes
    releases the GIL around the syscall, so the killing thread runs on while
    the reaping thread sits in the kernel."""

    def __init__(self, depth: int = MRELEASE_QUEUE,
                 syscall: Callable[[int], int] | None = None) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = syscall or self._mrelease
        self._q: queue.Queue[int] = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        self.available = True       # False once the kernel said ENOSYS
        self.queued = self.dropped = 0          # written by the submitting thread
        self.released = self.failed = 0         # written by the releasing thread

    def _mrelease(self, pidfd: int) -> int:
        """The syscall; 0 or an errno."""
        if self._libc.syscall(SYS_PROCESS_MRELEASE, pidfd, 0) == 0:
            return 0
        return ctypes.get_errno()

    def submit(self, pidfd: int) -> bool:
        if not self.available:
            return False
        try:
            fd = os.dup(pidfd)
        except OSError:
            self.dropped += 1
            return False
        try:
            self._q.put_nowait(fd)
        except queue.Full:
            os.close(fd)
            self.dropped += 1
            return False
        self.queued += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="oomkiller-mrelease", daemon=True)
            self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            fd = self._q.get()
            try:
                err = self._syscall(fd) if self.available else 0
            except Exception:       # never let the thread die: the queue would fill for good
                err = -1
            finally:
                os.close(fd)
                self._q.task_done()
            if err == errno.ENOSYS:
                self.available = False
            elif err:
                self.failed += 1
            else:
                self.released += 1

    def idle(self) -> bool:
        return self._q.unfinished_tasks == 0

    def stats(self) -> dict[str, int | bool]:
        return {"available": self.available, "queued": self.queued, "released": self.released,
                "failed": self.failed, "dropped": self.dropped, "pending": self._q.unfinished_tasks}


class Killer:
    def __init__(self, cgroupfs: Cgroupfs, *, dry_run: bool, self_pid: int,
                 timeout_usec: int, clock: Callable[[], int] = time.monotonic_ns,
                 releaser: Releaser | None = None) -> None:
        self.cg = cgroupfs
        self.dry_run = dry_run
        self.self_pid = self_pid
        self.timeout_usec = timeout_usec
        self.clock = clock
        self.releaser = releaser or Releaser()

    @property
    def mrelease_ok(self) -> bool:
        return self.releaser.available

    def now_usec(self) -> int:
        return self.clock() // 1000

    # -- the walk -------------------------------------------------------------
    def walk(self, ranking: Ranking) -> list[tuple[Candidate, KillResult]]:
        """Kill the first candidate that can be killed; return every attempt."""
        attempts = []
        for c in ranking.killable():
            res = self.kill(c)
            attempts.append((c, res))
            if res.ok:
                break
        return attempts

    def kill(self, c: Candidate) -> KillResult:
        job = c.job
        if self.dry_run:
            return KillResult(job, ok=True, dry_run=True, method="none",
                              signalled_pids=tuple(p.pid for p in job.procs))
        try:
            return _Kill(self, c).run()
        except FileNotFoundError:
            return KillResult(job, False, False, "none", error="cgroup vanished before the kill")
        except OSError as e:
            return KillResult(job, False, False, "none", error=f"kill failed: {e}")

    def process_mrelease(self, pidfd: int) -> None:
        """Ask for the victim's memory back now; never waits (see ``Releaser``)."""
        self.releaser.submit(pidfd)


class _Kill:
    """One kill of one job."""

    def __init__(self, killer: Killer, c: Candidate) -> None:
        self.k = killer
        self.cg = killer.cg
        self.job = c.job
        self.rel = os.path.relpath(c.job.path, self.cg.layout.jobs_root).strip("/") + "/"
        self.exempt = {p.pid for p in c.job.procs if p.oom_score_adj <= OOM_SCORE_ADJ_MIN}
        self.pidfds: dict[int, int] = {}        # tracked: open until the end
        self.signalled: list[int] = []
        self.taken: set[int] = set()
        self.exits: dict[int, int] = {}
        self.poller = select.poll()
        self.fd_pid: dict[int, int] = {}
        self.start = 0

    def run(self) -> KillResult:
        job = self.job
        if os.stat(job.path).st_ino != job.inode:
            return KillResult(job, False, False, "none", error="cgroup was replaced since it was ranked")
        pids = self.cg.subtree_pids(job.path)
        if 1 in pids or self.k.self_pid in pids:
            return KillResult(job, False, False, "none", error="holds PID 1 or oomkiller: refused")
        if not set(pids) - self.exempt:
            return KillResult(job, False, False, "none", error="no killable process when the kill began")

        self.start = self.k.now_usec()
        method = "signal"
        try:
            kill_file = None if self.exempt else self._kill_file(pids)
            freezer = None
            if kill_file:
                with open(kill_file, "w") as f:
                    f.write("1")
                method = "cgroup.kill"
                self.signalled += pids
            else:
                freezer = self._freezer()
            if freezer:
                method = "freezer+signal"
                _write(freezer, "FROZEN")
                try:
                    for pid in self.cg.subtree_pids(job.path):
                        self._take(pid)
                finally:
                    _write(freezer, "THAWED")
            remaining = self._sweep()
            took = self.k.now_usec() - self.start
            self._wait_exits(0)
        finally:
            for fd in self.pidfds.values():
                os.close(fd)
        signalled = tuple(sorted(self.signalled))
        exit_usec = max(self.exits.values(), default=self.start) - self.start
        if remaining is None:
            return KillResult(job, True, False, method, signalled, "cgroup vanished during the kill (empty)",
                              signal_to_empty_usec=took, signal_to_exit_usec=exit_usec)
        if remaining:
            return KillResult(job, bool(signalled) or method == "cgroup.kill", False, method, signalled,
                              f"{len(remaining)} procs left after {took // 1000} ms: {remaining[:8]}")
        return KillResult(job, True, False, method, signalled, signal_to_empty_usec=took,
                          signal_to_exit_usec=exit_usec)

    def _kill_file(self, pids: list[int]) -> str | None:
        """``cgroup.kill`` to write, if the job has one that holds only its own."""
        if not self.cg.layout.memory_v1:
            f = os.path.join(self.job.path, "cgroup.kill")
            return f if os.path.exists(f) else None
        if not self.job.v2_path:
            return None
        f = os.path.join(self.job.v2_path, "cgroup.kill")
        # Checked again now: what is written there kills all the v2 cgroup holds.
        if os.path.exists(f) and self.cg.only_holds(self.job.v2_path, pids):
            return f
        return None

    def _freezer(self) -> str | None:
        if not self.cg.layout.memory_v1:
            return None
        f = os.path.join(self.cg.root, "freezer", self.rel, "freezer.state")
        return f if os.path.exists(f) else None

    def _take(self, pid: int) -> None:
        """Signal one member through a pidfd opened after checking it is one."""
        if pid in self.taken or pid in self.exempt or pid in (1, self.k.self_pid):
            return
        self.taken.add(pid)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        proc = self.cg.procfs.proc(pid)
        where = self.cg.procfs.cgroups(pid).get("memory" if self.cg.layout.memory_v1 else "")
        # A pid read from cgroup.procs before its pidfd was opened may have
        # exited and been reused: the pidfd would then be someone else's.
        if proc is None or where is None or not (where.strip("/") + "/").startswith(self.rel):
            os.close(fd)
            return
        if proc.kernel_thread or proc.oom_score_adj <= OOM_SCORE_ADJ_MIN:
            self.exempt.add(pid)
            os.close(fd)
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            os.close(fd)
            return
        if pid not in self.signalled:
            self.signalled.append(pid)
        self.k.process_mrelease(fd)
        if len(self.pidfds) < MAX_TRACKED_PIDFDS:
            self.pidfds[pid] = fd
            self.fd_pid[fd] = pid
            self.poller.register(fd, select.POLLIN)
        else:
            os.close(fd)

    def _sweep(self) -> list[int] | None:
        """Until the subtree holds no one but the exempt: re-read it and
        signal whoever is new (a fork that raced the signal shows up on the
        next read). Returns the pids left at the timeout, [] once done, None
        if the cgroup vanished."""
        while True:
            try:
                pids = self.cg.subtree_pids(self.job.path)
            except OSError as e:
                # systemd removes a transient scope as soon as it empties:
                # gone after the signal means done.
                if e.errno in (errno.ENOENT, errno.ENODEV):
                    return None
                raise
            left = [p for p in pids if p not in self.exempt]
            if not left:
                return []
            if self.k.now_usec() - self.start > self.k.timeout_usec:
                return left
            before = len(self.taken)
            for pid in left:
                self._take(pid)
            if len(self.taken) == before:
                self._wait_exits(SWEEP_PAUSE_MS)

    def _wait_exits(self, timeout_ms: int) -> None:
        """Wait for victims to exit: a pidfd polls readable once its process has."""
        for fd, _ in self.poller.poll(timeout_ms):
            self.poller.unregister(fd)
            self.exits[self.fd_pid.get(fd, fd)] = self.k.now_usec()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
