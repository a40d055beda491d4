"""``python -m oomkiller_bench.idlecost``: what a killer costs at idle with
many jobs.

Makes an arena with ``--jobs`` job cgroups, one sleeping process in each,
starts each contender on it in turn and reads the CPU time (utime + stime
of /proc/PID/stat) it used over ``--seconds`` once it has settled. Nothing
presses on memory; earlyoom runs with ``--dryrun``. The arena, its
processes and the contenders are removed at the end.

    python -m oomkiller_bench.idlecost --jobs 1000 --seconds 60 \\
        --contender psi,timer --contender all --contender earlyoom
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .arena import Arena
from .daemon import wait_info

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 15.0
ARENA_LIMIT_BYTES = 1 << 30


def cpu_ms(pid: int) -> float:
    """utime + stime of a process (its threads included), in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


def run_ms(pid: int) -> float:
    """Time on a CPU of a process's threads, from the scheduler's own
    nanosecond count (/proc/PID/task/TID/schedstat); utime and stime are
    sampled at clock ticks, too coarse for a few ms a minute."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass        # a thread that ended
    return total / 1e6


MEMORY_FIELDS = ("VmRSS", "RssAnon", "VmHWM", "VmLck")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, VmHWM (the peak RSS) and VmLck of a process, in kB."""
    out = dict.fromkeys(MEMORY_FIELDS, 0)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out


def start(contender: str, arena: Arena, tmp: str) -> subprocess.Popen:
    if contender == "earlyoom":
        argv = ["earlyoom", "-m", "5,5", "-r", "0", "--dryrun"]
    else:
        argv = [sys.executable, "-m", "oomkiller", "run", "--domain", arena.path,
                "--control", os.path.join(tmp, "control.sock"), "--json-log", os.path.join(tmp, "records.jsonl")]
        if contender != "all":
            argv += ["--sources", contender]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "err"), "w"))


def measure(contender: str, arena: Arena, seconds: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="oomk-idlecost-")
    p = start(contender, arena, tmp)
    try:
        if contender != "earlyoom":
            if wait_info(os.path.join(tmp, "control.sock"), lambda: p.poll() is None, 60) is None:
                with open(os.path.join(tmp, "err")) as f:
                    raise RuntimeError(f"{contender}: the daemon did not answer: {f.read()[-2000:]}")
        time.sleep(SETTLE_S)
        before, run_before = cpu_ms(p.pid), run_ms(p.pid)
        time.sleep(seconds)
        after, run_after = cpu_ms(p.pid), run_ms(p.pid)
        mem = memory_kb(p.pid)
        return {"contender": contender, "cpu_ms": after - before, "run_ms": run_after - run_before,
                "seconds": seconds, "rss_mb": mem["VmRSS"] / 1024, "anon_mb": mem["RssAnon"] / 1024,
                "hwm_mb": mem["VmHWM"] / 1024, "lck_mb": mem["VmLck"] / 1024}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oomkiller_bench.idlecost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--contender", action="append",
                    help="'all' (oomkiller's defaults), an oomkiller --sources list, or earlyoom; repeatable "
                         "(default: all, psi,timer, earlyoom)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("idlecost: needs root (makes cgroups)", file=sys.stderr)
        return 2
    contenders = a.contender or ["all", "psi,timer", "earlyoom"]
    with Arena(f"oomk-idlecost-{os.getpid()}", ARENA_LIMIT_BYTES) as arena:
        t0 = time.monotonic()
        for i in range(a.jobs):
            arena.spawn(arena.job(f"job{i:05d}"), ["sleep", "86400"])
        print(f"idlecost: {a.jobs} sleeping jobs in {arena.path} ({time.monotonic() - t0:.1f} s)", flush=True)
        for c in contenders:
            if c == "earlyoom" and shutil.which("earlyoom") is None:
                print("idlecost: earlyoom is not installed", flush=True)
                continue
            r = measure(c, arena, a.seconds)
            print(f"idlecost: {c:28s} {r['run_ms']:7.1f} ms on a CPU in {r['seconds']:g} s "
                  f"({r['run_ms'] / r['seconds'] / 10:.3f}% of a core; utime+stime {r['cpu_ms']:.0f} ms), "
                  f"VmRSS {r['rss_mb']:.1f} MB (RssAnon {r['anon_mb']:.1f}), VmHWM {r['hwm_mb']:.1f} MB, "
                  f"VmLck {r['lck_mb']:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
