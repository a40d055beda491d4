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
import tempfile

import pytest

from oomkiller.files import parse_psi_totals

BLKIO_ROOT = "/sys/fs/cgroup/blkio"
WRITE_BPS = 4 << 20
IMAGE_BYTES = 1 << 30
# more than the 256 MiB arena holds: reclaim must wait for the disk
WRITE_MIB = 320


def _run(*argv: str) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


@pytest.fixture
def slow_disk():
    """A mounted ext4 on a loop device whose writes are throttled; its mount point."""
    throttle = os.path.join(BLKIO_ROOT, "blkio.throttle.write_bps_device")
    if not os.path.exists(throttle):
        pytest.fail(f"no {throttle}: this test throttles its loop device with the v1 blkio controller "
                    "of a hybrid host", pytrace=False)
    work = tempfile.mkdtemp(prefix="oomk-slowdisk-", dir="/var/tmp")
    image, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    dev = _run("losetup", "--find", "--show", image)
    rule = None
    mounted = False
    try:
        _run("mkfs.ext4", "-q", dev)
        _run("mount", dev, mnt)
        mounted = True
        st = os.stat(dev)
        rule = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        with open(throttle, "w") as f:
            f.write(f"{rule} {WRITE_BPS}")
        yield mnt
    finally:
        if rule:
            with open(throttle, "w") as f:
                f.write(f"{rule} 0")
        if mounted:
            subprocess.run(["umount", mnt], timeout=120)
        subprocess.run(["losetup", "-d", dev], timeout=60)
        os.unlink(image)
        os.rmdir(mnt)
        os.rmdir(work)


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
    rc = dd.wait(timeout=300)
    span_s = os.times().elapsed - t0
    stall_share = (_full_stall_usec(arena) - stall0) / 1e6 / span_s
    kills = [(r.decision, r.result) for r in d.records()]
    assert rc == 0 and kills == [], (rc, kills)
    assert arena.kernel_oom_kills() == 0
    # The scene is the one that was killed: the writer stalled on memory over
    # the shipped 60% pressure limit, and the daemon saw it waiting on the disk.
    assert stall_share >= 0.6, f"the writer was stalled only {stall_share:.0%} of {span_s:.1f} s: no test"
    pressure = json.loads(d.ctl("info", "--json").stdout)["pressure"]
    assert pressure["held_by_dirty"] and pressure["dirty_bytes"] * 8 >= arena.limit_bytes, pressure
    (line,) = [ln for ln in d.ctl("info").stdout.splitlines() if "pressure limit:" in ln]
    assert "held: " in line, line
    print(f"\nslow writeback: {WRITE_MIB} MiB written in {span_s:.1f} s, full stall {stall_share:.0%}, no kill; "
          f"info: {line.strip()}")
    assert d.stop() == 0
