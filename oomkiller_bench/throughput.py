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
# Each must hold this long: while the hog fills, the service may dip under
# half and come back for a second before it collapses (measured: 39%, then
# 50-56% for 0.8 s, then 0), and while it reads its evicted file back after
# the kill it may dip under half for a few tenths of a second (46-49%).
HOLD_S = 1.0


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
    reporting while stalled) still gets a rate: what it did between them.
    A window wholly after the last report, up to ``t_until``, gets 0: the
    service did not complete one report's batch in it (it reports every
    100 ms while it works), so a service that froze and never reported
    again collapsed, where it once had no rate at all and so no collapse."""
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
            elif before and not after and t_until is not None and before[-1][0] == series[-1][0]:
                r = 0.0
        if r is not None:
            out.append((round(t, 3), r))
        n += 1
    return out


def collapse_and_relief(series: Sequence[Sequence[float]], baseline_ops_s: float, t_from: float = 0.0,
                        t_until: float | None = None, share: float = SHARE, window_s: float = WINDOW_S,
                        step_s: float = STEP_S, hold_s: float = HOLD_S) -> tuple[float | None, float | None]:
    """``(collapse_s, relief_s)``: the end of the first window after
    ``t_from`` whose rate is under ``share`` of ``baseline_ops_s`` and stays
    under for ``hold_s``, and the end of the first window after that (lying
    wholly after it) whose rate is at or above the line and stays there for
    ``hold_s`` (or to the end of the series). None for what did not happen
    by ``t_until`` (or the last report): no collapse, or no relief in the
    run's window."""
    if baseline_ops_s <= 0:
        return None, None
    line = share * baseline_ops_s
    rs = rates(series, window_s, step_s, t_from, t_until)

    def holds(i: int, below: bool) -> bool:
        t0 = rs[i][0]
        return all((r < line) == below for t, r in rs[i:] if t <= t0 + hold_s + 1e-9)

    collapse = None
    for i, (t, r) in enumerate(rs):
        if collapse is None:
            if r < line and rs[-1][0] - t >= hold_s - 1e-9 and holds(i, True):
                collapse = t
        elif t - window_s >= collapse - 1e-9 and r >= line and holds(i, False):
            # The relief window lies wholly after the collapse: a window
            # that straddles it would count the rate from before.
            return collapse, t
    return collapse, None


def observed_until(series: Sequence[Sequence[float]], window_s: float, alive: bool | None = True) -> float:
    """How far a run's series speaks for the service: the run's window if
    it was alive at the end (a silence in it is a freeze, ``rates``), else
    its last report (what came after is its death, not a collapse: a
    killer that killed the service is not to be credited with a collapse
    after its kill)."""
    if alive is False and series:
        return min(window_s, series[-1][0])
    return window_s


def headline(series: Sequence[Sequence[float]], baseline_ops_s: float | None, window_s: float,
             kill_s: float | None, alive: bool | None = True) -> dict:
    """The freeze's figures from a run's series: ``collapse_s``,
    ``relief_s``, and from the collapse to the relief and to the first kill
    (``kill_s``), in seconds since the hog started; None where there was none.
    ``alive``: whether the service lived to the run's end (``observed_until``)."""
    until = observed_until(series, window_s, alive)
    collapse, relief = (collapse_and_relief(series, baseline_ops_s, 0.0, until) if baseline_ops_s
                        else (None, None))

    def gap(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None
    return {"collapse_s": collapse, "relief_s": relief, "collapse_to_relief_s": gap(collapse, relief),
            "collapse_to_kill_s": gap(collapse, kill_s)}


def normalised(series: Sequence[Sequence[float]], baseline_ops_s: float, window_s: float = WINDOW_S,
               step_s: float = STEP_S, t_from: float | None = None,
               t_until: float | None = None) -> list[tuple[float, float]]:
    """``[(t, percent of the baseline)]`` for a plot."""
    if baseline_ops_s <= 0:
        return []
    return [(t, 100.0 * r / baseline_ops_s) for t, r in rates(series, window_s, step_s, t_from, t_until)]
