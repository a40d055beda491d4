"""The redline and a domain's statistics that lag its charge.

On this 6.18 host a domain's ``memory.stat`` showed no page cache at all, for
up to 2 s, while ``memory.usage_in_bytes`` showed a stream's 255 MiB of it:
the kernel sums the per-cgroup statistics late, and more often so while
someone reads them at a high rate. Free memory then looked gone, and the
redline killed a ``cat`` of a large file (a CI run of the stream test in
``test_thrash_freeze.py``). Here a monitor reads the domain's statistics
as fast as it can beside the daemon, and the stream must live.

The lag is a race in the kernel, not something a test can order: here the
monitor brought it about in every run (30,000-60,000 of some 650,000
reads), but a CI run on a fresh machine saw none in 8 s. So the scene runs
until the monitor has seen the lag for a while, or 30 s, and the stream
must live either way; without the lag the test says so in a warning. The
hold's rules are proven without the race in ``tests/test_core_state.py``."""
from __future__ import annotations

import os
import subprocess
import threading
import time
import warnings

import pytest
import thrash_scene

MIB = 1 << 20


class Monitor:
    """Reads the domain's memory.stat and usage in a loop; counts the reads
    whose statistics lacked over 32 MiB of the usage."""

    def __init__(self, path: str) -> None:
        self.path, self.reads, self.lagging, self.worst, self.peak = path, 0, 0, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        stat = os.open(os.path.join(self.path, "memory.stat"), os.O_RDONLY)
        usage = os.open(os.path.join(self.path, "memory.usage_in_bytes"), os.O_RDONLY)
        try:
            while not self._stop.is_set():
                u = int(os.pread(usage, 64, 0))
                s = dict(line.split() for line in os.pread(stat, 16384, 0).decode().splitlines())
                lag = u - int(s["total_cache"]) - int(s["total_rss"])
                self.reads += 1
                self.peak = max(self.peak, u)
                self.worst = max(self.worst, lag)
                if lag > 32 * MIB:
                    self.lagging += 1
        finally:
            os.close(stat)
            os.close(usage)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


# Every source (the pre-armed kill live: the redline may wait), and a
# sidecar's timer and PSI without it (it waits only when the processes' own
# counts show the lag is no anonymous memory of theirs).
@pytest.mark.parametrize("sources", [(), ("--sources", "timer,psi")], ids=["prearm", "timer-psi"])
def test_a_stream_lives_while_the_domains_statistics_lag(arena, daemon, files_dir, sources):
    limit = arena.limit_bytes
    path = thrash_scene.file_of(os.path.join(files_dir, f"stream-{2 * limit // MIB}M.dat"), 2 * limit)
    d = daemon("--domain", arena.path, "--jobs", "*", *sources)
    mon = Monitor(arena.path)
    p = arena.spawn(arena.job("load"), ["/bin/sh", "-c", f'echo ready; while :; do cat "{path}" >/dev/null; done'],
                    stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        while p.poll() is None:
            spent = time.monotonic() - t0
            if spent >= 30 or (spent >= 8 and mon.lagging >= 1000):
                break
            time.sleep(0.5)
    finally:
        mon.stop()
    alive = p.poll() is None
    d.stop()
    decisions = [r for r in d.records() if r["event"] == "oom_decision"]
    seen = (f"{mon.reads} reads, {mon.lagging} lagging by over 32 MiB (worst {mon.worst // MIB} MiB), "
            f"usage at most {mon.peak // MIB} MiB")
    print(f"\nmonitor: {seen}; decisions {[r['decision'] for r in decisions]}")
    assert mon.peak > limit // 2, f"the stream never filled the arena ({seen}): its file was not read from disk"
    if not mon.lagging:
        warnings.warn(f"the domain's statistics never lagged ({seen}): the stream lived, but the wait was not put to the test")
    assert decisions == [] and alive, [(r["decision"], r["snapshot"]) for r in decisions]
    if "not in memory.stat yet" in d.stderr():
        print("the daemon waited for the statistics at least once")
