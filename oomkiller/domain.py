"""The domain: what "free / total memory" means for one oomkiller.

* ``host``: ``MemAvailable`` of ``MemTotal``.
* a cgroup: its limit (the tightest on the way up; MemTotal if none) minus what
  it cannot give back. What it can give back is its file cache: all of
  ``inactive_file`` and half of ``active_file`` (the active half is the
  working set, which would only be read back in), dirty and writeback pages
  included, as in ``MemAvailable``: reclaim writes them back, and no kill
  would free them. Anonymous and shmem pages count as unreclaimable (swap is
  counted apart, below). Free is also capped by the host's ``MemAvailable``:
  a cgroup cannot get what the host does not have.
* either way, plus the room left in the swap the domain may use
  (``count_swap``, on by default), and its swap in the total: a machine
  that still has swap to fill has memory to give, and a kill while it has
  would take a laptop's browser for doing what swap is for. The room is the
  host's ``SwapFree``, or for a cgroup its own swap limit's (v2
  ``memory.swap.max``, v1 memory+swap less memory), never more than the
  host's. Swap in RAM (zram) counts only for what compression saves. A machine that stalls on swap-ins is the pressure rule's to catch,
  as page-cache thrashing is the thrash detector's.

A cgroup domain can be removed under a running oomkiller: ``snapshot()`` then
raises ``DomainGone``, and ``exists()`` tells, cheaply, when it is back.
"""
from __future__ import annotations

import collections
import os
import re
import time

from .cgroupfs import (MAX_DOMAIN_CGROUPS, Cgroupfs, reclaimable_bytes, stat_anon_bytes, stat_lag_bytes,
                       walk_cgroups)
from .files import HeldFile, HeldFiles, Vanished, parse_psi_totals, read_text, vanishing
from .model import MemorySnapshot
from .procfs import MAX_ANON_PROCS, Procfs


class DomainGone(OSError):
    """The domain's cgroup is gone (removed, or replaced by a file): its
    memory cannot be read. ``errno`` is the read's (ENOENT, ENODEV...)."""

    def __init__(self, errno_: int, path: str, strerror: str) -> None:
        super().__init__(errno_, f"domain cgroup {path} is gone ({strerror})", path)
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def cgroup_free_bytes(limit_bytes: int, usage_bytes: int, reclaimable: int) -> int:
    return max(0, min(limit_bytes, limit_bytes - (usage_bytes - reclaimable)))


# Cgroups below the domain whose processes ``Domain.lag_is_anon`` reads,
# at most (a cgroup.procs and its folder's listing: some 20 us each).
MAX_ANON_CGROUPS = 1024
# The host's memory that is neither anonymous in a process's statm nor page
# cache that reclaim can drop: shmem (tmpfs, memfd, shared mappings) and
# kernel memory a process makes the kernel charge. Its growth over the
# last PINNED_WINDOW_USEC (/proc/meminfo is fresh) tells whether a lag of a
# domain's memory.stat may be such memory.
PINNED_KEYS = ("Shmem", "SUnreclaim", "KernelStack", "PageTables")
PINNED_WINDOW_USEC = 2_500_000
REFAULT_KEYS = ("workingset_refault_file", "workingset_refault", "workingset_activate_file", "workingset_activate")
# What a snapshot reads of /proc/meminfo (the timer reads it every second:
# the other fifty lines are not parsed).
MEMINFO_KEYS = frozenset({"MemTotal", "MemAvailable", "MemFree", "Active(file)", "Inactive(file)",
                          "SwapTotal", "SwapFree", "Dirty", "Writeback", *PINNED_KEYS})

# A swap area kept in memory, compressed (zram): /proc/swaps names its device
_ZRAM = re.compile(r"/dev/(zram[0-9]+)")
SYS_BLOCK = "/sys/block"

