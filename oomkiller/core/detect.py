"""Is memory short? A pure function of plain values.

Three lines, any of which makes the domain low:

* the redline: free memory below it (the seed's check);
* thrashing: the thrash detector (``thrash.py``) fired on this snapshot;
* the pressure limit: the share of time every task of the domain was stalled
  on memory ("full" PSI) since a reference snapshot at least
  ``MIN_PRESSURE_SPAN_USEC`` old. This catches thrashing, where file cache
  keeps "free" looking healthy while nothing gets done. It holds while the
  domain's dirty and writeback pages are ``dirty_hold_permyriad`` of its
  memory or more (the config's ``pressure_dirty_hold``, an eighth by default) and the rest of its memory, all but the file cache, is at
  most half (``waiting_on_disk``): then the stall is reclaim waiting for the
  disk, which a kill does not shorten (a killed writer's dirty pages stay
  charged until written). A writer alone in a v1 memory cgroup on a disk
  writing 4 MB/s was "full" stalled 65-99% there, with half the cgroup free
  (and 4% of it not file cache), and was killed. A freeze is memory held by
  something reclaim cannot take (anonymous pages, or pages swap thrashes
  on): more than half, so dirty pages beside it hold nothing. Since free
  memory counts dirty pages as reclaimable, the redline seldom fires while
  the limit holds; the thrash detector and the pre-armed kill still act.
"""
from __future__ import annotations

from ..model import Detection, MemorySnapshot
from .thrash import ThrashFigures

# What the seed logs for a simulated low-memory event
# ("oom_lowmem(shortfall_bytes=524288)"): half a MiB, so a walk happens even
# with plenty free.
SIMULATED_SHORTFALL_BYTES = 512 * 1024

# A stall share over less than half a second is noise: one long reclaim.
MIN_PRESSURE_SPAN_USEC = 500_000

# Dirty and writeback pages at this share of the domain's memory (in 1/10000)
# or more hold the pressure limit (module docstring): an eighth. A host's
# writers may dirty up to the kernel's default dirty_ratio, 20% of what is
# available; a freeze's cache is clean pages read back, far under it.
DIRTY_HOLD_PERMYRIAD = 1250


def waiting_on_disk(snap: MemorySnapshot, hold_permyriad: int = DIRTY_HOLD_PERMYRIAD) -> bool:
    """Whether the domain's dirty and writeback pages hold the pressure
    limit: ``hold_permyriad`` of its memory or more (the config's
    ``pressure_dirty_hold``, an eighth by default; 0 never holds), and what
    is not file cache at most half of it (module docstring). Unknown figures
    hold nothing."""
    ram = snap.ram_total_bytes
    if hold_permyriad <= 0 or snap.dirty_bytes < 0 or snap.file_lru_bytes < 0 or ram <= 0:
        return False
    not_file = snap.used_bytes - (snap.swap_total_bytes - snap.swap_free_bytes) - snap.file_lru_bytes
    return snap.dirty_bytes * 10000 >= ram * hold_permyriad and not_file * 2 <= ram


def stall_permyriad(snap: MemorySnapshot, ref: MemorySnapshot | None) -> int | None:
    """Full-stall share of wall time between ``ref`` and ``snap``, or None."""
    if ref is None or snap.full_stall_usec < 0 or ref.full_stall_usec < 0:
        return None
    span = snap.taken_usec - ref.taken_usec
    if span < MIN_PRESSURE_SPAN_USEC:
        return None
    return max(0, snap.full_stall_usec - ref.full_stall_usec) * 10000 // span


def lag_explains(snap: MemorySnapshot, redline_bytes: int) -> bool:
    """Free memory is under the redline only by a charge the domain's
    statistics do not account for yet (``stat_lag_bytes``): a stream's page
    cache, or a hog's anonymous memory; they cannot yet say which, the
    processes' own counts can (``Wake.lag_is_anon``)."""
    return snap.free_bytes < redline_bytes <= snap.free_bytes + snap.stat_lag_bytes


def detect(snap: MemorySnapshot, redline_bytes: int, prev_free_bytes: int | None,
           simulate_lowmem: bool = False, *, pressure_ref: MemorySnapshot | None = None,
           pressure_limit_permyriad: int = 0, thrash: ThrashFigures | None = None,
           dirty_hold_permyriad: int = DIRTY_HOLD_PERMYRIAD, lag_hold: bool = False) -> Detection:
    """``lag_hold``: the redline waits while ``lag_explains`` (the core
    allows it for STAT_LAG_HOLD_USEC of a lag, core/state.py)."""
    delta = 0 if prev_free_bytes is None else snap.free_bytes - prev_free_bytes
    lag_held = ""
    if snap.free_bytes < redline_bytes:
        if not (lag_hold and lag_explains(snap, redline_bytes)):
            return Detection(True, redline_bytes - snap.free_bytes, snap.free_bytes, delta,
                             reason="free below redline")
        lag_held = (f"free {snap.free_bytes} bytes below the redline, but {snap.stat_lag_bytes} bytes of the "
                    "charge are not in memory.stat yet")
    if thrash is not None and thrash.firing:
        return Detection(True, 0, snap.free_bytes, delta, reason=thrash.reason)
    held = ""
    if pressure_limit_permyriad:
        share = stall_permyriad(snap, pressure_ref)
        if share is not None and share >= pressure_limit_permyriad:
            why = f"memory stall {share / 100:.1f}% >= {pressure_limit_permyriad / 100:g}%"
            if not waiting_on_disk(snap, dirty_hold_permyriad):
                return Detection(True, 0, snap.free_bytes, delta, reason=why)
            held = f"{why}, held: {snap.dirty_bytes} bytes dirty or under writeback of {snap.ram_total_bytes}"
    if simulate_lowmem:
        return Detection(True, SIMULATED_SHORTFALL_BYTES, snap.free_bytes, delta, simulated=True,
                         reason="simulated lowmem", held=held)
    return Detection(False, 0, snap.free_bytes, delta, held=held, lag_held=lag_held)
