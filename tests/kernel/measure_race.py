"""Times of the fast-hog race, with and without eBPF (run as root):

    .venv/bin/python tests/kernel/measure_race.py [RUNS]

Runs the race of test_race.py RUNS times (default 20) per set of sources and
prints who won, first event -> kill decision, and signal -> empty / exit,
from the daemon's own decision records.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

# kproc beside this script, and the checkout: the arena is in oomkiller_bench,
# which is not installed with the daemon.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), str(Path(__file__).resolve().parents[2])]
import test_race  # noqa: E402


def summary(usec: list[int]) -> str:
    if not usec:
        return "none"
    return f"median {statistics.median(usec) / 1000:.2f} ms, worst {max(usec) / 1000:.2f} ms (n={len(usec)})"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    tmp = Path(tempfile.mkdtemp(prefix="oomk-measure-"))
    for sources in ("ebpf,prearm,psi,memcg,timer", "psi,memcg,timer"):
        r = test_race.race(tmp / sources.replace(",", "-"), sources, runs)
        kills = [d for d in r["decisions"] if d["result"] == "killed"]
        done = [a for d in kills for a in d.get("attempts", []) if a["ok"]]
        woke: dict[str, int] = {}
        for d in kills:
            first = d["woken_by"][0]
            woke[f"{first['source']}:{first['kind']}"] = woke.get(f"{first['source']}:{first['kind']}", 0) + 1
        print(f"{sources}: daemon won {r['daemon']}/{runs}, kernel {r['kernel']}, protected died {r['protected_died']}")
        print("  first event -> kill decision:",
              summary([d["timings_usec"]["event_to_decision"] for d in kills if "event_to_decision" in d["timings_usec"]]))
        print("  kill signal -> cgroup empty: ", summary([a["signal_to_empty_usec"] for a in done if a["signal_to_empty_usec"]]))
        print("  kill signal -> last exit:    ", summary([a["signal_to_exit_usec"] for a in done if a["signal_to_exit_usec"]]))
        print("  woken first by:", woke)


if __name__ == "__main__":
    main()
