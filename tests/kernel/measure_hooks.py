"""What a pre_kill hook costs a kill (run as root):

    .venv/bin/python tests/kernel/measure_hooks.py [RUNS]

In a 256 MiB arena, `lowmem` kills a job of 4 idle processes holding 16 MiB
each, RUNS times, with no hook and then with a pre_kill hook that only
sleeps for a second (pre_kill_wait_ms 0, the default: the kill does not
wait for it, but the hook's start shares the interpreter and the two CPUs
with the kill). Reported from each decision record: the walk
(`timings_usec.kill`, from the walk's start to the job empty) and signal to
empty; and that the hook ran each time.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), str(Path(__file__).resolve().parents[2])]
from kproc import DaemonProc, wait_for  # noqa: E402

from oomkiller_bench.arena import Arena  # noqa: E402


def runs(tmp: Path, n: int, *extra: str, started: Path | None = None) -> list[tuple[int, int]]:
    out = []
    with Arena(f"oomk-hooks-{uuid.uuid4().hex[:8]}", 256 << 20) as arena:
        d = DaemonProc(tmp / uuid.uuid4().hex[:8], "--domain", arena.path, "--redline", "1M", *extra)
        try:
            wait_for(lambda: "watching" in d.stderr(), 30, "the daemon's start")
            for i in range(n):
                job = arena.job(f"hog{i}")
                procs = [arena.spawn_idle(job, 16 << 20) for _ in range(4)]
                if started is not None and started.exists():
                    started.unlink()
                before = len(d.records())
                assert d.ctl("lowmem").returncode == 0
                for p in procs:
                    p.wait(timeout=20)
                rec = wait_for(lambda: [r for r in d.records()[before:] if r.get("result") == "killed"], 10,
                               "the kill record")[0]
                if started is not None:
                    wait_for(started.exists, 10, "the hook's run")
                out.append((rec.timings_usec["kill"], rec.attempts[0]["signal_to_empty_usec"]))
                time.sleep(1.2)     # the hook's second, so each kill starts one
        finally:
            d.stop()
    return out


def show(name: str, rows: list[tuple[int, int]], col: int) -> str:
    v = sorted(r[col] / 1000 for r in rows)
    return f"{name}: median {statistics.median(v):.2f} ms, min {v[0]:.2f}, max {v[-1]:.2f}"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        hooks = tmp / "hooks"
        hooks.mkdir(mode=0o755)
        started = tmp / "started"
        hook = hooks / "pre"
        hook.write_text(f"#!/bin/sh\n: > {started}\nexec sleep 1\n")
        os.chmod(hook, 0o755)
        plain = runs(tmp, n)
        with_hook = runs(tmp, n, "--pre-kill", str(hook), started=started)
    print(f"{n} kills each, 4 processes of 16 MiB")
    for name, rows in (("no hook", plain), ("pre_kill", with_hook)):
        print(show(f"{name:8s} walk", rows, 0))
        print(show(f"{name:8s} signal to empty", rows, 1))


if __name__ == "__main__":
    main()
