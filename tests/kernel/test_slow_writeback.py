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

import contextlib
import json
import os
import shutil
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


def _throttle(rule: str, bps: int) -> None:
    with open(os.path.join(BLKIO_ROOT, "blkio.throttle.write_bps_device"), "w") as f:
        f.write(f"{rule} {bps}")


@pytest.fixture
def slow_disk():
    """A mounted ext4 on a loop device whose writes are throttled; its mount
    point. Every step of the cleanup runs, whatever an earlier one did."""
    if not os.path.exists(os.path.join(BLKIO_ROOT, "blkio.throttle.write_bps_device")):
        pytest.fail(f"no {BLKIO_ROOT}: this test throttles its loop device with the v1 blkio controller "
                    "of a hybrid host", pytrace=False)
    with contextlib.ExitStack() as undo:
        work = tempfile.mkdtemp(prefix="oomk-slowdisk-", dir="/var/tmp")
        undo.callback(shutil.rmtree, work, ignore_errors=True)
        image, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
        os.mkdir(mnt)
        with open(image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        dev = _run("losetup", "--find", "--show", image)
        undo.callback(subprocess.run, ["losetup", "-d", dev], timeout=60)
        st = os.stat(dev)
        rule = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        _throttle(rule, 0)      # a rule a killed run left on this device
        _run("mkfs.ext4", "-q", dev)
        _run("mount", dev, mnt)
        # (last in, first out: the throttle is lifted, then the file system
        # unmounted, lazily if a writer still holds it)
        undo.callback(lambda: subprocess.run(["umount", mnt], timeout=120).returncode == 0
                      or subprocess.run(["umount", "-l", mnt], timeout=60))
        undo.callback(_throttle, rule, 0)
        _throttle(rule, WRITE_BPS)
        yield mnt


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
        assert "the stall is reclaim waiting for the disk" in d.stderr(), d.stderr()
    assert d.stop() == 0
