"""Marks on a killed job's cgroup, as systemd-oomd leaves them.

systemd-oomd (src/oom/oomd-util.c, ``oomd_cgroup_kill``) increments the
extended attribute ``user.oomd_ooms`` of the cgroup it kills by one just
before its SIGKILLs, and ``user.oomd_kill`` by the number of processes it
killed just after; both are decimal text (``"2"``). systemd itself
(src/core/cgroup.c, ``unit_check_oomd_kill``) reads them on a unit's own
cgroup when that cgroup runs empty: if ``user.oomd_ooms`` grew since it last
looked, it logs ``systemd-oomd killed N process(es) in this unit.`` (notice,
``MESSAGE_ID=SD_MESSAGE_UNIT_OOMD_KILL``, ``N_PROCESSES=``) and treats the
unit as killed for memory (``unit_notify_cgroup_oom(u, ManagedOOM=true)``):
under the default ``OOMPolicy=stop`` a service then fails with result
``oom-kill``, so on systemd 252 and later ``systemctl status`` shows
``Active: failed (Result: oom-kill)`` with that line below it, and the
``ManagedOOMKills=`` property counts it. Since it only reads them on pure
cgroup v2, the marks go on the job's v2 cgroup.

Where systemd reads them: on the unit's cgroup. A job that is a service or
a scope *is* its unit's cgroup; for a job below one (a glob job inside a
service), the marks go on the nearest ``.service`` or ``.scope`` above it,
inside the domain; for a job with no unit around it, on its own cgroup, as
systemd-oomd does and for tools that read them there.

As systemd-oomd does, ``user.oomd_ooms`` is written before the signal:
systemd reads it when the cgroup empties, which is a few milliseconds after
the signal, and a mark that comes later is never reported. Here the kill
loop only queues the mark (``before``): a write to cgroupfs takes a kernfs
lock that a busy cgroup tree may hold, so a thread of its own does it (it
runs as soon as the kill's first system call lets go of the interpreter).
``after`` queues ``user.oomd_kill`` with the processes signalled.

The thread opens the cgroup's folder with ``O_NOFOLLOW`` and writes
through that descriptor; for the job's own cgroup it first checks the inode
is still the job's (a cgroup removed and made again at the same path is
another cgroup). Only cgroups strictly inside the domain are marked. A
value there that is not a count is left alone, as systemd-oomd does.
Nothing raises: writes, a cgroup gone, a full queue and refusals are
counted (``info``: ``output: marks``).
"""
from __future__ import annotations

import errno
import os
import queue
import re
from typing import Optional, Tuple

from .cgroupfs import Layout
from .model import Job
from .output import start_thread

OOMS = "user.oomd_ooms"
KILL = "user.oomd_kill"

# Units whose cgroup systemd checks for these marks when it empties (a
# slice never empties while its units run, and holds no processes).
UNIT_SUFFIXES = (".service", ".scope")

# Marks waiting for the thread: two per kill, and kills are 500 ms apart.
MARKS_QUEUE = 64

# A count is a u64: 20 digits. A longer value is not a count.
_COUNT = re.compile(rb"[0-9]{1,20}")
U64_MAX = (1 << 64) - 1

_GONE = (errno.ENOENT, errno.ENODEV, errno.ESTALE)


