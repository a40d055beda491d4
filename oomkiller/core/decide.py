"""Whether to walk the ranking now, and whether to send the gentler first
step's SIGTERM: pure functions of plain values.

The SIGTERM step (``term_redline``, off by default): while free memory is
below the term line but not below the redline, the top-ranked job's
processes get SIGTERM, and ``term_grace_ms`` to exit before any job gets
another. The rules, in the order they apply:

* below the redline the kill applies at once, whatever the grace (the core
  never gets here then), and the armed kill stays armed as ever;
* one SIGTERM at a time: none within ``term_grace_ms`` of the last one,
  none within ``post_kill_delay_ms`` of a kill (the figures lag);
* only the top of the ranking is ever sent SIGTERM, and each job once per
  episode (the span below the term line: it ends when free memory is back
  above it). After the grace, a fresh ranking decides: a new top job (the
  last one exited, or another outgrew it) gets its SIGTERM; a top job that
  was sent one already and is still there ignored it, and is left to the
  kill at the redline. No job below it is sent SIGTERM instead: that would
  hurt a bystander while the job holding the memory runs on. earlyoom sends
  SIGTERM again and again until its kill line; a program that ignored one
  ignores the next, and one that handles it slowly may take a second as
  "now, without saving".
"""
from __future__ import annotations

from typing import Collection, Optional, Tuple

from ..model import Candidate, Detection, KillDecision, Ranking


def decide(det: Detection, now_usec: int, last_kill_usec: int | None,
           post_kill_delay_usec: int) -> KillDecision:
    if not det.low:
        return KillDecision(False, "free above redline")
    if (not det.simulated and last_kill_usec is not None
            and now_usec - last_kill_usec < post_kill_delay_usec):
        wait_ms = (post_kill_delay_usec - (now_usec - last_kill_usec)) // 1000
        return KillDecision(False, f"post-kill delay: {wait_ms} ms left")
    return KillDecision(True, det.reason or "low")


def decide_term(free_bytes: int, term_line_bytes: int, now_usec: int, last_term_usec: int | None,
                grace_usec: int, last_kill_usec: int | None, post_kill_delay_usec: int) -> KillDecision:
    """Whether a SIGTERM may go out now (the domain is not low: free memory
    is at or above the redline). ``term_line_bytes`` 0 is off."""
    if not term_line_bytes or free_bytes >= term_line_bytes:
        return KillDecision(False, "free above term_redline")
    if last_term_usec is not None and now_usec - last_term_usec < grace_usec:
        return KillDecision(False, f"SIGTERM grace: {(grace_usec - (now_usec - last_term_usec)) // 1000} ms left")
    if last_kill_usec is not None and now_usec - last_kill_usec < post_kill_delay_usec:
        return KillDecision(False, f"post-kill delay: {(post_kill_delay_usec - (now_usec - last_kill_usec)) // 1000} "
                                   "ms left")
    return KillDecision(True, "free below term_redline")


def term_target(ranking: Ranking, termed: Collection[Tuple[str, int]]) -> Tuple[Optional[Candidate], str]:
    """The job to send SIGTERM to: the top killable one, unless it was sent
    one already in this episode (``termed`` holds (path, inode) of those).
    (None, why) when there is none."""
    top = next(ranking.walk(), None)
    if top is None:
        return None, "no killable job"
    if (top.job.path, top.job.inode) in termed:
        return None, f"top job '{top.job.name}' was sent SIGTERM already: it is left to the redline"
    return top, ""
