"""Redline crossing -> job cgroup empty, for a slow leak (run as root):

    .venv/bin/python tests/kernel/measure_leak.py [RUNS] [PAUSE_S]

A job leaks 4 MiB every PAUSE_S (default 0.125 s: 32 MiB/s) in a 256 MiB
arena beside a protected job; the daemon runs with redline 64M and the
seed's 1000 ms sleep: on the timer alone with a fixed sleep (the seed's
loop), on the timer alone with the adaptive sleep, and with every source.
The crossing is when Domain.snapshot() (the daemon's own view) first shows
free below the redline, sampled every 0.5 ms.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

# kproc beside this script, and the checkout: the arena is in oomkiller_bench,
# which is not installed with the daemon.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), str(Path(__file__).resolve().parents[2])]
from kproc import DaemonProc  # noqa: E402

from oomkiller.cgroupfs import Cgroupfs  # noqa: E402
from oomkiller.domain import Domain  # noqa: E402
from oomkiller.procfs import Procfs  # noqa: E402
from oomkiller_bench.arena import Arena  # noqa: E402

LIMIT_BYTES = 256 << 20
REDLINE_BYTES = 64 << 20


def one(tmp: Path, sources: str, pause_s: float, *extra: str) -> tuple[float, int]:
    with Arena(f"oomk-leak-{uuid.uuid4().hex[:8]}", LIMIT_BYTES) as arena:
        arena.spawn_idle(arena.job("svc"), 24 << 20)
        d = DaemonProc(tmp / uuid.uuid4().hex[:8], "--domain", arena.path, "--redline", "64M",
                       "--sleep-ms", "1000", "--protect", "svc", "--sources", sources, *extra)
        try:
            job = arena.job("leak")
            arena.spawn_hog(job, 4 << 20, pause_s)
            procfs = Procfs()
            dom = Domain(arena.path, procfs, Cgroupfs(procfs=procfs))
            procs = os.path.join(job.path, "cgroup.procs")
            crossed = None
            while True:
                now = time.monotonic()
                if crossed is None and dom.snapshot(0).free_bytes < REDLINE_BYTES:
                    crossed = now
                if crossed is not None and not open(procs).read().strip():
                    return (now - crossed) * 1000, arena.kernel_oom_kills()
                time.sleep(0.0005)
        finally:
            d.stop()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    pause_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.125
    tmp = Path(tempfile.mkdtemp(prefix="oomk-measure-"))
    print(f"leak {4 / pause_s:.0f} MiB/s, arena 256 MiB, redline 64M, sleep 1000 ms, {runs} runs")
    for sources, extra in (("timer", ("--fixed-sleep",)), ("timer", ()), ("ebpf,prearm,psi,memcg,timer", ())):
        res = [one(tmp, sources, pause_s, *extra) for _ in range(runs)]
        ms = [r[0] for r in res]
        label = sources + (" (fixed sleep)" if extra else "")
        print(f"{label:30s} crossing -> empty: median {statistics.median(ms):.1f} ms, min {min(ms):.1f}, "
              f"max {max(ms):.1f}; kernel OOM kills {sum(r[1] for r in res)}")


if __name__ == "__main__":
    main()
