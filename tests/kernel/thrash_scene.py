"""The freeze and the healthy loads beside it, in an arena, with the daemon
watching: shared by test_thrash.py and measure_thrash.py.

The freeze (issue "End the freeze"): a service whose working set is a file
read through ``mmap`` at random pages in two threads, and a hog that fills
anonymous memory to 85% of the arena's limit and holds it. The page cache
the service needs is evicted and read back at once; its throughput
collapses to under 1% of its baseline and nothing else ends it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from oomkiller_bench.runner import drop_cache, make_file

WORKLOAD = os.path.join(os.path.dirname(__file__), "..", "..", "oomkiller_bench", "workload.py")
MIB = 1 << 20

# Throughput is judged over windows this long: the service reports every
# 100 ms, and counts in batches of 64 reads per thread.
WINDOW_S = 0.25
# The collapse: a window under this share of the baseline's rate.
COLLAPSE_SHARE = 0.5


def workload(*args: str) -> list[str]:
    return [sys.executable, "-S", WORKLOAD, *args]


def file_of(path: str, size: int) -> str:
    """A file of ``size`` random bytes, made once, not in the page cache."""
    if not os.path.exists(path) or os.path.getsize(path) != size:
        make_file(path, size)
    drop_cache(path)
    return path


class Ops:
    """Reads a workload's ``ops N T`` lines in a thread of its own."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.points: list[tuple[float, int]] = []      # (monotonic s, ops)
        self._t = threading.Thread(target=self._read, args=(p,), daemon=True)
        self._t.start()

    def _read(self, p: subprocess.Popen) -> None:
        for line in p.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ops":
                self.points.append((int(parts[2]) / 1e6, int(parts[1])))

    def rate(self, t0: float, t1: float) -> float | None:
        """Ops per second between t0 and t1, from the reports nearest inside;
        with fewer than two there, over the span from the last report
        before to the first after: a service frozen in a page fault (its
        reader threads hold the interpreter's lock while they wait on the
        disk) reports nothing until it moves again."""
        points = list(self.points)
        pts = [p for p in points if t0 <= p[0] <= t1]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            before = [p for p in points if p[0] < t0]
            after = [p for p in points if p[0] > t1]
            if not before or not after:
                return None
            pts = [before[-1], after[0]]
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def collapse(self, after: float, baseline: float, until: float) -> float | None:
        """The end of the first window after ``after`` whose rate is under
        COLLAPSE_SHARE of ``baseline``."""
        t = after
        while t + WINDOW_S <= until:
            r = self.rate(t, t + WINDOW_S + 0.11)
            if r is not None and r < COLLAPSE_SHARE * baseline:
                return t + WINDOW_S
            t += 0.05
        return None


@dataclass
class FreezeRun:
    hog_started: float = 0.0
    collapse: float | None = None       # monotonic s
    hog_died: float | None = None
    baseline_ops_s: float = 0.0
    after_ops_s: float | None = None
    service_alive: bool = True
    records: list = field(default_factory=list)

    @property
    def kill(self):
        return next((r for r in self.records if r["event"] == "oom_decision" and r["result"] == "killed"), None)

    def describe(self) -> str:
        k = self.kill
        col = "never" if self.collapse is None else f"{self.collapse - self.hog_started:.2f} s"
        died = "never" if self.hog_died is None else f"{self.hog_died - self.hog_started:.2f} s"
        gap = ("-" if self.collapse is None or self.hog_died is None
               else f"{(self.hog_died - self.collapse) * 1000:.0f} ms")
        return (f"collapse {col} after the hog started, hog dead {died}, collapse to death {gap}, "
                f"victim {k['victim']['job'] if k and k.get('victim') else '-'}, "
                f"signal: {k['decision'] if k else '-'}; service {self.baseline_ops_s:.0f} ops/s before, "
                f"{self.after_ops_s or 0:.0f} after")


def freeze(arena, start_daemon, tmpdir: str, *, file_bytes: int = 200 * MIB, fill_share: float = 0.85,
           threads: int = 2, wait_s: float = 30.0, daemon_args: tuple[str, ...] = (), path: str = "",
           before_hog=None) -> FreezeRun:
    """Run the freeze in ``arena`` with a daemon from ``start_daemon(*args)``
    on it (explicit jobs, everything else its defaults), until the hog dies
    or ``wait_s`` after it started. ``path``: the working set's file (made
    here by default); ``before_hog(svc_job)``: called as the hog starts."""
    path = path or file_of(os.path.join(tmpdir, f"working-set-{file_bytes // MIB}M.dat"), file_bytes)
    svc, hog = arena.job("svc"), arena.job("hog")
    d = start_daemon("--domain", arena.path, "--jobs", "*", *daemon_args)
    service = arena.spawn(svc, workload("mapped", "--file", path, "--threads", str(threads)),
                          stdout=subprocess.PIPE, text=True)
    assert service.stdout.readline().strip() == "ready", "the service did not start"
    ops = Ops(service)
    time.sleep(2.5)
    run = FreezeRun()
    now = time.monotonic()
    run.baseline_ops_s = ops.rate(now - 2.0, now) or 0.0
    assert run.baseline_ops_s > 0, "the service reported no work"
    if before_hog:
        before_hog(svc)
    run.hog_started = time.monotonic()
    cap = int(arena.limit_bytes * fill_share)
    h = arena.spawn(hog, workload("hog", "--cap", str(cap)), stdout=subprocess.PIPE, text=True)
    try:
        h.wait(timeout=wait_s)
        run.hog_died = time.monotonic()
    except subprocess.TimeoutExpired:
        pass
    if run.hog_died is not None:
        # The service reads back what was evicted (up to the whole file)
        # before it runs at its pace again: judged on the third and fourth
        # seconds.
        time.sleep(4.0)
        run.after_ops_s = ops.rate(run.hog_died + 2.0, time.monotonic())
    end = run.hog_died or time.monotonic()
    run.collapse = ops.collapse(run.hog_started, run.baseline_ops_s, end)
    run.service_alive = service.poll() is None
    run.hog_signal = h.returncode
    d.stop()
    run.records = d.records()
    run.stderr = d.stderr()
    if h.poll() is None:
        h.send_signal(signal.SIGKILL)
    return run


