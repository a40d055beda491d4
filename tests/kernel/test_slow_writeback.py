"""A writer on a slow disk is not a memory shortage.

A job writing more than its memory cgroup holds, to a disk that writes slower
than it dirties pages, fills the cgroup with dirty and writeback pages.
Reclaim then waits for the disk, and the kernel counts that wait as memory
stall: with the writer alone in the domain, "full" stall of 65-99%, with half
the domain free. A kill cannot shorten it (a killed writer's dirty pages stay
charged until written), and the kernel never kills for it. The daemon on its
shipped sources and pressure limit killed the writer in 3 of 3 runs here
before the pressure limit held for dirty pages (``core/detect.py``).

The disk: an ext4 file system on a loop device of our own, whose writes the
root blkio cgroup throttles to ``WRITE_BPS`` (the flusher writes back from the
root on a hybrid host). Only that loop device is throttled, and the throttle
is lifted before the file system is unmounted, so its dirty pages drain at
full speed.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from oomkiller.files import parse_psi_totals
from oomkiller_bench.slowdisk import SlowDisk, v1_throttle_available

WRITE_BPS = 4 << 20
# more than the 256 MiB arena holds: reclaim must wait for the disk
WRITE_MIB = 320


@pytest.fixture
def slow_disk():
    """A mounted ext4 on a loop device whose writes the root blkio cgroup
    throttles; its mount point. Every step of the cleanup runs, whatever an
    earlier one did (``oomkiller_bench/slowdisk.py``)."""
    if not v1_throttle_available():
        pytest.fail("no v1 blkio controller: this test throttles its loop device with the root blkio cgroup "
                    "of a hybrid host", pytrace=False)
    with SlowDisk("/var/tmp", WRITE_BPS) as disk:
        disk.throttle()
        yield disk.mount


def _full_stall_usec(arena) -> int:
    with open(os.path.join(arena.v2_path or arena.path, "memory.pressure")) as f:
        return parse_psi_totals(f.read())["full"]


def test_a_writer_stalled_on_a_slow_disk_is_not_killed(arena, daemon, slow_disk):
    d = daemon("--domain", arena.path)
    job = arena.job("writer")
    stall0 = _full_stall_usec(arena)
    t0 = os.times().elapsed
    dd = arena.spawn(job, ["dd", "if=/dev/zero", f"of={slow_disk}/data", "bs=1M", f"count={WRITE_MIB}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc = dd.wait(timeout=300)
    finally:
        if dd.poll() is None:       # the slow disk is unmounted after this test
            dd.kill()
            dd.wait(timeout=60)
    span_s = os.times().elapsed - t0
    stall_share = (_full_stall_usec(arena) - stall0) / 1e6 / span_s
    kills = [(r.decision, r.result) for r in d.records()]
    assert rc == 0 and kills == [], (rc, kills)
    # the disk was slow: the last 64 MiB could be charged only once as much
    # had been written back, at 4 MiB/s (unthrottled: 0.2 s in all)
    assert span_s >= (WRITE_MIB - 256) / (WRITE_BPS >> 20) * 0.75, span_s
    assert arena.kernel_oom_kills() == 0
    # The scene that was killed: the writer stalled on memory over the
    # shipped 60% limit (99% here; a CI run once saw only 13%, its loop
    # device writing faster). Whenever it did, the daemon said it held.
    pressure = json.loads(d.ctl("info", "--json").stdout)["pressure"]
    (line,) = [ln for ln in d.ctl("info").stdout.splitlines() if "pressure limit:" in ln]
    print(f"\nslow writeback: {WRITE_MIB} MiB written in {span_s:.1f} s, full stall {stall_share:.0%}, no kill; "
          f"info: {line.strip()}")
    if stall_share >= 0.6:
        assert pressure["held_by_dirty"] and "held: " in line, (pressure, line)
        d.wait_log("the stall is reclaim waiting for the disk")
    assert d.stop() == 0
