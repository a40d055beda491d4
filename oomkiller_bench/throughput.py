"""The service's throughput over time, and the freeze's headline from it:
when it collapsed (under half its baseline) and when it was relieved (back
above half). Pure functions of plain values: a series is the service's
``ops N T`` reports as ``[(t_s, ops)]``, ``t_s`` seconds since the victim
started, ``ops`` the count completed so far.
"""
from __future__ import annotations

from typing import Sequence

# A collapse and a relief are judged on the rate over windows this long. The
# mapped service reports every 100 ms and counts in batches of 64 reads per
# thread, so a shorter window is noise; a longer one hides the moment.
WINDOW_S = 0.5
# Windows are tried this far apart.
STEP_S = 0.1
# The collapse: the rate under this share of the baseline; the relief: at or
# above it again (issue "End the freeze").
SHARE = 0.5


def rate(series: Sequence[Sequence[float]], t0: float, t1: float) -> float | None:
    """Operations per second between ``t0`` and ``t1``, from the first and
    last reports inside; None with fewer than two reports there."""
    pts = [p for p in series if t0 <= p[0] <= t1]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def rates(series: Sequence[Sequence[float]], window_s: float = WINDOW_S, step_s: float = STEP_S,
          t_from: float | None = None, t_until: float | None = None) -> list[tuple[float, float]]:
    """``[(t_end, ops/s)]``: the rate over each window ending at ``t_end``,
    one every ``step_s``, for the windows that hold two reports or more.

    A window whose reports are only its ends (a service that stopped
    reporting while stalled) still gets a rate: what it did between them."""
    if not series:
        return []
    start = series[0][0] if t_from is None else t_from
    end = series[-1][0] if t_until is None else t_until
    out = []
    n = 0
    while True:
        t = start + window_s + n * step_s
        if t > end + 1e-9:
            break
        r = rate(series, t - window_s - 1e-9, t + 1e-9)
        if r is None:
            # No two reports inside: the span from the last report before to
            # the first after, if the window lies within it.
            before = [p for p in series if p[0] <= t - window_s]
            after = [p for p in series if p[0] >= t]
            if before and after and after[0][0] > before[-1][0]:
                r = (after[0][1] - before[-1][1]) / (after[0][0] - before[-1][0])
        if r is not None:
            out.append((round(t, 3), r))
        n += 1
    return out


def collapse_and_relief(series: Sequence[Sequence[float]], baseline_ops_s: float, t_from: float = 0.0,
                        t_until: float | None = None, share: float = SHARE, window_s: float = WINDOW_S,
                        step_s: float = STEP_S) -> tuple[float | None, float | None]:
    """``(collapse_s, relief_s)``: the end of the first window after
    ``t_from`` whose rate is under ``share`` of ``baseline_ops_s``, and the
    end of the first window after that whose rate is at or above it again.
    None for what did not happen by ``t_until`` (or the last report): no
    collapse, or no relief in the run's window."""
    if baseline_ops_s <= 0:
        return None, None
    line = share * baseline_ops_s
    collapse = None
    for t, r in rates(series, window_s, step_s, t_from, t_until):
        if collapse is None:
            if r < line:
                collapse = t
        elif t - window_s >= collapse - 1e-9 and r >= line:
            # The relief window lies wholly after the collapse: a window
            # that straddles it would count the rate from before.
            return collapse, t
    return collapse, None


def normalised(series: Sequence[Sequence[float]], baseline_ops_s: float, window_s: float = WINDOW_S,
               step_s: float = STEP_S, t_from: float | None = None,
               t_until: float | None = None) -> list[tuple[float, float]]:
    """``[(t, percent of the baseline)]`` for a plot."""
    if baseline_ops_s <= 0:
        return []
    return [(t, 100.0 * r / baseline_ops_s) for t, r in rates(series, window_s, step_s, t_from, t_until)]
