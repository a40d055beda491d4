"""Memory-cgroup notifications: the kernel says the moment usage crosses a line.

* v1: an eventfd registered through ``cgroup.event_control`` on
  ``memory.usage_in_bytes`` with a threshold; it fires when usage crosses the
  threshold either way (Documentation/admin-guide/cgroup-v1/memory.rst, 9).
* v2: ``memory.events`` polls POLLPRI whenever one of its counters (high, max,
  oom, oom_kill) changes.

Several v1 thresholds are armed below the limit (the redline and multiples
of it), so the core hears of a fast-growing job while it still has room.
"""
from __future__ import annotations

import errno
import os
import select
import time

from ..model import EventKind, PressureEvent, Source
from . import SourceUnavailable

# Linux's EFD_NONBLOCK and EFD_CLOEXEC (the O_ flags' values on every
# architecture but alpha, mips, parisc and sparc, whose O_ values they follow).
_EFD_NONBLOCK = os.O_NONBLOCK
_EFD_CLOEXEC = os.O_CLOEXEC


def _eventfd() -> int:
    """A non-blocking, close-on-exec eventfd. os.eventfd is Python 3.10+;
    before it, libc's eventfd(2) through ctypes."""
    if hasattr(os, "eventfd"):
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.eventfd(0, _EFD_NONBLOCK | _EFD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


class MemcgSource:
    name = "memcg"

    def __init__(self, cgroup_path: str, *, v1: bool, thresholds_bytes: list[int]) -> None:
        self.path = cgroup_path
        self.v1 = v1
        self.thresholds_bytes = sorted(set(t for t in thresholds_bytes if t > 0))
        self._fds: dict[int, str] = {}
        self._keep: list[int] = []
        self.fired = 0
        # eventfds poll readable when they fire; kernfs files always poll
        # readable and signal a change with POLLPRI.
        self.poll_events = select.EPOLLIN if v1 else select.EPOLLPRI

    def start(self) -> None:
        try:
            if self.v1:
                self._start_v1()
            else:
                self._start_v2()
        except OSError as e:
            self.close()
            raise SourceUnavailable(f"memory cgroup notifications on {self.path} unavailable: "
                                    f"{e.strerror or e}") from None

    def _start_v1(self) -> None:
        usage = os.open(os.path.join(self.path, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        self._keep.append(usage)
        control = os.path.join(self.path, "cgroup.event_control")
        for t in self.thresholds_bytes:
            efd = _eventfd()
            self._fds[efd] = f"usage crossed {t}"
            with open(control, "w") as f:
                f.write(f"{efd} {usage} {t}")

    def _start_v2(self) -> None:
        path = os.path.join(self.path, "memory.events")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.read(fd, 4096)       # kernfs reports changes after the first read
        self._fds[fd] = "memory.events changed"

    def fds(self) -> list[int]:
        return list(self._fds)

    def drain(self, fd: int | None = None) -> list[PressureEvent]:
        if fd not in self._fds:
            return []
        try:
            if self.v1:
                os.read(fd, 8)  # the 8-byte counter: what os.eventfd_read reads
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                os.read(fd, 4096)
        except BlockingIOError:
            return []
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return []       # the cgroup is gone; alive() says so on the next poll
            raise
        self.fired += 1
        return [PressureEvent(Source.MEMCG, EventKind.MEMCG_THRESHOLD if self.v1 else EventKind.MEMCG_EVENTS,
                              timestamp_usec=time.monotonic_ns() // 1000, detail=self._fds[fd])]

    def alive(self, fd: int) -> bool:
        """Whether the watched cgroup still exists."""
        return os.path.exists(os.path.join(self.path, "memory.usage_in_bytes" if self.v1 else "memory.events"))

    def stats(self) -> dict:
        return {"cgroup": self.path, "thresholds": len(self.thresholds_bytes) if self.v1 else "memory.events",
                "fired": self.fired}

    def close(self) -> None:
        for fd in [*self._fds, *self._keep]:
            os.close(fd)
        self._fds.clear()
        self._keep.clear()
