"""``python -m oomkiller_bench.idlecost``: what a killer costs at idle with
many jobs.

Makes an arena with ``--jobs`` job cgroups, one sleeping process in each,
starts each contender on it in turn and reads the CPU time (utime + stime
of /proc/PID/stat) it used over ``--seconds`` once it has settled, its
main thread's share, and oomkiller's own count of wakes by source. Nothing
presses on memory in the arena; earlyoom runs with ``--dryrun``. The arena,
its processes and the contenders are removed at the end.

``--reclaim-elsewhere`` adds a second arena beside the first, outside the
contenders' domain, where a reader goes again and again through a file
larger than its limit (``RECLAIM_LIMIT_BYTES``): the memory cgroup reclaims
steadily there, the tracepoints the eBPF program is on fire, and an idle
killer watching its own domain should not pay for them.

    python -m oomkiller_bench.idlecost --jobs 1000 --seconds 60 \\
        --contender psi,timer --contender all --contender earlyoom
    python -m oomkiller_bench.idlecost --jobs 100 --seconds 60 --reclaim-elsewhere --contender all
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from .arena import Arena
from .daemon import wait_info
from oomkiller.control import ControlError, request
from oomkiller.files import read_keyed

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 15.0
ARENA_LIMIT_BYTES = 1 << 30
# --reclaim-elsewhere: the second arena's limit and the file its reader
# goes through, half again as big, so every pass reclaims the most of it.
RECLAIM_LIMIT_BYTES = 128 << 20
RECLAIM_FILE_BYTES = 192 << 20
# The reader's pace: 4 MiB, then a pause (about 80 MiB/s of reads and
# reclaim, without saturating the disk or a CPU).
READER_SOURCE = r"""
import os, sys, time
path = sys.argv[1]
while True:
    with open(path, "rb", buffering=0) as f:
        while f.read(4 << 20):
            time.sleep(0.05)
"""


def cpu_ms(pid: int) -> float:
    """utime + stime of a process (its threads included), in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


def thread_ns(pid: int) -> dict[int, int]:
    """Time on a CPU of each thread of a process, in ns, from the
    scheduler's own count (/proc/PID/task/TID/schedstat); utime and stime
    are sampled at clock ticks, too coarse for a few ms a minute."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except FileNotFoundError:
            pass        # a thread that ended
    return out


def run_ms(pid: int) -> float:
    """Time on a CPU of a process's threads, in ms (see ``thread_ns``)."""
    return sum(thread_ns(pid).values()) / 1e6


def wakes(sock: str) -> dict[str, int]:
    """oomkiller's wakes so far, what its sources saw (a PSI trigger that
    fired, eBPF events) and the background listings it made (``info``);
    {} if it does not say."""
    try:
        data = request(sock, "info", timeout_s=5).get("data", {})
    except (ControlError, OSError):
        return {}
    out = {"all": data.get("wakes", 0)}
    for name, src in data.get("sources", {}).items():
        for key in ("fired", "events"):
            if isinstance(src.get(key), int):
                out[f"{name}_{key}"] = src[key]
    out["listed"] = ((data.get("background_listings") or {}).get("listed", 0)
                     + (data.get("walk_listings") or {}).get("listed", 0))
    return out


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


