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

Finding the biggest jobs means listing every job. At idle that is wasted:
between refreshes an inotify watch on the domain's folders (``TreeWatch``)
says whether cgroups came or went (``jobs_changed``), and the core lists
the jobs again only then, or when free memory moved (core.state).
"""
from __future__ import annotations

import errno
import os
import queue
import select
import struct
import time
from typing import Any

from ..cgroupfs import MAX_DOMAIN_CGROUPS, walk_cgroups
from ..model import EventKind, PressureEvent, Source
from ..output import start_thread
from . import SourceUnavailable

# The shortest window an unprivileged trigger may use, and the granularity
# of such windows (kernel/sched/psi.c: psi_trigger_create, "unprivileged").
UNPRIVILEGED_WINDOW_USEC = 2_000_000


# inotify(7)
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW = 0x400, 0x800, 0x4000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
WATCHED = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# Any of these is a change; IN_IGNORED alone (a watch removed) is not.
CHANGE = WATCHED | IN_Q_OVERFLOW
_EVENT = struct.Struct("iIII")
# Folders watched at most (each costs the kernel about 1 KiB, and counts
# against fs.inotify.max_user_watches): a domain with more folders outside
# its jobs is taken as changed on every refresh, as before there was a watch.
MAX_WATCHES = 8192


class TreeWatch:
    """Whether cgroups came or went in a domain since ``watch()``.

    An inotify watch on the domain's folder and on each folder of it that
    is not a job or inside one: the folders the walk for jobs goes through
    (a job's own subtree makes no job). cgroupfs reports mkdir and rmdir of
    a cgroup to its parent's watch (IN_CREATE, IN_DELETE), v1 and v2 alike.
    Without a watch (no inotify, too many folders, a folder gone while
    watched) ``changed()`` is always true, and ``problem`` says why."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._wds: dict[str, int] = {}
        self._libc: Any = None
        self._errno: Any = None
        self._changed = True
        self.problem = "not watched yet"

    def watch(self, domain_path: str, jobs: frozenset[str] | set[str]) -> None:
        """Watch the domain's folders outside ``jobs`` from now on. Events
        that came before and were not read by ``changed()`` still count."""
        folders = [domain_path]
        cut: list[str] = []
        for full in walk_cgroups(domain_path, lambda p: p not in jobs, cut, max_cgroups=MAX_DOMAIN_CGROUPS):
            if full not in jobs:
                folders.append(full)
                if len(folders) > MAX_WATCHES:
                    return self._give_up(f"more than {MAX_WATCHES} cgroups outside jobs")
        if cut:
            return self._give_up("; ".join(cut))
        vanished = False
        try:
            if self._fd is None:
                self._open()
            add, rm = self._libc.inotify_add_watch, self._libc.inotify_rm_watch
            wds: dict[str, int] = {}
            for path in folders:
                wd = add(self._fd, os.fsencode(path), WATCHED | IN_ONLYDIR | IN_DONT_FOLLOW)
                if wd < 0:
                    e = self._errno()
                    if e not in (errno.ENOENT, errno.ENOTDIR):
                        raise OSError(e, os.strerror(e), path)
                    vanished = True     # gone since the walk: a change
                    continue
                wds[path] = wd
            kept = set(wds.values())
            for wd in set(self._wds.values()) - kept:
                rm(self._fd, wd)        # EINVAL if its folder went: no matter
            self._wds = wds
        except (OSError, AttributeError) as e:     # AttributeError: a libc without inotify
            return self._give_up(f"inotify: {getattr(e, 'strerror', None) or e}")
        self.problem = ""
        self._changed = vanished

    def changed(self) -> bool:
        """Whether cgroups came or went since ``watch()``: one read, which
        finds nothing at idle."""
        if self._fd is None:
            return True
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                self._changed = True
                break
            if not data:
                break
            at = 0
            while at + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, at)
                at += _EVENT.size + length
                if mask & CHANGE:
                    self._changed = True
        return self._changed

    def _open(self) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._libc, self._errno = libc, ctypes.get_errno
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self._fd = fd

    def _give_up(self, why: str) -> None:
        self.close()
        self.problem = why

    def stats(self) -> dict:
        return {"watched_folders": len(self._wds)} if not self.problem else {"tree_watch": self.problem}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._wds = {}
        self._changed = True


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
        self._tree = TreeWatch()

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

    def watch_jobs(self, domain_path: str, jobs: frozenset[str] | set[str]) -> None:
        """After a refresh from a listing of ``jobs``: watch the domain for
        cgroups that come and go (see ``jobs_changed``)."""
        self._tree.watch(domain_path, jobs)

    def jobs_changed(self) -> bool:
        """Whether cgroups came or went in the domain since the last
        ``watch_jobs()`` (always true when that cannot be watched)."""
        return self._tree.changed()

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
        out.update(self._tree.stats())
        return out

    def close(self) -> None:
        self._tree.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._jobs.clear()
        if self._closer is not None:
            self._closing.put(None)
            self._closer.join(5)
            self._closer = None
