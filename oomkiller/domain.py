"""The domain: what "free / total memory" means for one oomkiller.

* ``host``: ``MemAvailable`` of ``MemTotal``.
* a cgroup: its limit (the tightest on the way up; MemTotal if none) minus what
  it cannot give back. What it can give back is its file cache that is clean:
  all of ``inactive_file`` and half of ``active_file`` (the active half is the
  working set, which would only be read back in), less dirty and writeback
  pages, which must be written first. Anonymous and shmem pages count as
  unreclaimable: these hosts run without swap. Free is also capped by the host's
  ``MemAvailable``: a cgroup cannot get what the host does not have.
"""
from __future__ import annotations

from .cgroupfs import Cgroupfs
from .model import MemorySnapshot
from .procfs import Procfs


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

    @property
    def name(self) -> str:
        return "host" if self.is_host else self.cgroupfs.relative(self.path)

    def snapshot(self, now_usec: int) -> MemorySnapshot:
        mi = self.procfs.meminfo()
        total, avail = mi["MemTotal"], mi.get("MemAvailable", mi.get("MemFree", 0))
        if self.is_host:
            return MemorySnapshot(self.name, total, avail, total - avail, 0, now_usec)
        limit, usage, stat = self.cgroupfs.memory(self.path)
        limit = min(limit, total) if limit is not None else total
        rec = min(reclaimable_bytes(stat), usage)
        free = min(cgroup_free_bytes(limit, usage, rec), avail)
        return MemorySnapshot(self.name, limit, free, usage, rec, now_usec)
