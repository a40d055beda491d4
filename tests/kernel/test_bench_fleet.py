"""The many-jobs fleet for real: one live ``sleep`` in each job, charged
to the fleet's cgroup beside the arena, not to the job; and an arena that
removes the fleet's cgroup and kills every sleeper on close."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

from oomkiller.files import read_pids

from oomkiller_bench.arena import Arena
from oomkiller_bench.runner import WORKLOAD

JOBS = 64
# A sleeper exec'd in its job charged it about 180 KiB; moved in asleep, it
# charges nothing there. What a job may show: a page or two of slack.
MAX_JOB_CHARGE = 16 << 10


def usage(arena: Arena, path: str) -> int:
    name = "memory.usage_in_bytes" if arena.layout.memory_v1 else "memory.current"
    with open(os.path.join(path, name)) as f:
        return int(f.read())


def test_fleet_puts_one_sleeper_in_each_job_charged_beside_the_arena(tmp_path):
    name = f"oomk-test-{uuid.uuid4().hex[:8]}"
    with Arena(name, 256 << 20) as arena:
        jobs = [arena.job(f"idle-{i:04d}") for i in range(JOBS)]
        side = arena.side_job("fleet")
        assert os.path.dirname(side.path) == os.path.dirname(arena.path)
        assert not side.path.startswith(arena.path + "/")
        listing = tmp_path / "fleet.txt"
        listing.write_text("".join(" ".join(dict.fromkeys([j.path, j.v2_path])) + "\n" for j in jobs))
        p = arena.spawn(side, [sys.executable, "-S", WORKLOAD, "fleet", "--cgroups", str(listing)],
                        stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        sleepers = []
        for j in jobs:
            pids = read_pids(os.path.join(j.path, "cgroup.procs"))
            assert len(pids) == 1, (j.name, pids)
            if j.v2_path and j.v2_path != j.path:
                assert read_pids(os.path.join(j.v2_path, "cgroup.procs")) == pids
            with open(f"/proc/{pids[0]}/comm") as f:
                assert f.read().strip() == "sleep"
            assert usage(arena, j.path) <= MAX_JOB_CHARGE, j.name
            sleepers.append(pids[0])
        # what the sleepers touched starting is the fleet's: well over a page each
        assert usage(arena, side.path) > JOBS * (16 << 10)
        fds = [os.pidfd_open(pid) for pid in sleepers]
    try:
        for d in (arena.path, arena.v2_path, side.path, side.v2_path):
            assert not d or not os.path.exists(d), d
        # every sleeper is dead (a pidfd polls readable once its process exits)
        import select
        for fd in fds:
            assert select.select([fd], [], [], 5)[0] == [fd]
    finally:
        for fd in fds:
            os.close(fd)
