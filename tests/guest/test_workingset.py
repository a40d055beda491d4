"""The thrash detector at host level, where the host's memory stall counts
kswapd's reclaim: a job that holds a heap and streams a file larger than
the cache left squeezes the cache and refaults far over the limit, and the
host was measured stalled over the stall limit while it did; but the kernel
activates none of a stream's refaults (each page comes back a whole file
later, beyond the working set), and the daemon kills nothing."""
from __future__ import annotations

import os
import time

import pytest

from guestlib import Daemon, kernel_oom_kills, mem_available_bytes, meminfo_bytes, start_service, stop_test_units

from oomkiller_bench.runner import make_file

STREAM_FILE = "/var/tmp/oomkt-stream.dat"
WINDOW_S = 40.0

# Holds its first argument's bytes, then reads the file in its second,
# 1 MiB at a time, round and round.
STREAM_SOURCE = r"""
import os, sys
held = [b"\x5a" * (1 << 20) for _ in range(int(sys.argv[1]) >> 20)]
fd = os.open(sys.argv[2], os.O_RDONLY)
while True:
    off = 0
    while True:
        n = len(os.pread(fd, 1 << 20, off))
        if not n:
            break
        off += n
"""


@pytest.fixture(scope="module")
def daemon():
    d = Daemon(OOMKILLER_SOURCES="psi,timer").start()
    yield d
    d.stop()
    stop_test_units()
    if os.path.exists(STREAM_FILE):
        os.unlink(STREAM_FILE)


def test_a_stream_beside_a_held_heap_is_a_stream_not_a_squeezed_working_set(daemon):
    total = meminfo_bytes("MemTotal")
    make_file(STREAM_FILE, total)
    oom_before = kernel_oom_kills()
    # 40% of MemTotal left: the cache under half of memory, as the
    # detector's gates want of a freeze
    hold = max(0, mem_available_bytes() - total * 40 // 100)
    load = start_service("oomkt-stream", STREAM_SOURCE, hold, STREAM_FILE)
    seen = []
    end = time.monotonic() + WINDOW_S
    while time.monotonic() < end and load.active():
        t = daemon.info().get("thrash") or {}
        if t:
            seen.append(t)
        time.sleep(0.25)
    assert load.active(), f"the stream was killed: {daemon.kills()}"
    assert daemon.kills() == [] and kernel_oom_kills() == oom_before
    load.stop()
    limit = seen[0]["limit_refault_permyriad_per_s"]
    over = [t for t in seen if t["state"] in ("episode", "thrashing") and t["refault_permyriad_per_s"] >= limit]
    assert len(over) >= len(seen) // 2, f"the stream did not refault over the limit: {seen[-5:]}"
    # the counter is read here (pure v2, /proc/vmstat), and it says stream
    known = [t["activated_permyriad"] for t in over if t.get("activated_permyriad") is not None]
    assert known, f"no activation figures: {over[-5:]}"
    assert max(known) < seen[0]["limit_activated_permyriad"], known
    assert all(t["state"] != "thrashing" for t in seen)
