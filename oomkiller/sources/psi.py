"""PSI triggers: the kernel wakes us when memory stall time crosses a line.

On the host's and the domain's pressure files, fixed, and on the jobs' (their
v2 cgroups' ``memory.pressure``), kept in step with the job list each time the
core reads it: a job thrashing inside a limit of its own wakes the core too.

A trigger is ``some <stall_us> <window_us>`` written to a pressure file kept
open; the fd then polls POLLPRI at most once per window while the stall is
over the line (Documentation/accounting/psi.rst). Without CAP_SYS_RESOURCE the
kernel only accepts windows that are multiples of 2 s (EINVAL otherwise): we
ask for the configured window first, then fall back to 2 s and say so.

Closing a trigger is slow: the kernel waits for an RCU grace period
(8-19 ms here). The loop never does it: it takes the fd out of its epoll
set and ``release()`` hands it to a closer thread.
"""
from __future__ import annotations

import errno
import os
import queue
import select
import time

from ..model import EventKind, PressureEvent, Source
from ..output import start_thread
from . import SourceUnavailable

# The shortest window an unprivileged trigger may use, and the granularity
# of such windows (kernel/sched/psi.c: psi_trigger_create, "unprivileged").
UNPRIVILEGED_WINDOW_USEC = 2_000_000


class PsiSource:
    name = "psi"
    # A pressure file always polls readable; a trigger firing is POLLPRI.
    poll_events = select.EPOLLPRI

    def __init__(self, paths: list[str], *, stall_usec: int = 100_000, window_usec: int = 1_000_000) -> None:
        self.paths = paths
        self.stall_usec = stall_usec
        self.window_usec = window_usec
        self.effective_window_usec = window_usec
        self.unprivileged = False
        self._fds: dict[int, str] = {}
        self._jobs: dict[int, str] = {}      # the jobs' triggers, a subset of _fds
        self._domain_fd: int | None = None   # the domain's own trigger, if set by watch_domain
        self.fired = 0
        self.failed: dict[str, str] = {}
        self._closing: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._closer = None

    def start(self) -> None:
        for path in self.paths:
            try:
                fd = self._arm(path)
            except OSError as e:
                self.failed[path] = e.strerror or str(e)
                continue
            self._fds[fd] = path
        if not self._fds:
            why = "; ".join(f"{p}: {w}" for p, w in self.failed.items()) or "no pressure files"
            raise SourceUnavailable(f"PSI triggers unavailable ({why}); boot with psi=1 on kernels "
                                    "built with CONFIG_PSI_DEFAULT_DISABLED")

    def _arm(self, path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                os.write(fd, f"some {self.stall_usec} {self.effective_window_usec}\0".encode())
            except OSError as e:
                if e.errno != errno.EINVAL or self.effective_window_usec % UNPRIVILEGED_WINDOW_USEC == 0:
                    raise
                # Unprivileged: round the window up to a multiple of 2 s and
                # keep the same stall fraction.
                win = -(-self.window_usec // UNPRIVILEGED_WINDOW_USEC) * UNPRIVILEGED_WINDOW_USEC
                self.stall_usec = self.stall_usec * win // self.window_usec
                self.effective_window_usec = win
                self.unprivileged = True
                os.write(fd, f"some {self.stall_usec} {win}\0".encode())
        except OSError:
            os.close(fd)
            raise
        return fd

    def fds(self) -> list[int]:
        return list(self._fds)

    def watch_domain(self, path: str, renew: bool = False) -> tuple[int | None, int | None]:
        """A trigger on the domain's ``memory.pressure`` found after the
        start (a daemon started on an empty cgroup, a domain removed and made
        again), in place of the one on the old file: returns (fd added, fd
        dropped) for the caller's poller, which must take the dropped one out
        and then ``release()`` it. (None, None) when ``path`` is already
        watched, unless ``renew`` (a new cgroup at the same path: the old
        trigger is on the removed one's file); (None, dropped) when it cannot
        be armed (in ``failed``)."""
        if not renew and path in self._fds.values() and path not in self._jobs.values():
            return None, None
        dropped = None
        old = self._domain_fd if self._domain_fd is not None else next(
            (fd for fd, p in self._fds.items() if fd not in self._jobs and p in self.paths[1:]), None)
        if old is not None and old in self._fds:
            del self._fds[old]
            dropped = old
        self._domain_fd = None
        try:
            fd = self._arm(path)
        except OSError as e:
            self.failed[path] = e.strerror or str(e)
            return None, dropped
        self.failed.pop(path, None)
        self._fds[fd] = path
        self._domain_fd = fd
        return fd, dropped

    def track(self, paths: set[str]) -> tuple[list[int], list[int]]:
        """Keep job triggers on exactly ``paths`` (beside the fixed ones):
        returns (fds added, fds dropped) for the caller's poller, which
        must take the dropped ones out and then ``release()`` them."""
        added, closed = [], []
        for fd, path in list(self._jobs.items()):
            if path not in paths:
                del self._jobs[fd]
                del self._fds[fd]
                closed.append(fd)
        have = set(self._jobs.values())
        for path in paths - have:
            try:
                fd = self._arm(path)
            except OSError:
                continue        # the job went away, or has no pressure file
            self._fds[fd] = path
            self._jobs[fd] = path
            added.append(fd)
        return added, closed

    def drain(self, fd: int | None = None) -> list[PressureEvent]:
        if fd not in self._fds:
            return []
        self.fired += 1
        return [PressureEvent(Source.PSI, EventKind.PSI_SOME, stall_usec=self.stall_usec,
                              timestamp_usec=time.monotonic_ns() // 1000, detail=self._fds[fd])]

    def alive(self, fd: int) -> bool:
        """Whether the pressure file behind ``fd`` still exists."""
        return os.path.exists(self._fds.get(fd, ""))

    def forget(self, fd: int) -> bool:
        """Drop a job's trigger whose file went away with its job (normal:
        jobs end); False for the fixed files, whose loss is news."""
        if fd not in self._jobs:
            return False
        del self._jobs[fd]
        del self._fds[fd]
        self.release([fd])
        return True

    def release(self, fds: list[int]) -> None:
        """Close dropped triggers in the closer thread, off the loop."""
        if not fds:
            return
        if self._closer is None:
            self._closer = start_thread(self._close_released, "oomkiller-psi-closer")
        for fd in fds:
            self._closing.put(fd)

    def _close_released(self) -> None:
        while (fd := self._closing.get()) is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def stats(self) -> dict:
        out = {"trigger": f"some {self.stall_usec}us/{self.effective_window_usec}us",
               "files": len(self._fds), "job_files": len(self._jobs), "fired": self.fired}
        if self.unprivileged:
            out["note"] = "unprivileged: window rounded to a multiple of 2 s"
        return out

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._jobs.clear()
        if self._closer is not None:
            self._closing.put(None)
            self._closer.join(5)
            self._closer = None
