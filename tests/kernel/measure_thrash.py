"""The freeze, N runs, and the healthy loads once each, with the daemon on
its shipped defaults; one line per run (README: "Thrashing").

    sudo .venv/bin/python tests/kernel/measure_thrash.py [RUNS] [--off]

``--off`` runs the freeze with the thrash detector off
(``OOMKILLER_THRASH_REFAULT_LIMIT=0``): the control, where nothing ends it.
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import thrash_scene  # noqa: E402
from kproc import DaemonProc  # noqa: E402

from oomkiller_bench.arena import Arena  # noqa: E402

MIB = 1 << 20


def main() -> None:
    runs = int(next((a for a in sys.argv[1:] if a.isdigit()), "3"))
    off = "--off" in sys.argv
    if off:
        os.environ["OOMKILLER_THRASH_REFAULT_LIMIT"] = "0"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="oomk-thrash-"))
    files = "/var/tmp/oomkiller-tests"
    os.makedirs(files, exist_ok=True)
    started = []

    def start(*args: str) -> DaemonProc:
        d = DaemonProc(tmp / f"d{len(started)}", *args)
        started.append(d)
        return d
    try:
        for i in range(runs):
            with Arena(f"oomk-measure-{uuid.uuid4().hex[:8]}", 512 * MIB) as a:
                r = thrash_scene.freeze(a, start, files, wait_s=15 if off else 30)
                print(f"freeze {i + 1}: {r.describe()}", flush=True)
        if not off:
            for kind in ("stream", "compile", "fits"):
                with Arena(f"oomk-measure-{uuid.uuid4().hex[:8]}", 256 * MIB) as a:
                    r = thrash_scene.healthy(a, start, files, kind, seconds=60)
                    print(f"{r.describe()}; decisions: {[d['decision'] for d in r.decisions]}", flush=True)
    finally:
        for d in started:
            if d.p.poll() is None:
                d.stop()


if __name__ == "__main__":
    main()