# A build's pattern through the page cache: write many files, read them all
# back, delete them, again; what it writes is twice the arena.
COMPILE_LIKE = r"""
import os, sys
d, total, piece = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = os.urandom(piece)
print("ready", flush=True)
n = 0
while True:
    names = []
    for i in range(total // piece):
        p = os.path.join(d, f"obj-{i}.o")
        with open(p, "wb") as f:
            f.write(block)
        names.append(p)
    for p in names:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    for p in names:
        os.unlink(p)
    n += 1
    print(f"ops {n} {int(__import__('time').monotonic_ns() // 1000)}", flush=True)
"""


@dataclass
class HealthyRun:
    name: str
    seconds: float
    kills: int = 0
    decisions: list = field(default_factory=list)
    alive: bool = True
    states: dict = field(default_factory=dict)      # thrash state -> samples seen in info
    max_refault_permyriad_per_s: int = 0
    max_stall_permyriad: int = 0
    activated: list = field(default_factory=list)   # activated share of the refaults, per episode sample
    progress: int = 0

    def describe(self) -> str:
        return (f"{self.name}: {self.seconds:.0f} s, kills {self.kills}, decisions {len(self.decisions)}, "
                f"thrash states seen {self.states}, peak refaults {self.max_refault_permyriad_per_s / 100:.0f}%/s, "
                f"peak stall over an episode's last second {self.max_stall_permyriad / 100:.1f}%, "
                f"activated {sorted(self.activated)[len(self.activated) // 2] / 100 if self.activated else '-'}% "
                f"(median), work done {self.progress}")


def healthy(arena, start_daemon, tmpdir: str, kind: str, seconds: float = 20.0) -> HealthyRun:
    """A healthy busy load in ``arena`` for ``seconds`` with the daemon on its
    defaults: ``stream`` (cat of a file twice the arena's size, in a loop),
    ``stream-held`` (the same beside a job holding 60%),
    ``compile`` (COMPILE_LIKE), ``fits`` (the freeze's service on a working
    set that fits beside a hog at 60%), ``burst`` (the same service beside
    bursts of pressure held 800 ms)."""
    limit = arena.limit_bytes
    job = arena.job("load")
    d = start_daemon("--domain", arena.path, "--jobs", "*")
    procs = []
    if kind in ("stream", "stream-held"):
        path = file_of(os.path.join(tmpdir, f"stream-{2 * limit // MIB}M.dat"), 2 * limit)
        procs.append(arena.spawn(job, ["/bin/sh", "-c", f'echo ready; n=0; while :; do cat "{path}" >/dev/null; '
                                                        f'n=$((n+1)); echo "ops $n 0"; done'],
                                 stdout=subprocess.PIPE, text=True))
        if kind == "stream-held":
            # beside a job holding 60%: the cache is squeezed to under half
            # the arena and refaults as in the freeze; the refaults are the
            # stream's own, and nothing waits on memory
            procs.append(arena.spawn(arena.job("hog"), workload("hog", "--cap", str(limit * 6 // 10)),
                                     stdout=subprocess.PIPE, text=True))
    elif kind in ("fits", "burst"):
        path = file_of(os.path.join(tmpdir, f"fits-{limit // 8 // MIB}M.dat"), limit // 8)
        procs.append(arena.spawn(job, workload("mapped", "--file", path), stdout=subprocess.PIPE, text=True))
        hog = arena.job("hog")
        # burst: the benchmark's burst-83, every 5 s 83% for 800 ms: the
        # service's cache is evicted and read back, free memory stays over
        # the redline
        hog_cmd = (("hog", "--cap", str(limit * 6 // 10)) if kind == "fits" else
                   ("burst", "--bytes", str(limit * 83 // 100), "--hold-ms", "800", "--every-s", "5"))
        procs.append(arena.spawn(hog, workload(*hog_cmd), stdout=subprocess.PIPE, text=True))
    else:
        raise ValueError(kind)
    for p in procs:
        assert p.stdout.readline().strip() == "ready", f"{kind}: a process did not start"
    ops = Ops(procs[0])
    run = HealthyRun(kind, seconds)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        info = d.ctl("info", "--json")
        if info.returncode == 0:
            import json
            t = json.loads(info.stdout).get("thrash") or {}
            if t:
                run.states[t["state"]] = run.states.get(t["state"], 0) + 1
                run.max_refault_permyriad_per_s = max(run.max_refault_permyriad_per_s, t["refault_permyriad_per_s"])
                if t.get("stall_permyriad") is not None and t["state"] != "calm":
                    run.max_stall_permyriad = max(run.max_stall_permyriad, t["stall_permyriad"])
                if t.get("activated_permyriad") is not None and t["state"] != "calm":
                    run.activated.append(t["activated_permyriad"])
        time.sleep(0.2)
    run.alive = all(p.poll() is None for p in procs)
    run.progress = ops.points[-1][1] if ops.points else 0
    d.stop()
    run.decisions = [r for r in d.records() if r["event"] == "oom_decision"]
    run.kills = sum(1 for r in run.decisions if r["result"] == "killed")
    return run
