"""Statistics over runs, for both benchmarks: pure functions of plain values.

A value a run did not measure is ``None`` and is left out, never counted as 0.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Iterable


def numbers(xs: Iterable[Any]) -> list[float]:
    """The values that are numbers (not None, not booleans), as floats."""
    return [float(x) for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]


def median(xs: Iterable[Any]) -> Any:
    """The median of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float], worst: Callable[[list[float]], float] = max) -> dict[str, float | None]:
    """``{"median": ..., "worst": ...}`` of measured values; ``worst`` is
    ``max`` for a time, ``min`` for a share of work done."""
    return {"median": median(xs), "worst": worst(xs) if xs else None}


def tally(xs: Iterable[str]) -> dict[str, int]:
    """How many times each value comes, in the order each first came."""
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out
