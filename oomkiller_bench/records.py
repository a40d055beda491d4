"""Run records and the files both benchmarks leave in ``--out``.

A run record is one plain dict per run (``results.json`` keeps them under
``runs``); a failed run has an ``error``. Every benchmark writes
``results.json`` (everything, for ``--rerender`` and for reading back) and
``results.md`` (its report) side by side.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def group(records: list[dict[str, Any]], *fields: str) -> dict[tuple, list[dict[str, Any]]]:
    """Records by the values of ``fields`` (a cell or scenario, and a
    contender), in the order each group first comes."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(tuple(r[f] for f in fields), []).append(r)
    return out


def split(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs that measured, and those that failed."""
    return [r for r in records if not r.get("error")], [r for r in records if r.get("error")]


def stamp(t: float) -> str:
    """When a benchmark started, as its reports say it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def load_results(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def write_results(out_dir: str, markdown: str, data: dict[str, Any] | None = None) -> None:
    """``results.md`` in ``out_dir``, and ``results.json`` when given."""
    os.makedirs(out_dir, exist_ok=True)
    if data is not None:
        with open(os.path.join(out_dir, RESULTS_JSON), "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
    with open(os.path.join(out_dir, RESULTS_MD), "w") as f:
        f.write(markdown)
