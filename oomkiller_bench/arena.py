"""Arenas: cgroups made for tests and benchmarks, with a small memory limit.

An arena lives under the calling process's own cgroup, holds only processes it
started, and removes itself on close (thawing what is frozen, and killing
those processes by pidfd until its cgroups are empty, forks included).
Nothing outside it is ever pressured, signalled or touched.

On a hybrid host (v1 memory controller, cgroup2 without controllers) an arena
and each of its jobs exist twice: a v1 memory cgroup, which carries the limit,
and a v2 cgroup at the same relative path, which gives the job a cgroup v2 id
(what ``bpf_get_current_cgroup_id()`` returns), ``memory.pressure`` and
``cgroup.kill``. On a pure v2 host the one v2 cgroup does both. A job may
also be v1-only (no v2 cgroup of its own, hence no ``cgroup.kill``) and have
v1 pids and freezer cgroups of its own, for fork bombs and frozen jobs
(``Arena.job``).

On pure v2 a cgroup that holds processes cannot give its children a
controller (the no-internal-processes rule), and the calling process sits in
its own cgroup. So the first arena moves the calling process into a leaf
(``LEAF``) below it and enables the memory controller there; the last arena to
close moves what is in the leaf back, disables the controller and removes the
leaf. This needs the calling process to be the only one in its cgroup, and
that cgroup to be delegated (``systemd-run --scope -p Delegate=yes ...``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from oomkiller.cgroupfs import Layout, detect_layout, own_cgroup_paths
from oomkiller.files import read_keyed, read_pids, read_text


# A hog: touches a page of every chunk so the memory is really committed.
# argv: chunk bytes, pause seconds between chunks, optional cap bytes.
HOG_SOURCE = r"""
import sys, time
chunk = int(sys.argv[1]); pause = float(sys.argv[2]); cap = int(sys.argv[3]) if len(sys.argv) > 3 else 0
held = []
print("ready", flush=True)
while not cap or len(held) * chunk < cap:
    held.append(b"\x5a" * chunk)
    if pause:
        time.sleep(pause)
sys.stdout.write("capped\n"); sys.stdout.flush()
time.sleep(3600)
"""

# A process that allocates a little and then sleeps: a "service" that must live.
# Pure v2: the leaf below its own cgroup that the process making arenas
# moves into, so that its own cgroup may enable the memory controller.
LEAF = "oomk-arena-leaf"

IDLE_SOURCE = r"""
import sys, time
held = b"\x33" * int(sys.argv[1])
print("ready", flush=True)
time.sleep(3600)
"""


@dataclass
class ArenaJob:
    name: str
    path: str              # the cgroup that carries the memory accounting (v1 or v2)
    v2_path: str           # the v2 cgroup (same as path on pure v2); "" for a v1-only job
    pids_path: str = ""    # hybrid: a v1 pids cgroup of the job's own, if asked for
    freezer_path: str = ""  # hybrid: a v1 freezer cgroup of the job's own, if asked for

    @property
    def v2_id(self) -> int:
        return os.stat(self.v2_path).st_ino if self.v2_path else 0

    def cgroups(self) -> list[str]:
        """Every cgroup folder the job's processes are put in."""
        return list(dict.fromkeys(p for p in (self.path, self.v2_path, self.pids_path, self.freezer_path) if p))


