"""Is memory short? A pure function of one snapshot and the previous one."""
from __future__ import annotations

from .model import Detection, MemorySnapshot

# What the seed logs for a simulated low-memory event
# ("oom_lowmem(shortfall_bytes=524288)"): half a MiB, so a walk happens even
# with plenty free.
SIMULATED_SHORTFALL_BYTES = 512 * 1024


def detect(snap: MemorySnapshot, redline_bytes: int, prev_free_bytes: int | None,
           simulate_lowmem: bool = False) -> Detection:
    delta = 0 if prev_free_bytes is None else snap.free_bytes - prev_free_bytes
    if snap.free_bytes < redline_bytes:
        return Detection(True, redline_bytes - snap.free_bytes, snap.free_bytes, delta)
    if simulate_lowmem:
        return Detection(True, SIMULATED_SHORTFALL_BYTES, snap.free_bytes, delta, simulated=True)
    return Detection(False, 0, snap.free_bytes, delta)
