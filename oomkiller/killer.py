"""Killing a job: every process of a cgroup subtree, forks included.

* v2 (or a v1 job whose processes share a v2 cgroup of their own, as on hybrid
  hosts): ``cgroup.kill``, atomic and fork-proof; then a signal sweep.
* v1: freeze through a freezer cgroup at the same path if one exists, SIGKILL
  every member by pidfd, thaw, and repeat until the subtree is empty: a fork
  racing the signal shows up on the next read of ``cgroup.procs``.

Each victim gets ``process_mrelease`` (Linux 5.15+) so its memory comes back
without waiting for its exit to finish. The killer never signals PID 1, itself
or a process that turned out not to belong to the job (a reused pid).
Choosing is the ranker's; dry-run lives here.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import time
from typing import Callable

from .cgroupfs import Cgroupfs
from .model import Candidate, KillResult, Ranking

SYS_PROCESS_MRELEASE = 448      # x86_64 and the generic syscall table

# How long to wait for exits between sweeps of cgroup.procs while a job
# empties: exits take well under a millisecond each, so sweeping faster is waste.
SWEEP_PAUSE_MS = 1


class Killer:
    def __init__(self, cgroupfs: Cgroupfs, *, dry_run: bool, self_pid: int,
                 timeout_usec: int, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.cg = cgroupfs
        self.dry_run = dry_run
        self.self_pid = self_pid
        self.timeout_usec = timeout_usec
        self.clock = clock
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.mrelease_ok = True
        self._poller = select.poll()
        self._fd_pid: dict[int, int] = {}
        self._exits: dict[int, int] = {}

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
            if os.stat(job.path).st_ino != job.inode:
                return KillResult(job, False, False, "none", error="cgroup was replaced since it was ranked")
            pids = self.cg.subtree_pids(job.path)
        except FileNotFoundError:
            return KillResult(job, False, False, "none", error="cgroup vanished before the kill")
        if 1 in pids or self.self_pid in pids:
            return KillResult(job, False, False, "none", error="holds PID 1 or oomkiller: refused")
        if not pids:
            return KillResult(job, False, False, "none", error="empty when the kill began")

        start = self.now_usec()
        pidfds: dict[int, int] = {}
        self._exits = {}
        self._poller = select.poll()
        method = "signal"
        try:
            kill_file = self._kill_file(job.path, pids)
            for pid in pids:
                self._open(job.path, pid, pidfds)
            if kill_file:
                with open(kill_file, "w") as f:
                    f.write("1")
                method = "cgroup.kill"
            freezer = None if kill_file else self._freezer(job.path)
            if freezer:
                method = "freezer+signal"
                _write(freezer, "FROZEN")
            try:
                remaining = self._sweep(job.path, pidfds, start)
            finally:
                if freezer:
                    _write(freezer, "THAWED")
            took = self.now_usec() - start
            self._wait_exits(0)
        finally:
            for fd in pidfds.values():
                os.close(fd)
            self._fd_pid.clear()
        signalled = tuple(sorted(pidfds))
        exit_usec = max(self._exits.values(), default=start) - start
        if remaining is None:
            return KillResult(job, True, False, method, signalled, "cgroup vanished during the kill (empty)",
                              signal_to_empty_usec=took, signal_to_exit_usec=exit_usec)
        if remaining:
            return KillResult(job, bool(signalled), False, method, signalled,
                              f"{len(remaining)} procs left after {took // 1000} ms: {remaining[:8]}",
                              signal_to_empty_usec=0)
        return KillResult(job, True, False, method, signalled, signal_to_empty_usec=took,
                          signal_to_exit_usec=exit_usec)

    # -- pieces -----------------------------------------------------------------
    def _kill_file(self, path: str, pids: list[int]) -> str | None:
        """``cgroup.kill`` to write, if the job has one that holds only its own."""
        if not self.cg.layout.memory_v1:
            f = os.path.join(path, "cgroup.kill")
            return f if os.path.exists(f) else None
        rel = None
        for pid in pids:
            v2 = self.cg.procfs.cgroups(pid).get("")
            if v2 is None:
                continue
            if rel is None:
                rel = v2
            elif v2 != rel and not v2.startswith(rel.rstrip("/") + "/"):
                return None
        if not rel or rel == "/" or not self.cg.layout.unified_root:
            return None
        mirror = os.path.join(self.cg.layout.unified_root, rel.strip("/"))
        f = os.path.join(mirror, "cgroup.kill")
        try:
            if not os.path.exists(f) or not set(self.cg.subtree_pids(mirror)) <= set(pids):
                return None     # the v2 cgroup holds someone else too: not ours to kill
        except FileNotFoundError:
            return None
        return f

    def _freezer(self, path: str) -> str | None:
        if not self.cg.layout.memory_v1:
            return None
        rel = os.path.relpath(path, self.cg.layout.jobs_root)
        f = os.path.join(self.cg.root, "freezer", rel, "freezer.state")
        return f if os.path.exists(f) else None

    def _belongs(self, job_path: str, pid: int) -> bool:
        rel = os.path.relpath(job_path, self.cg.layout.jobs_root)
        groups = self.cg.procfs.cgroups(pid)
        where = groups.get("memory" if self.cg.layout.memory_v1 else "")
        return where is not None and (where.strip("/") + "/").startswith(rel.strip("/") + "/")

    def _open(self, job_path: str, pid: int, pidfds: dict[int, int]) -> int | None:
        if pid in pidfds:
            return pidfds[pid]
        if pid in (1, self.self_pid):
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        # The pid was read from cgroup.procs before the pidfd was opened: if
        # it exited and was reused in between, the pidfd is someone else's.
        if not self._belongs(job_path, pid):
            os.close(fd)
            return None
        pidfds[pid] = fd
        self._poller.register(fd, select.POLLIN)
        self._fd_pid[fd] = pid
        return fd

    def _signal(self, pid: int, fd: int) -> None:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return
        if self.mrelease_ok:
            if self._libc.syscall(SYS_PROCESS_MRELEASE, fd, 0) != 0:
                if ctypes.get_errno() == errno.ENOSYS:
                    self.mrelease_ok = False

    def _sweep(self, job_path: str, pidfds: dict[int, int], start_usec: int) -> list[int] | None:
        """Signal every member, re-reading the subtree until it is empty (a
        fork that raced the signal shows up on the next read). Returns the
        pids still there at the timeout, [] once empty, None if it vanished."""
        signalled: set[int] = set()
        while True:
            for pid, fd in list(pidfds.items()):
                if pid not in signalled:
                    self._signal(pid, fd)
                    signalled.add(pid)
            try:
                pids = self.cg.subtree_pids(job_path)
            except FileNotFoundError:
                return None
            if not pids:
                return []
            if self.now_usec() - start_usec > self.timeout_usec:
                return pids
            before = len(pidfds)
            for pid in pids:
                self._open(job_path, pid, pidfds)
            if len(pidfds) == before:
                self._wait_exits(SWEEP_PAUSE_MS)

    def _wait_exits(self, timeout_ms: int) -> None:
        """Wait for victims to exit: a pidfd polls readable once its process has."""
        for fd, _ in self._poller.poll(timeout_ms):
            self._poller.unregister(fd)
            self._exits[self._fd_pid.get(fd, fd)] = self.now_usec()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