# How long the v2 cgroups standing for a cgroup domain are kept before they
# are looked for again: finding them reads every process of the domain.
V2_CACHE_S = 5.0


class Domain:
    """Takes fresh memory snapshots of the host or of one memory cgroup."""

    def __init__(self, spec: str, procfs: Procfs, cgroupfs: Cgroupfs, count_swap: bool = True) -> None:
        self.spec = spec
        # Whether the room left in swap counts as free memory (see snapshot)
        self.count_swap = count_swap
        self.procfs = procfs
        self.cgroupfs = cgroupfs
        self.sys_block = SYS_BLOCK      # where a zram device's mm_stat is read
        self.path = cgroupfs.resolve(spec)
        self.is_host = spec == "host"
        self.pressure_path: str | None = None
        self._pressure: HeldFile | None = None      # pressure_path, kept open: read on every wake
        self._io_pressure: HeldFile | None = None   # the I/O pressure file beside it, likewise
        # the domain's memory files (memory.stat, its usage and limits up
        # the tree), kept open: read on every wake; only on the kernel's
        # cgroup filesystem, where a removed cgroup's files fail their reads
        # (ENODEV) and so are opened again by path (``HeldFile``)
        self._held = HeldFiles() if not self.is_host and on_cgroupfs(self.path, procfs.root) else None
        self._name = ("", "")        # (path, name)
        # (when, v2 counterpart, its path as /proc/PID/cgroup shows it, the ids of its subtree)
        self._v2: tuple[float, str | None, str | None, frozenset[int]] | None = None
        # (taken, the host's PINNED_KEYS summed) of the snapshots of the
        # last PINNED_WINDOW_USEC, and the one before them
        self._pinned: collections.deque[tuple[int, int]] = collections.deque()
        self.find_pressure()

    def find_pressure(self) -> str | None:
        """Where the domain's memory stall is read: ``/proc/pressure/memory``
        for the host, ``memory.pressure`` of the domain's v2 cgroup otherwise
        (on hybrid hosts, the v2 cgroup its processes share)."""
        if self.is_host:
            cand = os.path.join(self.procfs.root, "pressure", "memory")
        else:
            # Through its processes first; a domain that holds none yet (a
            # daemon started on an empty arena) has its v2 cgroup at the same
            # path, where systemd and the arenas make it.
            v2 = self.cgroupfs.v2_counterpart(self.path) or self.cgroupfs.v2_mirror(self.path)
            cand = os.path.join(v2, "memory.pressure") if v2 else None
        self._v2 = None     # a domain that came back is a new cgroup
        self.pressure_path = cand if cand and os.path.exists(cand) else None
        return self.pressure_path

    def lag_is_anon(self, named_anon_bytes: int, slack_bytes: int) -> bool | None:
        """Whether the domain's processes map more anonymous memory now than
        its lagging memory.stat names (``named_anon_bytes``), past
        ``slack_bytes``: then the charge the statistics lag is, at least in
        part, a hog's. None if that cannot be told:
        * the host's shmem or kernel memory grew by more than the slack
          over the last PINNED_WINDOW_USEC: the lag may be such memory,
          which no statm shows as anonymous and reclaim cannot drop;
        * the processes cannot all be read (``Cgroupfs.subtree_pids_within``
          past MAX_ANON_CGROUPS or MAX_ANON_PROCS or a cut; ``Procfs.anon_bytes``);
        * a process came while they were counted (a fork, a move between
          cgroups: its cgroup.procs is read again after) and is gone.
        One read of each cgroup.procs and of each process's statm, twice
        the cgroup.procs: made only while a lag explains a shortfall
        (``Daemon._lag_is_anon``), and no further than the answer."""
        if self.is_host or self.pinned_growth_bytes() > slack_bytes:
            return None
        line = named_anon_bytes + slack_bytes
        try:
            first = self.cgroupfs.subtree_pids_within(self.path, MAX_ANON_CGROUPS, MAX_ANON_PROCS)
            if first is None:
                return None
            seen = set(first)
            anon = self.procfs.anon_bytes(seen, stop_above=line)
            if anon is None:
                return None
            if anon > line:
                return True
            again = self.cgroupfs.subtree_pids_within(self.path, MAX_ANON_CGROUPS, MAX_ANON_PROCS)
        except OSError:
            return None
        if again is None:
            return None
        came = set(again) - seen
        more = self.procfs.anon_bytes(came, stop_above=line - anon, max_gone=0) if came else 0
        return None if more is None else anon + more > line

    def _saw_pinned(self, now_usec: int, pinned: int) -> None:
        p = self._pinned
        p.append((now_usec, pinned))
        while len(p) >= 2 and now_usec - p[1][0] >= PINNED_WINDOW_USEC:
            p.popleft()

    def pinned_growth_bytes(self) -> int:
        """How much the host's shmem and unreclaimable kernel memory
        (PINNED_KEYS) grew over the last PINNED_WINDOW_USEC, as the
        snapshots saw it: the newest less the least since the window began
        (and the snapshot before it)."""
        p = self._pinned
        return p[-1][1] - min(v for _, v in p) if p else 0

    def holds(self, pid: int, cgroup_id: int) -> bool:
        """Whether the kernel's OOM victim ``pid``, chosen by a task of cgroup
        v2 ``cgroup_id``, is the domain's business: the victim still shows as
        a member, or the invoking task is in the domain (a memcg OOM of the
        domain is always invoked from inside).

        Called for every kernel OOM kill on the host, most of them outside
        the domain: one read of ``/proc/PID/cgroup``, and the domain's v2
        cgroups from a cache (``V2_CACHE_S``)."""
        if self.is_host:
            return True
        groups = self.procfs.cgroups(pid)
        where = groups.get("memory" if self.cgroupfs.layout.memory_v1 else "")
        if _below(where, self.cgroupfs.relative(self.path)):
            return True
        _, _, v2_rel, ids = self._v2_cgroups()
        return (v2_rel is not None and _below(groups.get(""), v2_rel)) or bool(cgroup_id and cgroup_id in ids)

    def _v2_cgroups(self) -> tuple[float, str | None, str | None, frozenset[int]]:
        """The domain's v2 counterpart (see ``Cgroupfs.v2_of``), its path as
        ``/proc/PID/cgroup`` shows it and the ids of its subtree's cgroups,
        looked for again at most every ``V2_CACHE_S`` seconds."""
        now = time.monotonic()
        if self._v2 is not None and now - self._v2[0] < V2_CACHE_S:
            return self._v2
        v2 = self.cgroupfs.v2_counterpart(self.path)
        rel = None
        ids: set[int] = set()
        if v2:
            root = self.cgroupfs.layout.unified_root or self.cgroupfs.layout.jobs_root
            r = os.path.relpath(v2, root)
            rel = "/" if r == "." else "/" + r
            for path in (v2, *walk_cgroups(v2, max_cgroups=MAX_DOMAIN_CGROUPS)):
                try:
                    with vanishing(path):
                        ids.add(os.stat(path).st_ino)
                except Vanished:
                    continue    # removed while we walked
        self._v2 = (now, v2, rel, frozenset(ids))
        return self._v2

    def stall_usec(self) -> tuple[int, int]:
        """(some, full) cumulative memory stall of the domain, -1 each if unknown."""
        if not self.pressure_path:
            return -1, -1
        held = self._pressure
        if held is None or held.path != self.pressure_path:
            if held is not None:
                held.close()
            held = self._pressure = HeldFile(self.pressure_path)
        try:
            totals = parse_psi_totals(held.read())
        except (OSError, ValueError):
            return -1, -1
        return totals.get("some", -1), totals.get("full", -1)

    def io_stall_usec(self) -> int:
        """Cumulative "some" I/O stall of a cgroup domain: the
        ``io.pressure`` beside its ``memory.pressure``; -1 if unknown. Not
        read for the host, whose thrash detector has no I/O path
        (core/thrash.py): no read on its kill loop for nothing."""
        if not self.pressure_path:
            return -1
        head, tail = os.path.split(self.pressure_path)
        path = os.path.join(head, "io" if tail == "memory" else "io.pressure")
        held = self._io_pressure
        if held is None or held.path != path:
            if held is not None:
                held.close()
            held = self._io_pressure = HeldFile(path)
        try:
            return parse_psi_totals(held.read()).get("some", -1)
        except (OSError, ValueError):
            return -1

    def full_stall_usec(self) -> int:
        return self.stall_usec()[1]

    @property
    def name(self) -> str:
        # every snapshot carries it: worked out once per path
        if self._name[0] != self.path:
            self._name = (self.path, "host" if self.is_host else self.cgroupfs.relative(self.path))
        return self._name[1]

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
        mi = self.procfs.meminfo(MEMINFO_KEYS)
        total, avail = mi["MemTotal"], mi.get("MemAvailable", mi.get("MemFree", 0))
        if not self.is_host:
            self._saw_pinned(now_usec, sum(mi.get(k, 0) for k in PINNED_KEYS))
        some, full = self.stall_usec()
        host_swap, host_swap_free = mi.get("SwapTotal", 0), mi.get("SwapFree", 0)
        if self.count_swap and host_swap > 0:
            in_ram, in_ram_room = self._swap_in_ram()
            host_swap = max(0, host_swap - in_ram)
            host_swap_free = max(0, min(host_swap_free - in_ram_room, host_swap))
        counted = self.count_swap and host_swap > 0
        if self.is_host:
            lru = mi.get("Active(file)", -1) + mi.get("Inactive(file)", 0) if "Active(file)" in mi else -1
            swap, swap_free = (host_swap, min(host_swap_free, host_swap)) if counted else (0, 0)
            refaults, activated = self._host_workingset()
            dirty = mi.get("Dirty", 0) + mi.get("Writeback", 0) if "Dirty" in mi else -1
            return MemorySnapshot(self.name, total + swap, avail + swap_free, total - avail + swap - swap_free, 0,
                                  now_usec, full, some, refaults, lru, swap_free, swap, activate_file_pages=activated,
                                  activate_of_pages=refaults, dirty_bytes=dirty)
        try:
            limit, usage, stat = self.cgroupfs.memory(self.path, self._held.read if self._held else None)
            sw = self.cgroupfs.swap(self.path, stat, limit) if counted else None
        except Vanished as e:
            raise DomainGone(e.errno, self.path, e.strerror) from None
        limit = min(limit, total) if limit is not None else total
        rec = min(reclaimable_bytes(stat), usage)
        free = min(cgroup_free_bytes(limit, usage, rec), avail)
        swap = swap_free = swap_used = 0
        if counted:
            # The swap the domain may still fill: its own limit's room,
            # never more than the host has left.
            cap, swap_used = sw if sw is not None else (None, host_swap - host_swap_free)
            swap = min(cap, host_swap) if cap is not None else host_swap
            swap_free = max(0, min(swap - swap_used, host_swap_free)) if swap else 0
            swap_used = swap - swap_free
        refaults, lru = refault_figures(stat)
        activated, of, host = activated_pages(stat), refaults, False
        if activated < 0 and refaults >= 0:
            # v1 counts the cgroup's refaults but not their activations:
            # the host's share stands in (a stream in the domain adds only
            # refaults nobody activates to it; see core/thrash.py)
            of, activated = self._host_workingset()
            host = True
        dirty = stat.get("dirty", 0) + stat.get("writeback", 0) if "dirty" in stat else -1
        return MemorySnapshot(self.name, limit + swap, free + swap_free, usage + swap_used, rec, now_usec, full,
                              some, refaults, lru, swap_free, swap, activate_file_pages=activated,
                              activate_of_pages=of, activations_host=host, dirty_bytes=dirty,
                              io_some_stall_usec=self.io_stall_usec(), major_faults=stat.get("pgmajfault", -1),
                              stat_lag_bytes=stat_lag_bytes(usage, stat, limit), stat_anon_bytes=stat_anon_bytes(stat))

    def _swap_in_ram(self) -> tuple[int, int]:
        """The part of the host's swap (size, room) that is not memory to
        give: a zram device keeps what is swapped to it in RAM, compressed,
        so its room frees only what compression saves. Each device is
        counted at the share its stored pages save (``mm_stat``: memory
        used of the data stored); all of it is left out while that is
        unknown (nothing stored yet, or unreadable)."""
        try:
            areas = self.procfs.swaps()
        except (OSError, ValueError):
            return 0, 0
        size = room = 0
        for name, area, used in areas:
            m = _ZRAM.fullmatch(name)
            if m is None:
                continue
            cost_pm = 1000      # of what it stores, per mille, the RAM it takes
            try:
                stat = read_text(os.path.join(self.sys_block, m.group(1), "mm_stat"), max_bytes=4096).split()
                orig, used_total = int(stat[0]), int(stat[2])
                if orig > 0:
                    cost_pm = min(1000, used_total * 1000 // orig)
            except (OSError, ValueError, IndexError):
                pass
            size += area * cost_pm // 1000
            room += max(0, area - used) * cost_pm // 1000
        return size, room

    def _host_workingset(self) -> tuple[int, int]:
        """The host's ``workingset_refault_file`` and
        ``workingset_activate_file`` (``workingset_refault`` and
        ``workingset_activate`` before 5.9), -1 each if it cannot be read."""
        try:
            vm = self.procfs.vmstat(REFAULT_KEYS)
        except (OSError, ValueError):
            return -1, -1
        return vm.get("workingset_refault_file", vm.get("workingset_refault", -1)), activated_pages(vm)


def on_cgroupfs(path: str, proc_root: str = "/proc") -> bool:
    """Whether ``path`` is on a mount of the kernel's cgroup filesystem
    (v1 or v2), by the longest mount point over it in ``mountinfo``; False
    if that cannot be read."""
    try:
        text = read_text(os.path.join(proc_root, "self", "mountinfo"))
    except (OSError, ValueError):
        return False
    best, fstype = "", ""
    path = os.path.normpath(path)
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, right.split()[0]
    return fstype in ("cgroup", "cgroup2")


def activated_pages(stat: dict[str, int]) -> int:
    """The refaulted file pages the kernel activated at once
    (``workingset_activate_file``, ``workingset_activate`` before 5.9), from a
    v2 memory cgroup's stat or ``/proc/vmstat``; -1 where not given (v1
    memory cgroups count only the refaults)."""
    return stat.get("workingset_activate_file", stat.get("workingset_activate", -1))


def refault_figures(stat: dict[str, int]) -> tuple[int, int]:
    """(refaulted file pages, file LRU bytes) from a memory cgroup's stat
    (v1's ``total_`` names already unprefixed by ``Cgroupfs.memory``), -1
    each if this kernel does not give them. Kernels before 5.9 count file
    and anonymous refaults as one ``workingset_refault``: without swap,
    that is the file's."""
    refaults = stat.get("workingset_refault_file", stat.get("workingset_refault", -1))
    if "active_file" not in stat or "inactive_file" not in stat:
        return refaults, -1
    return refaults, stat["active_file"] + stat["inactive_file"]


def _below(path: str | None, top: str) -> bool:
    """Whether a cgroup path (as ``/proc/PID/cgroup`` shows it) is ``top`` or
    below it."""
    if path is None:
        return False
    return (path.rstrip("/") + "/").startswith(top.rstrip("/") + "/")