def measure(contender: str, arena: Arena, seconds: float, elsewhere: Callable[[], int] | None = None) -> dict:
    tmp = tempfile.mkdtemp(prefix="oomk-idlecost-")
    p = start(contender, arena, tmp)
    try:
        if contender != "earlyoom":
            if wait_info(os.path.join(tmp, "control.sock"), lambda: p.poll() is None, 60) is None:
                with open(os.path.join(tmp, "err")) as f:
                    raise RuntimeError(f"{contender}: the daemon did not answer: {f.read()[-2000:]}")
        time.sleep(SETTLE_S)
        sock = os.path.join(tmp, "control.sock")
        wakes_before = wakes(sock) if contender != "earlyoom" else {}
        hits_before = elsewhere() if elsewhere else 0
        before, threads_before = cpu_ms(p.pid), thread_ns(p.pid)
        time.sleep(seconds)
        after, threads_after = cpu_ms(p.pid), thread_ns(p.pid)
        hits = elsewhere() - hits_before if elsewhere else None
        wakes_after = wakes(sock) if contender != "earlyoom" else {}
        mem = memory_kb(p.pid)
        ran = {tid: ns - threads_before.get(tid, 0) for tid, ns in threads_after.items()}
        return {"contender": contender, "cpu_ms": after - before, "run_ms": sum(ran.values()) / 1e6,
                "main_ms": ran.get(p.pid, 0) / 1e6, "limit_hits_elsewhere": hits,
                "wakes": {k: v - wakes_before.get(k, 0) for k, v in wakes_after.items()
                          if v - wakes_before.get(k, 0)},
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
    ap.add_argument("--reclaim-elsewhere", action="store_true",
                    help="a second arena, outside the contenders' domain, reclaims steadily meanwhile")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("idlecost: needs root (makes cgroups)", file=sys.stderr)
        return 2
    contenders = a.contender or ["all", "psi,timer", "earlyoom"]
    with contextlib.ExitStack() as stack:
        arena = stack.enter_context(Arena(f"oomk-idlecost-{os.getpid()}", ARENA_LIMIT_BYTES))
        t0 = time.monotonic()
        for i in range(a.jobs):
            arena.spawn(arena.job(f"job{i:05d}"), ["sleep", "86400"])
        print(f"idlecost: {a.jobs} sleeping jobs in {arena.path} ({time.monotonic() - t0:.1f} s)", flush=True)
        elsewhere = None
        if a.reclaim_elsewhere:
            reclaimed = reclaim_elsewhere(stack)
            elsewhere = lambda: limit_hits(reclaimed)    # noqa: E731
            print(f"idlecost: a reader reclaims steadily in {reclaimed.path}, outside the domain", flush=True)
        for c in contenders:
            if c == "earlyoom" and shutil.which("earlyoom") is None:
                print("idlecost: earlyoom is not installed", flush=True)
                continue
            r = measure(c, arena, a.seconds, elsewhere)
            print(f"idlecost: {c:28s} {r['run_ms']:7.1f} ms on a CPU in {r['seconds']:g} s "
                  f"({r['run_ms'] / r['seconds'] / 10:.3f}% of a core; utime+stime {r['cpu_ms']:.0f} ms; "
                  f"main thread {r['main_ms']:.1f} ms), "
                  f"VmRSS {r['rss_mb']:.1f} MB (RssAnon {r['anon_mb']:.1f}), VmHWM {r['hwm_mb']:.1f} MB, "
                  f"VmLck {r['lck_mb']:.1f} MB", flush=True)
            if r["wakes"]:
                print(f"idlecost: {'':28s} wakes {' '.join(f'{k}={v}' for k, v in sorted(r['wakes'].items()))}",
                      flush=True)
            if r["limit_hits_elsewhere"] is not None:
                print(f"idlecost: {'':28s} meanwhile the other arena hit its limit {r['limit_hits_elsewhere']} times",
                      flush=True)
    return 0


def limit_hits(arena: Arena) -> int:
    """How often an arena's charge hit its limit (and reclaimed): v1's
    ``memory.failcnt``, v2's ``max`` of ``memory.events``."""
    if arena.layout.memory_v1:
        with open(os.path.join(arena.path, "memory.failcnt")) as f:
            return int(f.read())
    return read_keyed(os.path.join(arena.path, "memory.events")).get("max", 0)


def reclaim_elsewhere(stack: contextlib.ExitStack) -> Arena:
    """A second arena (``RECLAIM_LIMIT_BYTES``), beside the contenders' own,
    whose reader goes through a file of ``RECLAIM_FILE_BYTES`` again and
    again. The file is written from inside the arena, so its pages are
    charged there and the reader's passes keep the arena at its limit."""
    arena = stack.enter_context(Arena(f"oomk-idlecost-reclaim-{os.getpid()}", RECLAIM_LIMIT_BYTES))
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="oomk-idlecost-file-", dir="/var/tmp"))
    path = os.path.join(tmp, "data")
    job = arena.job("reader")
    dd = arena.spawn(job, ["dd", "if=/dev/zero", f"of={path}", "bs=1M",
                           f"count={RECLAIM_FILE_BYTES >> 20}", "status=none"])
    if dd.wait(120) != 0:
        raise RuntimeError(f"idlecost: could not write {path}")
    arena.spawn(job, [sys.executable, "-c", READER_SOURCE, path])
    return arena


if __name__ == "__main__":
    sys.exit(main())
