"""Whether to walk the ranking now: a pure function of plain values."""
from __future__ import annotations

from ..model import Detection, KillDecision


def decide(det: Detection, now_usec: int, last_kill_usec: int | None,
           post_kill_delay_usec: int) -> KillDecision:
    if not det.low:
        return KillDecision(False, "free above redline")
    if (not det.simulated and last_kill_usec is not None
            and now_usec - last_kill_usec < post_kill_delay_usec):
        wait_ms = (post_kill_delay_usec - (now_usec - last_kill_usec)) // 1000
        return KillDecision(False, f"post-kill delay: {wait_ms} ms left")
    return KillDecision(True, det.reason or "low")
