"""The killer's bookkeeping on fixture trees, and process_mrelease's thread."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from oomkiller import cgroupfs as cgroupfs_mod
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.killer import Killer, Releaser
from oomkiller.procfs import Procfs


def wait(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENODEV])
def test_subtree_pids_passes_over_a_descendant_gone_while_read(proc_tree, v1_tree, monkeypatch, err):
    v1_tree.cgroup("j", (11,))
    v1_tree.cgroup("j/a", (12,))
    v1_tree.cgroup("j/b", (13,))
    real = cgroupfs_mod._read_pids

    def read_pids(path):
        if "/j/a/" in path:
            raise OSError(err, os.strerror(err))
        return real(path)
    monkeypatch.setattr(cgroupfs_mod, "_read_pids", read_pids)
    cg = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    assert cg.subtree_pids(str(v1_tree.mem / "j")) == [11, 13]
    with pytest.raises(OSError):
        cg.subtree_pids(str(v1_tree.mem / "j" / "a"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_releaser_works_off_the_calling_thread_and_closes_its_dups():
    gate = threading.Event()
    seen = []

    def syscall(fd):
        seen.append((threading.get_ident(), os.readlink(f"/proc/self/fd/{fd}")))
        gate.wait(5)
        return 0
    r = Releaser(depth=2, syscall=syscall)
    rfd, wfd = os.pipe()
    try:
        before = open_fds()
        t0 = time.monotonic()
        # the first is taken by the thread and blocks there; two wait in the
        # queue; the rest find it full and are dropped
        results = [r.submit(rfd)]
        wait(lambda: seen)
        results += [r.submit(rfd) for _ in range(4)]
        assert time.monotonic() - t0 < 1, "submit never waits on the syscall"
        assert results == [True, True, True, False, False]
        assert (r.queued, r.dropped) == (3, 2)
        gate.set()
        wait(r.idle)
        assert r.released == 3 and r.stats()["pending"] == 0
        assert open_fds() == before, "every dup was closed"
        assert {t for t, _ in seen} != {threading.get_ident()}
        assert {link for _, link in seen} == {os.readlink(f"/proc/self/fd/{rfd}")}
    finally:
        os.close(rfd)
        os.close(wfd)


def test_the_releaser_stops_asking_once_the_kernel_lacks_the_call():
    r = Releaser(syscall=lambda fd: errno.ENOSYS)
    rfd, wfd = os.pipe()
    try:
        assert r.submit(rfd)
        wait(r.idle)
        assert not r.available and not r.submit(rfd)
        assert Killer(Cgroupfs.__new__(Cgroupfs), dry_run=True, self_pid=0, timeout_usec=1,
                      releaser=r).mrelease_ok is False
    finally:
        os.close(rfd)
        os.close(wfd)
