"""A job's process frozen by its owner in a v1 freezer cgroup of theirs
that is not the job's own: it stays in the job's memory cgroup, with our
SIGKILL pending and its memory held, until it is thawed. Whoever was given
a v1 freezer cgroup may move their own processes into it and freeze it
(a v1 move asks only that the process be theirs). Before the killer thawed
where its victims are, such a kill sat out the whole kill_timeout_ms and
was reported a kill with the hog alive, every time it was chosen again."""
from __future__ import annotations

import os
import signal

import pytest

from kproc import wait_for
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.core.rank import Policy, rank
from oomkiller.killer import Killer

TIMEOUT_USEC = 5_000_000


def freeze(path: str, state: str) -> None:
    with open(os.path.join(path, "freezer.state"), "w") as f:
        f.write(state)
    wait_for(lambda: open(os.path.join(path, "freezer.state")).read().strip() == state, 10, f"{state} {path}")


@pytest.mark.parametrize("v2", [False, True], ids=["signals", "cgroup.kill"])
def test_a_process_frozen_in_a_freezer_cgroup_that_is_not_the_jobs_is_thawed_and_dies(arena, v2):
    if not arena.layout.memory_v1:
        pytest.skip("no v1 freezer on a pure v2 host")
    job = arena.job("hog", v2=v2, freezer=True)
    # the owner's freezer cgroup at another path than the job's
    theirs = arena.job("theirs", v2=False, freezer=True)
    hog = arena.spawn_idle(job, 16 << 20)
    bystander = arena.spawn_idle(theirs, 1 << 20)
    with open(os.path.join(theirs.freezer_path, "cgroup.procs"), "w") as f:
        f.write(str(hog.pid))
    freeze(theirs.freezer_path, "FROZEN")
    cg = Cgroupfs()
    assert [p.pid for p in cg.job(job.path, arena.path).procs] == [hog.pid], "still in the job's memory cgroup"
    (c,) = rank(cg.jobs(arena.path, ("hog",)), Policy(self_pid=os.getpid()), 256 << 20).killable()
    res = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=TIMEOUT_USEC).kill(c)
    assert (res.ok, res.error, res.emptied, res.thawed, res.left_pids) == (True, "", True, True, ())
    assert hog.wait(timeout=10) == -signal.SIGKILL
    # thawed, not killed: the other process there was no part of the job
    assert open(os.path.join(theirs.freezer_path, "freezer.state")).read().strip() == "THAWED"
    assert bystander.poll() is None