@dataclass
class Arena:
    """A cgroup with a memory limit under our own cgroup, removed on close."""

    name: str
    limit_bytes: int
    cgroup_root: str = "/sys/fs/cgroup"
    layout: Layout = field(init=False)
    path: str = field(init=False, default="")
    v2_path: str = field(init=False, default="")
    procs: list = field(init=False, default_factory=list)
    _dirs: list = field(init=False, default_factory=list)
    _shared: set = field(init=False, default_factory=set)     # made for a v1 mirror; others may use them

    def __post_init__(self) -> None:
        self.layout = detect_layout(self.cgroup_root)
        if self.layout.memory_root is None:
            raise RuntimeError(f"no memory controller under {self.cgroup_root}: cannot make an arena")
        own_mem, own_v2 = own_cgroup_paths("self", self.layout)
        if not self.layout.memory_v1 and os.path.basename(own_v2) == LEAF:
            # an arena of ours is open: we already sit in the leaf
            own_mem = own_v2 = os.path.dirname(own_v2)
        self.path = os.path.join(self.layout.memory_root + own_mem, self.name)
        self.v2_path = (os.path.join(self.layout.unified_root + own_v2, self.name)
                        if self.layout.unified_root else "")
        if self.layout.memory_v1 and not os.path.exists(os.path.join(os.path.dirname(self.path), "memory.limit_in_bytes")):
            raise RuntimeError(f"{self.path}: parent is not a v1 memory cgroup")

    # -- lifetime -------------------------------------------------------
    def __enter__(self) -> "Arena":
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _mkdir(self, path: str) -> None:
        os.mkdir(path)
        self._dirs.append(path)

    def create(self) -> None:
        if not self.layout.memory_v1:
            self._enter_leaf()
        self._mkdir(self.path)
        if self.layout.memory_v1:
            _write(os.path.join(self.path, "memory.limit_in_bytes"), str(self.limit_bytes))
            if self.v2_path and self.v2_path != self.path:
                self._mkdir(self.v2_path)
        else:
            _write(os.path.join(self.path, "memory.max"), str(self.limit_bytes))
            _write(os.path.join(self.path, "memory.swap.max"), "0", missing_ok=True)
            _write(os.path.join(self.path, "cgroup.subtree_control"), "+memory")

    def _enter_leaf(self) -> None:
        """Pure v2: give our own cgroup the memory controller for its
        children, moving this process into ``LEAF`` first (see the module
        docstring). Nothing to do in the root cgroup, which is exempt from
        the rule, or when an open arena of ours has done it."""
        own = os.path.dirname(self.path)
        if os.path.normpath(own) == os.path.normpath(self.layout.root):
            return
        if "memory" in _read_words(os.path.join(own, "cgroup.subtree_control")):
            return
        if "memory" not in _read_words(os.path.join(own, "cgroup.controllers")):
            raise RuntimeError(f"{own}: the memory controller is not available to this cgroup; run under a "
                               "delegated cgroup (systemd-run --scope -p Delegate=yes ...)")
        leaf = os.path.join(own, LEAF)
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), "0")
        try:
            _write(os.path.join(own, "cgroup.subtree_control"), "+memory")
        except OSError as e:
            self._leave_leaf()
            raise RuntimeError(f"{own}: cannot enable the memory controller for an arena ({e.strerror}): "
                               "other processes share this process's cgroup; run it as the only process of "
                               "a delegated cgroup (systemd-run --scope -p Delegate=yes ...)") from None

    def allow_io(self) -> None:
        """Pure v2: let the arena's jobs have the io controller (``io.max``,
        for a slow disk of the benchmark's, slowdisk.py), enabled in our own
        cgroup and the arena like memory. Nothing to do on a hybrid host,
        whose blkio is v1."""
        if self.layout.memory_v1:
            return
        own = os.path.dirname(self.path)
        for cg in (own, self.path):
            if "io" in _read_words(os.path.join(cg, "cgroup.subtree_control")):
                continue
            if "io" not in _read_words(os.path.join(cg, "cgroup.controllers")):
                raise RuntimeError(f"{cg}: the io controller is not available to this cgroup; run under a "
                                   "delegated cgroup (systemd-run --scope -p Delegate=yes ...)")
            _write(os.path.join(cg, "cgroup.subtree_control"), "+io")

    def _leave_leaf(self) -> None:
        """Pure v2, once no arena of ours is left: undo ``_enter_leaf``,
        moving every process of the leaf (this one and what it started
        outside arenas) back to our own cgroup."""
        own = os.path.dirname(self.path)
        leaf = os.path.join(own, LEAF)
        if not os.path.isdir(leaf):
            return
        if any(d != LEAF and os.path.isdir(os.path.join(own, d)) for d in os.listdir(own)):
            return      # another arena is still open
        try:
            if "io" in _read_words(os.path.join(own, "cgroup.subtree_control")):
                _write(os.path.join(own, "cgroup.subtree_control"), "-io")     # (allow_io)
            _write(os.path.join(own, "cgroup.subtree_control"), "-memory")
        except OSError:
            return      # a child still uses it: keep the leaf
        for pid in _read_pids(os.path.join(leaf, "cgroup.procs")):
            try:
                _write(os.path.join(own, "cgroup.procs"), str(pid))
            except ProcessLookupError:
                pass
        _rmdir_retry(leaf)

    def job(self, name: str, *, v2: bool = True, pids_max: int = 0, freezer: bool = False) -> ArenaJob:
        """A job cgroup in the arena. On a hybrid host, ``v2=False`` gives it
        no v2 cgroup of its own (its processes stay in the v2 cgroup of the
        process that spawns them, so it has no ``cgroup.kill``), and
        ``pids_max`` / ``freezer`` give it v1 pids / freezer cgroups at the
        path of its memory cgroup, as systemd lays out v1 hierarchies (where
        a killer that freezes would look for one). On pure v2 ``v2`` and
        ``freezer`` change nothing and ``pids_max`` is written to the job's
        cgroup, with the pids controller enabled for the arena's children."""
        path = os.path.join(self.path, name)
        self._mkdir(path)
        job = ArenaJob(name=name, path=path, v2_path=path)
        if self.layout.memory_v1:
            job.v2_path = ""
            if v2 and self.v2_path:
                job.v2_path = os.path.join(self.v2_path, name)
                self._mkdir(job.v2_path)
            if pids_max:
                job.pids_path = self._v1_mirror("pids", path)
                _write(os.path.join(job.pids_path, "pids.max"), str(pids_max))
            if freezer:
                job.freezer_path = self._v1_mirror("freezer", path)
        elif pids_max:
            try:
                _write(os.path.join(self.path, "cgroup.subtree_control"), "+pids")
            except OSError as e:
                raise RuntimeError(f"{self.path}: cannot enable the pids controller ({e.strerror}): "
                                   "it must be enabled in the cgroup above the arena") from None
            _write(os.path.join(path, "pids.max"), str(pids_max))
        return job

    def side_job(self, name: str) -> ArenaJob:
        """A cgroup beside the arena (a sibling, ``<arena name>-<name>``, in
        each hierarchy), with no limit of its own: what its processes touch
        is not charged to the arena. It is removed on close with the arena's
        own, and its processes killed with theirs. A process started here
        and then moved into a job of the arena leaves the memory it touched
        before the move charged here (cgroup charges do not follow a task),
        so the job holds a live process that costs it next to nothing."""
        path = os.path.join(os.path.dirname(self.path), f"{self.name}-{name}")
        self._mkdir(path)
        job = ArenaJob(name=name, path=path, v2_path=path)
        if self.layout.memory_v1:
            job.v2_path = ""
            if self.v2_path:
                job.v2_path = os.path.join(os.path.dirname(self.v2_path), f"{self.name}-{name}")
                self._mkdir(job.v2_path)
        return job

    def _v1_mirror(self, controller: str, memory_path: str) -> str:
        """Make the cgroup of a v1 controller at the relative path of a
        memory cgroup of ours; folders above it that did not exist are made
        too, and removed on close if empty."""
        root = os.path.join(self.layout.root, controller)
        if not os.path.exists(os.path.join(root, "cgroup.procs")):
            raise RuntimeError(f"no v1 {controller} controller at {root}")
        parts = os.path.relpath(memory_path, self.layout.memory_root).split("/")
        path = root
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            last = i == len(parts) - 1
            try:
                os.mkdir(path)
            except FileExistsError:
                if last:
                    raise
                continue
            self._dirs.append(path)
            if not last:
                self._shared.add(path)
        return path

    def spawn(self, job: ArenaJob, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` inside ``job`` (every hierarchy) before it runs a line."""
        targets = [os.path.join(d, "cgroup.procs") for d in job.cgroups()]

        def enter() -> None:
            for t in targets:
                with open(t, "w") as f:
                    f.write("0")
        p = subprocess.Popen(argv, preexec_fn=enter, **popen)
        self.procs.append(p)
        return p

    def spawn_hog(self, job: ArenaJob, chunk_bytes: int = 4 << 20, pause_s: float = 0.0,
                  cap_bytes: int = 0) -> subprocess.Popen:
        p = self.spawn(job, [sys.executable, "-c", HOG_SOURCE, str(chunk_bytes), str(pause_s), str(cap_bytes)],
                       stdout=subprocess.PIPE, text=True)
        _wait_ready(p)
        return p

    def spawn_idle(self, job: ArenaJob, hold_bytes: int = 8 << 20) -> subprocess.Popen:
        p = self.spawn(job, [sys.executable, "-c", IDLE_SOURCE, str(hold_bytes)],
                       stdout=subprocess.PIPE, text=True)
        _wait_ready(p)
        return p

    def kernel_oom_kills(self) -> int:
        """OOM kills the kernel made anywhere in the arena.

        v1 counts a victim only in the memcg it belonged to, so sum the subtree;
        v2's ``memory.events`` is hierarchical already.
        """
        if not self.layout.memory_v1:
            return _read_keyed(os.path.join(self.path, "memory.events")).get("oom_kill", 0)
        total = 0
        for dirpath, _dirs, _files in os.walk(self.path):
            total += _read_keyed(os.path.join(dirpath, "memory.oom_control")).get("oom_kill", 0)
        return total

    def close(self) -> None:
        """Kill what the arena holds and remove its cgroups. A Ctrl-C meanwhile
        (10,000 jobs take seconds) is held until they are gone, then raised."""
        with _sigint_held():
            self._close()

    def _close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        # v1 frozen tasks act on SIGKILL only once thawed.
        for d in self._dirs:
            if os.path.exists(os.path.join(d, "freezer.state")):
                try:
                    _write(os.path.join(d, "freezer.state"), "THAWED")
                except OSError:
                    pass        # removed meanwhile
        # Children our processes forked live only in the arena's cgroups; a
        # fork bomb keeps adding some until its every forker is dead.
        self._kill_all(10.0)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream:
                    stream.close()
        for d in reversed(self._dirs):
            if d in self._shared:
                try:
                    os.rmdir(d)
                except OSError:
                    pass        # someone else's cgroups are in it, or it is gone
            else:
                _rmdir_retry(d)
        self._dirs.clear()
        self._shared.clear()
        if not self.layout.memory_v1:
            self._leave_leaf()

    def _kill_all(self, timeout_s: float) -> None:
        """SIGKILL what the arena's cgroups hold until they are empty. A pid
        is signalled through a pidfd opened before the cgroup listed it
        again, so that a pid reused meanwhile by someone else is not hit."""
        end = time.monotonic() + timeout_s
        procs = [os.path.join(d, "cgroup.procs") for d in self._dirs if d not in self._shared]
        while time.monotonic() < end:
            listed = {pid for f in procs for pid in _read_pids(f)}
            if not listed:
                return
            fds = {}
            for pid in listed:
                try:
                    fds[pid] = os.pidfd_open(pid)
                except OSError:
                    pass
            again = {pid for f in procs for pid in _read_pids(f)}
            for pid, fd in fds.items():
                try:
                    if pid in again:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.005)


@contextlib.contextmanager
def _sigint_held():
    """Hold SIGINT off (main thread only: the only one that may set
    handlers) for the block; raise KeyboardInterrupt after it if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    before = signal.signal(signal.SIGINT, lambda *_: came.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if came and before is signal.default_int_handler:
        raise KeyboardInterrupt
    if came and callable(before):
        before(signal.SIGINT, None)


def _wait_ready(p: subprocess.Popen) -> None:
    line = p.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"arena process {p.pid} did not start: {line!r}")


def _write(path: str, value: str, missing_ok: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


# The arena's own cgroups, which it removes itself: a file of one that is
# gone (FileNotFoundError, files.Vanished included) reads as empty.

def _read_words(path: str) -> list[str]:
    try:
        return read_text(path).split()
    except FileNotFoundError:
        return []


def _read_keyed(path: str) -> dict[str, int]:
    try:
        return read_keyed(path)
    except FileNotFoundError:
        return {}


def _read_pids(path: str) -> list[int]:
    try:
        return read_pids(path)
    except FileNotFoundError:
        return []


def _rmdir_retry(path: str) -> None:
    # A cgroup whose last task has just exited may still be busy for a few ms.
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    os.rmdir(path)
