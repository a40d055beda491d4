"""Markdown for the benchmarks' reports: tables, and the cells' values.

A value that was not measured shows as ``DASH``.
"""
from __future__ import annotations

from typing import Any, Iterable

DASH = "—"


def row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: Iterable[Iterable[Any]], align: str = "") -> list[str]:
    """A table's lines: the header, the rule, then one line per row.
    ``align`` has one letter per column, ``r`` for a right-aligned one
    (``---:``); columns past its end are left-aligned."""
    rule = "|" + "".join("---:|" if align[i:i + 1] == "r" else "---|" for i in range(len(header)))
    return [row(header), rule] + [row(r) for r in rows]


def ratio(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f}×"


def pct(v: float | None) -> str:
    """A share (0.5) as a percentage (50%)."""
    return DASH if v is None else f"{100 * v:.0f}%"
