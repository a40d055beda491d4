"""PSI triggers and memory-cgroup notifications on the real kernel, in arenas."""
from __future__ import annotations

import os

import select
import subprocess
import sys
import time

from kproc import wait_for

from oomkiller.sources.memcg import MemcgSource
from oomkiller.sources.psi import PsiSource

MIB = 1 << 20

# A file-backed working set larger than the arena: every pass over it evicts
# the pages the next pass needs, so the job spends its time in reclaim and
# refaults. (No swap here: anonymous memory cannot thrash.)
THRASHER = r"""
import os, random, sys, time
path, size = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        f.write(block)
    f.flush(); os.fsync(f.fileno())
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
print("ready", flush=True)
pages = size // 4096
while True:
    os.pread(fd, 4096, random.randrange(pages) * 4096)
"""


def wait_events(src, timeout_s: float) -> list:
    ep = select.epoll()
    for fd in src.fds():
        ep.register(fd, src.poll_events)
    got = []
    end = time.monotonic() + timeout_s
    try:
        while not got and time.monotonic() < end:
            for fd, _ in ep.poll(max(0.0, end - time.monotonic())):
                got += src.drain(fd)
    finally:
        ep.close()
    return got


def test_psi_trigger_fires_on_a_thrashing_arena(arena, tmp_path):
    job = arena.job("thrash")
    src = PsiSource([os.path.join(arena.v2_path, "memory.pressure")], stall_usec=100_000, window_usec=2_000_000)
    src.start()
    try:
        assert src.fds(), src.failed
        # nothing fires while the arena is idle
        assert wait_events(src, 2.5) == []
        work = tmp_path / "working-set"
        p = arena.spawn(job, [sys.executable, "-c", THRASHER, str(work), str(384 * MIB)],
                        stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        got = wait_events(src, 20)
        assert got, f"no PSI trigger in 20 s; {open(os.path.join(arena.v2_path, 'memory.pressure')).read()}"
        assert got[0].source == "psi" and got[0].kind == "psi_some"
        assert got[0].detail.endswith("memory.pressure")
        # the stall the trigger saw is really there, and the kernel did not OOM
        assert arena.kernel_oom_kills() == 0
        st = src.stats()
        assert st["fired"] >= 1 and st["trigger"].endswith("/2000000us")
    finally:
        src.close()


def test_memcg_threshold_fires_when_usage_crosses_it(arena):
    job = arena.job("grow")
    line = 96 * MIB
    src = MemcgSource(arena.path, v1=arena.layout.memory_v1, thresholds_bytes=[line])
    src.start()
    try:
        assert wait_events(src, 0.5) == []
        hog = arena.spawn_hog(job, chunk_bytes=8 * MIB, pause_s=0.02, cap_bytes=128 * MIB)
        got = wait_events(src, 10)
        assert got and got[0].source == "memcg"
        usage = int(open(os.path.join(arena.path, "memory.usage_in_bytes")).read())
        assert usage >= line - 8 * MIB
        assert hog.poll() is None
    finally:
        src.close()


def test_job_triggers_follow_the_job_list(arena):
    a, b = arena.job("a"), arena.job("b")
    src = PsiSource([os.path.join(arena.v2_path, "memory.pressure")])
    src.start()
    try:
        fixed = set(src.fds())
        pa, pb = os.path.join(a.v2_path, "memory.pressure"), os.path.join(b.v2_path, "memory.pressure")
        added, closed = src.track({pa, pb})
        assert len(added) == 2 and closed == [] and src.stats()["job_files"] == 2
        added2, closed2 = src.track({pb})
        assert added2 == [] and len(closed2) == 1 and set(src.fds()) == fixed | (set(added) - set(closed2))
        assert src.track({"/nonexistent/memory.pressure"}) == ([], [f for f in added if f not in closed2])
        assert set(src.fds()) == fixed
        # dropped triggers are closed by the closer thread, not the caller
        assert all(os.path.exists(f"/proc/self/fd/{fd}") for fd in added)
        src.release(added)
        wait_for(lambda: not any(os.path.exists(f"/proc/self/fd/{fd}") for fd in added), 5, "the closer")
    finally:
        src.close()


def test_job_triggers_know_when_cgroups_came_or_went(arena):
    """cgroupfs reports mkdir and rmdir of a cgroup to an inotify watch on
    its parent: the job list is read again only then."""
    a, b = arena.job("a"), arena.job("b")
    src = PsiSource([os.path.join(arena.v2_path, "memory.pressure")])
    src.start()
    made = []
    try:
        assert src.jobs_changed()               # not watched yet
        src.watch_jobs(arena.path, {a.path, b.path})
        assert src.stats()["watched_folders"] == 1 and not src.jobs_changed()
        inner = os.path.join(a.path, "inner")
        os.mkdir(inner)
        made.append(inner)
        assert not src.jobs_changed()           # inside a job: no new job
        new = os.path.join(arena.path, "new")
        os.mkdir(new)
        made.append(new)
        assert src.jobs_changed()
        src.watch_jobs(arena.path, {a.path, b.path, new})
        assert not src.jobs_changed()
        os.rmdir(made.pop())
        assert src.jobs_changed()
    finally:
        for d in reversed(made):
            os.rmdir(d)
        src.close()
