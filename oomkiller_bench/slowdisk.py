"""A slow disk of the benchmark's own: an ext4 file system on a loop device
whose writes (or reads) are throttled: for a writer whose dirty pages outrun
the disk, or a service that reads its working set back from a slow disk.

Where the throttle lives depends on the host:

* hybrid (v1 blkio mounted): the root blkio cgroup's
  ``blkio.throttle.write_bps_device`` and ``read_bps_device``. v1 writeback
  is issued by the flusher from the root, so a rule anywhere else would not
  slow it; the arena's processes read from the root blkio cgroup too.
* pure v2: ``io.max`` (``wbps``, ``rbps``) on the writer's or reader's own
  job. Writeback is issued on behalf of the cgroup that dirtied the pages
  there, so the rule throttles it. The arena must have the io controller
  for its jobs (``Arena.allow_io``: in the benchmark's own cgroup and the
  arena, as the memory controller; never above).

Only the loop device is throttled, and a rule already on it (an
operator's) is put back, not erased. On the way out every step runs,
whatever an earlier one did, with Ctrl-C held off: the throttle is lifted
first (the dirty pages drain at full speed), then the file system is
unmounted (lazily if a writer still holds it), the loop device detached
(whatever device backs the image, should ``losetup`` have been interrupted)
and its image removed (never while it is still mounted). A disk a killed
run left behind (its image in an ``oomk-slowdisk-`` folder) is lifted,
unmounted and detached by the next one (``clean_leftovers``), and
``leftovers`` names what is still there.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

from .arena import _sigint_held

BLKIO_ROOT = "/sys/fs/cgroup/blkio"
BLKIO_RULES = "blkio.throttle.write_bps_device"
BLKIO_READ_RULES = "blkio.throttle.read_bps_device"
IMAGE_BYTES = 1 << 30


def _run(*argv: str) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


def _try(*argv: str, timeout: float = 60) -> bool:
    """A cleanup step: whether it worked; never raises."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def v1_throttle_available() -> bool:
    return os.path.exists(os.path.join(BLKIO_ROOT, BLKIO_RULES))


def _v1_rule(rules: str, dev: str) -> int:
    """The bytes per second a v1 rules file sets for ``dev`` (MAJ:MIN), 0 for none."""
    try:
        with open(os.path.join(BLKIO_ROOT, rules)) as f:
            for line in f:
                words = line.split()
                if len(words) == 2 and words[0] == dev:
                    return int(words[1])
    except (OSError, ValueError):
        pass
    return 0


def _unmount(mnt: str) -> None:
    if os.path.ismount(mnt) and not _try("umount", mnt, timeout=120):
        _try("umount", "-l", mnt)


def _detach_image(image: str) -> None:
    """Detach every loop device ``image`` backs."""
    try:
        out = subprocess.run(["losetup", "-j", image], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in out.splitlines():
        dev = line.split(":", 1)[0].strip()
        if dev:
            _try("losetup", "-d", dev)


def _ours() -> list[tuple[str, str]]:
    """(loop device, backing image) of every disk of this module still attached."""
    try:
        out = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        dev, _, back = line.strip().partition(" ")
        back = back.strip().removesuffix(" (deleted)")
        if "/oomk-slowdisk-" in back and back.endswith("/disk.img"):
            found.append((dev, back))
    return found


def leftovers() -> list[str]:
    """What a slow disk left behind: its loop devices (and their throttle
    rules, mounts)."""
    return [f"{dev} ({back})" for dev, back in _ours()]


def clean_leftovers() -> list[str]:
    """Lift, unmount and detach the disks an earlier (killed) run left; what
    was cleaned."""
    done = []
    for dev, back in _ours():
        try:
            st = os.stat(dev)
            rule = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        except OSError:
            continue
        if v1_throttle_available():
            for rules in (BLKIO_RULES, BLKIO_READ_RULES):
                if _v1_rule(rules, rule):
                    try:
                        _write(os.path.join(BLKIO_ROOT, rules), f"{rule} 0")
                    except OSError:
                        pass
        _unmount(os.path.join(os.path.dirname(back), "mnt"))
        _try("losetup", "-d", dev)
        done.append(f"{dev} ({back})")
    return done


class SlowDisk:
    """A mounted ext4 of ``IMAGE_BYTES`` on a loop device of its own, under
    ``work_dir``; ``throttle(cgroup)`` slows its writes to ``write_bps`` and
    its reads to ``read_bps`` (0: not throttled). Use it as a context
    manager; ``mount`` is its mount point."""

    def __init__(self, work_dir: str, write_bps: int = 0, read_bps: int = 0) -> None:
        self.write_bps = write_bps
        self.read_bps = read_bps
        self.work_dir = work_dir
        self.mount = ""
        self.device = ""
        self._undo = contextlib.ExitStack()
        self._lifts: list = []

    @property
    def rule(self) -> str:
        st = os.stat(self.device)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def __enter__(self) -> "SlowDisk":
        try:
            self._make()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with _sigint_held():
            self._undo.close()

    def unthrottle(self) -> None:
        """Lift the throttle now (it is lifted on the way out anyway): a
        killed writer's dirty pages then drain at full speed."""
        for lift in self._lifts:
            lift()
        self._lifts.clear()

    def _make(self) -> None:
        undo = self._undo
        work = tempfile.mkdtemp(prefix="oomk-slowdisk-", dir=self.work_dir)
        image, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
        # (last in, first out; each undo is there before its step, and is
        # harmless if the step never happened)
        undo.callback(lambda: os.path.ismount(mnt) or shutil.rmtree(work, ignore_errors=True))
        undo.callback(_detach_image, image)
        os.mkdir(mnt)
        with open(image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.device = _run("losetup", "--find", "--show", image)
        _run("mkfs.ext4", "-q", self.device)
        undo.callback(_unmount, mnt)
        _run("mount", self.device, mnt)
        undo.callback(self.unthrottle)
        self.mount = mnt

    def throttle(self, v2_cgroup: str = "") -> str:
        """Slow the disk: the root blkio rules on a hybrid host, else
        ``io.max`` on ``v2_cgroup`` (the writer's or reader's job, in an
        arena that allows the io controller, ``Arena.allow_io``). What was
        done, for the record."""
        if v1_throttle_available():
            said = []
            for rules, bps, what in ((BLKIO_RULES, self.write_bps, "writes"),
                                     (BLKIO_READ_RULES, self.read_bps, "reads")):
                if bps:
                    path = os.path.join(BLKIO_ROOT, rules)
                    before = _v1_rule(rules, self.rule)
                    self._lifts.append(lambda path=path, before=before: _write(path, f"{self.rule} {before}"))
                    _write(path, f"{self.rule} {bps}")
                    said.append(f"{what} {bps} B/s")
            return f"root blkio: {self.rule} " + ", ".join(said)
        if not v2_cgroup:
            raise RuntimeError("no v1 blkio controller and no cgroup to throttle in")
        io_max = os.path.join(v2_cgroup, "io.max")
        if not os.path.exists(io_max):
            raise RuntimeError(f"{v2_cgroup} has no io.max: the io controller is not enabled for it "
                               "(Arena.allow_io)")
        limits = " ".join(f"{k}={v}" for k, v in (("rbps", self.read_bps), ("wbps", self.write_bps)) if v)

        def lift() -> None:
            try:
                _write(io_max, f"{self.rule} rbps=max wbps=max")
            except OSError:
                pass        # the job's cgroup is gone, and its rule with it

        self._lifts.append(lift)
        _write(io_max, f"{self.rule} {limits}")
        return f"io.max of {os.path.basename(v2_cgroup)}: {self.rule} {limits}"
