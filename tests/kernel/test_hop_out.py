"""A process that hops out of the job being killed, into another cgroup its
owner holds, while the kill runs: it gets our SIGKILL wherever it went,
and a kill is only reported done when the processes it listed are dead.

Whoever owns two cgroups (two scopes of a delegated ``user@UID.service``,
two child cgroups of a job) may move their processes between them at will,
as fast as a loop writes ``cgroup.procs``. ``cgroup.kill`` kills what the
cgroup holds at the write, and a subtree read lists what it holds at the
read: a process that left in between is in neither. Before the pidfd
signals below, 16 of 48 such kills by ``cgroup.kill`` were reported done
with the process alive, and 1 of 50 by signals ended as "emptied before
our signal" with it alive, the walk then going on to the next, innocent
job (50 runs each, 24 MiB hopper, this machine).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kproc import HOPPER

MIB = 1 << 20


RUNS = 20


def _hopper(arena, job, elsewhere):
    sides = [",".join(job.cgroups()), ",".join(elsewhere.cgroups())]
    p = arena.spawn(job, [sys.executable, "-c", HOPPER, str(24 * MIB), *sides], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup.kill", "v1-only"])
def test_a_process_hopping_out_of_the_job_during_the_kill_dies(arena, v2):
    from oomkiller.cgroupfs import Cgroupfs
    from oomkiller.core.rank import Policy, rank
    from oomkiller.killer import Killer

    cg = Cgroupfs()
    policy = Policy(self_pid=os.getpid())
    outcomes = []
    for run in range(RUNS):
        job, other = arena.job(f"hop{run}", v2=v2), arena.job(f"other{run}", v2=v2)
        hopper = _hopper(arena, job, other)
        quiet = arena.spawn_idle(arena.job(f"quiet{run}"), 4 * MIB)
        ranking = rank(cg.jobs(arena.path, (f"hop{run}", f"quiet{run}")), policy, 256 << 20)
        hop = next(c for c in ranking.candidates if c.job.name == f"hop{run}")
        if not hop.killable:
            hopper.kill()       # ranked while out of the job at every read: not this test's case
            hopper.wait()
            continue
        res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=2_000_000).kill(hop)
        try:
            rc = hopper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
            hopper.kill()
            hopper.wait()
        outcomes.append((run, res.ok, res.emptied, res.evaded_pids, res.error, rc))
        assert quiet.poll() is None
        quiet.kill()
        quiet.wait()
    assert len(outcomes) >= RUNS // 2, outcomes
    assert [o for o in outcomes if not (o[1] and o[2] and o[5] == -9)] == []
