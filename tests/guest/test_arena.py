"""oomkiller_bench.arena on pure cgroup v2: the process that makes an arena moves
into a leaf below its own (delegated) cgroup, which can then give the arena
the memory controller; the kernel tier's redline kill works in it; and the
last arena to close puts everything back."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from oomkiller_bench.arena import LEAF, Arena

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
from kproc import DaemonProc, wait_for  # noqa: E402

CGROUP_ROOT = "/sys/fs/cgroup"
MIB = 1 << 20


def own_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        return CGROUP_ROOT + f.read().strip().split("::", 1)[1]


def subtree_control(path: str) -> list[str]:
    with open(os.path.join(path, "cgroup.subtree_control")) as f:
        return f.read().split()


@pytest.fixture
def home():
    """Our own cgroup, and a check that it is as it was afterwards."""
    before = own_cgroup()
    assert os.path.basename(before) != LEAF
    yield before
    assert own_cgroup() == before
    assert "memory" not in subtree_control(before)
    assert [d for d in os.listdir(before) if os.path.isdir(os.path.join(before, d))] == []


def test_an_arena_moves_us_into_a_leaf_and_back(home):
    with Arena("oomkt-a", 64 * MIB) as a:
        assert a.path == a.v2_path == os.path.join(home, "oomkt-a")
        assert own_cgroup() == os.path.join(home, LEAF)
        assert "memory" in subtree_control(home)
        with open(os.path.join(a.path, "memory.max")) as f:
            assert int(f.read()) == 64 * MIB
        with Arena("oomkt-b", 32 * MIB) as b:
            assert b.path == os.path.join(home, "oomkt-b")
        # a is still open: the leaf stays
        assert own_cgroup() == os.path.join(home, LEAF)


def test_the_daemon_kills_the_growing_job_in_an_arena(home, tmp_path):
    with Arena("oomkt-race", 192 * MIB) as arena:
        svc, hog = arena.job("svc"), arena.job("hog")
        service = arena.spawn_idle(svc, 16 * MIB)
        d = DaemonProc(tmp_path, "--domain", arena.path, "--redline", "32M", "--sleep-ms", "100",
                       "--protect", "svc", "--sources", "memcg,timer")
        try:
            grower = arena.spawn_hog(hog, 4 * MIB, 0.05)
            assert grower.wait(timeout=120) == -signal.SIGKILL
            assert service.poll() is None, "the protected job was killed"
            assert arena.kernel_oom_kills() == 0, "the kernel's OOM killer acted first"
            wait_for(d.records, 10, "a decision record")
            (rec,) = [r for r in d.records() if r.get("result") == "killed"]
            assert rec["victim"]["job"] == "hog"
            assert [(a["method"], a["pids"]) for a in rec["attempts"]] == [("cgroup.kill", [grower.pid])]
        finally:
            assert d.stop() == 0
