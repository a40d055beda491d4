"""The domain: what "free / total memory" means for one oomkiller.

* ``host``: ``MemAvailable`` of ``MemTotal``.
* a cgroup: its limit (the tightest on the way up; MemTotal if none) minus what
  it cannot give back. What it can give back is its file cache that is clean:
  all of ``inactive_file`` and half of ``active_file`` (the active half is the
  working set, which would only be read back in), less dirty and writeback
  pages, which must be written first. Anonymous and shmem pages count as
  unreclaimable: these hosts run without swap. Free is also capped by the host's
  ``MemAvailable``: a cgroup cannot get what the host does not have.

A cgroup domain can be removed under a running oomkiller: ``snapshot()`` then
raises ``DomainGone``, and ``exists()`` tells, cheaply, when it is back.
"""
from __future__ import annotations

import os

from .cgroupfs import Cgroupfs
from .files import Vanished, read_psi_totals, vanishing
from .model import MemorySnapshot
from .procfs import Procfs


class DomainGone(OSError):
    """The domain's cgroup is gone (removed, or replaced by a file): its
    memory cannot be read. ``errno`` is the read's (ENOENT, ENODEV...)."""

    def __init__(self, errno_: int, path: str, strerror: str) -> None:
        super().__init__(errno_, f"domain cgroup {path} is gone ({strerror})", path)
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def reclaimable_bytes(stat: dict[str, int]) -> int:
    """Clean file cache the kernel can drop at once (see the module docstring)."""
    clean = stat.get("inactive_file", 0) + stat.get("active_file", 0) // 2
    return max(0, clean - stat.get("dirty", 0) - stat.get("writeback", 0))


def cgroup_free_bytes(limit_bytes: int, usage_bytes: int, reclaimable: int) -> int:
    return max(0, min(limit_bytes, limit_bytes - (usage_bytes - reclaimable)))


class Domain:
    """Takes fresh memory snapshots of the host or of one memory cgroup."""

    def __init__(self, spec: str, procfs: Procfs, cgroupfs: Cgroupfs) -> None:
        self.spec = spec
        self.procfs = procfs
        self.cgroupfs = cgroupfs
        self.path = cgroupfs.resolve(spec)
        self.is_host = spec == "host"
        self.pressure_path: str | None = None
        self.find_pressure()

    def find_pressure(self) -> str | None:
        """Where the domain's memory stall is read: ``/proc/pressure/memory``
        for the host, ``memory.pressure`` of the domain's v2 cgroup otherwise
        (on hybrid hosts, the v2 cgroup its processes share)."""
        if self.is_host:
            cand = os.path.join(self.procfs.root, "pressure", "memory")
        else:
            v2 = self.cgroupfs.v2_counterpart(self.path)
            cand = os.path.join(v2, "memory.pressure") if v2 else None
        self.pressure_path = cand if cand and os.path.exists(cand) else None
        return self.pressure_path

    def holds(self, pid: int, cgroup_id: int) -> bool:
        """Whether the kernel's OOM victim ``pid``, chosen by a task of cgroup
        v2 ``cgroup_id``, is the domain's business: the invoking task is in
        the domain (a memcg OOM of the domain is always invoked from inside),
        or the victim still shows as a member."""
        if self.is_host:
            return True
        v2 = self.cgroupfs.v2_counterpart(self.path)
        if v2 and cgroup_id:
            for dirpath, _dirs, _files in os.walk(v2):
                try:
                    with vanishing(dirpath):
                        if os.stat(dirpath).st_ino == cgroup_id:
                            return True
                except Vanished:
                    continue    # removed while we walked
        where = self.procfs.cgroups(pid).get("memory" if self.cgroupfs.layout.memory_v1 else "")
        mine = self.cgroupfs.relative(self.path).rstrip("/") + "/"
        return where is not None and (where.rstrip("/") + "/").startswith(mine)

    def full_stall_usec(self) -> int:
        if not self.pressure_path:
            return -1
        try:
            return read_psi_totals(self.pressure_path).get("full", -1)
        except (OSError, ValueError):
            return -1

    @property
    def name(self) -> str:
        return "host" if self.is_host else self.cgroupfs.relative(self.path)

    def exists(self) -> bool:
        """Whether the domain can be read again (the host always can): its
        ``memory.stat`` is there. One stat, cheap enough for every wake while
        the domain is gone; a domain that comes back is a new cgroup, so
        what was bound to the old one's files (``pressure_path``, the
        sources) has to be found again (``find_pressure()``)."""
        return self.is_host or os.path.exists(os.path.join(self.path, "memory.stat"))

    def snapshot(self, now_usec: int) -> MemorySnapshot:
        """Free and total memory now. Raises ``DomainGone`` if the domain's
        cgroup has been removed."""
        mi = self.procfs.meminfo()
        total, avail = mi["MemTotal"], mi.get("MemAvailable", mi.get("MemFree", 0))
        stall = self.full_stall_usec()
        if self.is_host:
            return MemorySnapshot(self.name, total, avail, total - avail, 0, now_usec, stall)
        try:
            limit, usage, stat = self.cgroupfs.memory(self.path)
        except Vanished as e:
            raise DomainGone(e.errno, self.path, e.strerror) from None
        limit = min(limit, total) if limit is not None else total
        rec = min(reclaimable_bytes(stat), usage)
        free = min(cgroup_free_bytes(limit, usage, rec), avail)
        return MemorySnapshot(self.name, limit, free, usage, rec, now_usec, stall)
