"""The daemon as the benchmarks see it from outside: its answer on the
control socket, and its JSON decision records (``--json-log``, one per line;
README "The log" lists the fields).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from oomkiller.control import ControlError, request
from oomkiller.model import parse_record

from .stats import tally


def wait_info(sock: str, alive: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> dict[str, Any] | None:
    """The daemon's ``info`` once it answers on ``sock``; None if it is no
    longer ``alive()`` or ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if os.path.exists(sock):
            try:
                return request(sock, "info", timeout_s=5).get("data", {})
            except ControlError:
                pass
        time.sleep(step_s)
    return None


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record in the file so far; none if the daemon has not made it.
    A line that is not JSON raises ValueError."""
    try:
        with open(path) as f:
            return [parse_record(json.loads(line)) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def kills(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of decisions that killed."""
    return [r for r in records if r.get("result") == "killed"]


def victim_job(rec: dict[str, Any]) -> str | None:
    return rec.get("victim", {}).get("job")


def decision_usec(rec: dict[str, Any]) -> int:
    """When the kill signal went out: at the start of the kill step. The
    record is written after the kill step (``kill``) and after its own
    making (``record``: the lines of every process, at ten thousand jobs
    some 10 ms)."""
    t = rec.get("timings_usec", {})
    return rec["ts_usec"] - t.get("kill", 0) - t.get("record", 0)


def results(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many decisions ended in each result (killed, recovered, ...)."""
    return tally(r.get("result", "?") for r in records)


# A run's records kept in its result, at most: the daemon makes a few per run.
KEPT_RECORDS = 16


def decisions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record of a run, in short: its event, result and decision, what
    woke the daemon and when, and what each step took (``timings_usec``).
    Where another killer won, these say where the daemon's time went."""
    out = []
    for r in records[:KEPT_RECORDS]:
        woke = (r.get("woken_by") or [{}])[0]
        out.append({"event": r.get("event"), "ts_usec": r.get("ts_usec"), "result": r.get("result"),
                    "decision": r.get("decision"), "job": r.get("job") or (r.get("victim") or {}).get("job"),
                    "woken_by": woke.get("source"), "wake_usec": woke.get("timestamp_usec"),
                    "timings_usec": dict(r.get("timings_usec") or {})})
    return out
