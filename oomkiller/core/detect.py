"""Is memory short? A pure function of plain values.

Three lines, any of which makes the domain low:

* the redline: free memory below it (the seed's check);
* thrashing: the thrash detector (``thrash.py``) fired on this snapshot;
* the pressure limit: the share of time every task of the domain was stalled
  on memory ("full" PSI) since a reference snapshot at least
  ``MIN_PRESSURE_SPAN_USEC`` old. This catches thrashing, where file cache
  keeps "free" looking healthy while nothing gets done.
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


def stall_permyriad(snap: MemorySnapshot, ref: MemorySnapshot | None) -> int | None:
    """Full-stall share of wall time between ``ref`` and ``snap``, or None."""
    if ref is None or snap.full_stall_usec < 0 or ref.full_stall_usec < 0:
        return None
    span = snap.taken_usec - ref.taken_usec
    if span < MIN_PRESSURE_SPAN_USEC:
        return None
    return max(0, snap.full_stall_usec - ref.full_stall_usec) * 10000 // span


def detect(snap: MemorySnapshot, redline_bytes: int, prev_free_bytes: int | None,
           simulate_lowmem: bool = False, *, pressure_ref: MemorySnapshot | None = None,
           pressure_limit_permyriad: int = 0, thrash: ThrashFigures | None = None) -> Detection:
    delta = 0 if prev_free_bytes is None else snap.free_bytes - prev_free_bytes
    if snap.free_bytes < redline_bytes:
        return Detection(True, redline_bytes - snap.free_bytes, snap.free_bytes, delta,
                         reason="free below redline")
    if thrash is not None and thrash.firing:
        return Detection(True, 0, snap.free_bytes, delta, reason=thrash.reason)
    if pressure_limit_permyriad:
        share = stall_permyriad(snap, pressure_ref)
        if share is not None and share >= pressure_limit_permyriad:
            return Detection(True, 0, snap.free_bytes, delta,
                             reason=f"memory stall {share / 100:.1f}% >= {pressure_limit_permyriad / 100:g}%")
    if simulate_lowmem:
        return Detection(True, SIMULATED_SHORTFALL_BYTES, snap.free_bytes, delta, simulated=True,
                         reason="simulated lowmem")
    return Detection(False, 0, snap.free_bytes, delta)
