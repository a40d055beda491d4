"""A slow disk of the benchmark's own: an ext4 file system on a loop device
whose writes are throttled, for a writer whose dirty pages outrun the disk.

Where the throttle lives depends on the host:

* hybrid (v1 blkio mounted): the root blkio cgroup's
  ``blkio.throttle.write_bps_device``. v1 writeback is issued by the flusher
  from the root, so a rule anywhere else would not slow it.
* pure v2: ``io.max`` (``wbps``) on the writer's own job. Writeback is
  issued on behalf of the cgroup that dirtied the pages there, so the rule
  throttles it. The arena must be allowed the io controller (its
  ``cgroup.controllers``); the benchmark never enables a controller above
  the arena.

Only the loop device is throttled. On the way out every step runs, whatever
an earlier one did: the throttle is lifted first (the dirty pages drain at
full speed), then the file system is unmounted (lazily if a writer still
holds it), the loop device detached and its image removed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

BLKIO_ROOT = "/sys/fs/cgroup/blkio"
BLKIO_RULES = "blkio.throttle.write_bps_device"
IMAGE_BYTES = 1 << 30


def _run(*argv: str) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def v1_throttle_available() -> bool:
    return os.path.exists(os.path.join(BLKIO_ROOT, BLKIO_RULES))


class SlowDisk:
    """A mounted ext4 of ``IMAGE_BYTES`` on a loop device of its own, under
    ``work_dir``; ``throttle(cgroup)`` slows its writes to ``write_bps``.
    Use it as a context manager; ``mount`` is its mount point."""

    def __init__(self, work_dir: str, write_bps: int) -> None:
        self.write_bps = write_bps
        self.work_dir = work_dir
        self.mount = ""
        self.device = ""
        self._undo = contextlib.ExitStack()

    @property
    def rule(self) -> str:
        st = os.stat(self.device)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def __enter__(self) -> "SlowDisk":
        try:
            self._make()
        except BaseException:
            self._undo.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._undo.close()

    def _make(self) -> None:
        undo = self._undo
        work = tempfile.mkdtemp(prefix="oomk-slowdisk-", dir=self.work_dir)
        undo.callback(shutil.rmtree, work, ignore_errors=True)
        image, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
        os.mkdir(mnt)
        with open(image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.device = _run("losetup", "--find", "--show", image)
        undo.callback(subprocess.run, ["losetup", "-d", self.device], timeout=60)
        if v1_throttle_available():
            _write(os.path.join(BLKIO_ROOT, BLKIO_RULES), f"{self.rule} 0")   # a rule a killed run left
        _run("mkfs.ext4", "-q", self.device)
        _run("mount", self.device, mnt)
        # last in, first out: the throttle is lifted, then the file system
        # unmounted, lazily if a writer still holds it
        undo.callback(lambda: subprocess.run(["umount", mnt], timeout=120).returncode == 0
                      or subprocess.run(["umount", "-l", mnt], timeout=60))
        self.mount = mnt

    def throttle(self, v2_cgroup: str = "") -> str:
        """Slow the disk's writes: the root blkio rule on a hybrid host, else
        ``io.max`` on ``v2_cgroup`` (the writer's job, in an arena the io
        controller is allowed in). What was done, for the record."""
        if v1_throttle_available():
            rules = os.path.join(BLKIO_ROOT, BLKIO_RULES)
            self._undo.callback(_write, rules, f"{self.rule} 0")
            _write(rules, f"{self.rule} {self.write_bps}")
            return f"root blkio: {self.rule} {self.write_bps} B/s"
        if not v2_cgroup:
            raise RuntimeError("no v1 blkio controller and no cgroup to throttle in")
        parent = os.path.dirname(v2_cgroup)
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            if "io" not in f.read().split():
                raise RuntimeError(f"the io controller is not allowed in {parent}: no cgroup can throttle "
                                   "the slow disk here")
        _write(os.path.join(parent, "cgroup.subtree_control"), "+io")
        _write(os.path.join(v2_cgroup, "io.max"), f"{self.rule} wbps={self.write_bps}")
        return f"io.max of {os.path.basename(v2_cgroup)}: {self.rule} wbps={self.write_bps}"