class CgroupMarks:
    """``before(job)`` and ``after(job, killed)`` never block."""

    def __init__(self, layout: Layout, domain_path: str, max_queue: int = MARKS_QUEUE) -> None:
        self.layout = layout
        self.domain_path = os.path.normpath(domain_path)
        self._q: "queue.Queue[Optional[Tuple[str, Job, int]]]" = queue.Queue(max_queue)
        self.marked = 0         # xattrs written
        self.dropped = 0        # queue full
        self.gone = 0           # the cgroup was gone, or replaced, when its turn came
        self.refused = 0        # outside the domain, or a value there that is not a count
        self.errors = 0
        self.last_error = ""
        self._thread = start_thread(self._run, "oomkiller-marks")

    # -- the kill loop's side: queue only -----------------------------------------
    def before(self, job: Job) -> None:
        """``user.oomd_ooms`` + 1, just before the job is signalled."""
        self._put((OOMS, job, 1))

    def after(self, job: Job, killed: int) -> None:
        """``user.oomd_kill`` + ``killed``, once its processes were signalled."""
        if killed > 0:
            self._put((KILL, job, killed))

    def _put(self, item: Tuple[str, Job, int]) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def stats(self) -> dict:
        out = {"marked": self.marked, "dropped": self.dropped, "gone": self.gone, "refused": self.refused,
               "errors": self.errors, "queued": self._q.qsize()}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def close(self, timeout_s: float = 1.0) -> None:
        """Let the queue drain for up to ``timeout_s``."""
        try:
            self._q.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    # -- where: pure path arithmetic ---------------------------------------------
    def target(self, job: Job) -> Optional[Tuple[str, int]]:
        """(cgroup folder, inode it must have or 0) that systemd reads the
        marks of for ``job``; None if that is not strictly inside the domain.

        The job's memory cgroup is inside the domain by how jobs are
        listed; its v2 cgroup (hybrid hosts) is where systemd looks, and
        holds only the job's processes (``Cgroupfs.v2_of``). Units above it
        are looked for only at the levels that are inside the domain on the
        memory side, and only where the v2 path ends as the memory path
        does (systemd mirrors the two trees); else the v2 cgroup itself."""
        rel = os.path.relpath(job.path, self.domain_path)
        if (not job.path.startswith(self.domain_path.rstrip("/") + "/") or rel.startswith("..")
                or os.path.normpath(job.path) != job.path.rstrip("/")):
            return None
        levels = rel.split("/")
        if job.v2_path and job.v2_path != job.path:
            unified = (self.layout.unified_root or "").rstrip("/")
            v2 = job.v2_path.rstrip("/")
            if not unified or not v2.startswith(unified + "/") or os.path.normpath(v2) != v2:
                return None
            parts = v2.split("/")
            if len(parts) - len(unified.split("/")) < len(levels) or parts[-len(levels):] != levels:
                return v2, job.v2_id
            prefix, ino = "/".join(parts[:-len(levels)]), job.v2_id
        else:
            prefix, ino = self.domain_path, job.v2_id or job.inode
        for i in range(len(levels), 0, -1):
            if levels[i - 1].endswith(UNIT_SUFFIXES):
                return os.path.join(prefix, *levels[:i]), ino if i == len(levels) else 0
        return os.path.join(prefix, *levels), ino

    # -- the thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self._mark(*item)
            except Exception as e:     # noqa: BLE001 - a mark must never end the thread
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"

    def _mark(self, name: str, job: Job, add: int) -> None:
        where = self.target(job)
        if where is None:
            self.refused += 1
            self.last_error = f"{job.v2_path or job.path}: not inside the domain: not marked"
            return
        path, ino = where
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            self._failed(path, e)
            return
        try:
            if ino and os.fstat(fd).st_ino != ino:
                self.gone += 1          # replaced by another cgroup of the same name
                return
            try:
                old = os.getxattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
                old = b""
            if old and not _COUNT.fullmatch(old):
                self.refused += 1
                self.last_error = f"{path}: {name} holds {old[:24]!r}, not a count: left as it is"
                return
            value = int(old or b"0") + add
            if value > U64_MAX:
                self.refused += 1
                self.last_error = f"{path}: {name} would pass 2^64: left as it is"
                return
            os.setxattr(fd, name, str(value).encode())
            self.marked += 1
        except OSError as e:
            self._failed(path, e)
        finally:
            os.close(fd)

    def _failed(self, path: str, e: OSError) -> None:
        if e.errno in _GONE:
            self.gone += 1
            return
        self.errors += 1
        self.last_error = f"{path}: {e.strerror or e}"
