"""Jobs are systemd services and scopes, ranked with systemd's
``ManagedOOMPreference=`` (the ``user.oomd_avoid`` / ``user.oomd_omit`` xattrs
it sets on a unit's cgroup) and oomd's ``user.oomd_prefer``, which systemd has
no setting for; the walk kills in that order, with ``cgroup.kill``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from guestlib import (DAEMON_KILL_RESULT,
                      CONTROL_SOCKET, MIB, Daemon, main_pids, sh, start_idle, stop_test_units, wait_for)
from oomkiller.config import Config
from oomkiller.control import request
from oomkiller_bench.arena import IDLE_SOURCE

PREFIX = "system.slice/"
# Sizes differ so the order inside a class is known: larger first.
EXPECTED = [  # job, class, killable
    ("oomkt-prefer.service", "prefer", True),
    ("oomkt-scope.scope", "normal", True),
    ("oomkt-plain.service", "normal", True),
    ("oomkt-avoid.service", "avoid", True),
    ("oomkt-omit.service", "protect", False),
]


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def jobs(daemon):
    units = {
        "prefer": start_idle("oomkt-prefer", 8 * MIB),
        "plain": start_idle("oomkt-plain", 24 * MIB),
        "avoid": start_idle("oomkt-avoid", 64 * MIB, props=("ManagedOOMPreference=avoid",)),
        "omit": start_idle("oomkt-omit", 80 * MIB, props=("ManagedOOMPreference=omit",)),
    }
    os.setxattr(units["prefer"].cgroup, "user.oomd_prefer", b"1")
    scope = subprocess.Popen(["systemd-run", "--quiet", "--scope", "--unit=oomkt-scope", "--",
                              sys.executable, "-c", IDLE_SOURCE, str(48 * MIB)], stdout=subprocess.PIPE, text=True)
    assert scope.stdout.readline().strip() == "ready"
    units["scope"] = scope
    yield units
    if scope.poll() is None:
        scope.kill()
    scope.wait()
    scope.stdout.close()
    stop_test_units()


def ranking() -> list[dict]:
    return request(CONTROL_SOCKET, "rank")["data"]["ranking"]


def test_managed_oom_preference_sets_the_xattrs(jobs):
    assert os.getxattr(jobs["avoid"].cgroup, "user.oomd_avoid") == b"1"
    assert os.getxattr(jobs["omit"].cgroup, "user.oomd_omit") == b"1"
    assert "user.oomd_avoid" not in os.listxattr(jobs["plain"].cgroup)


def test_the_daemon_ranks_services_and_scopes_by_class_then_size(jobs):
    ours = [c for c in ranking() if c["job"].startswith(PREFIX + "oomkt-")]
    assert [(c["job"][len(PREFIX):], c["class"], c["killable"]) for c in ours] == EXPECTED, ours
    by_job = {c["job"][len(PREFIX):]: c for c in ours}
    assert "prefer: xattr user.oomd_prefer" in by_job["oomkt-prefer.service"]["reasons"]
    assert "avoid: xattr user.oomd_avoid" in by_job["oomkt-avoid.service"]["reasons"]
    assert "protect: xattr user.oomd_omit" in by_job["oomkt-omit.service"]["reasons"]


def test_the_daemon_its_runner_and_pid1_are_never_candidates(jobs):
    by_job = {c["job"]: c for c in ranking()}
    # the shipped `jobs = ["auto"]` on systemd: services and scopes are jobs,
    # slices never
    assert PREFIX.rstrip("/") not in by_job
    assert not by_job[PREFIX + "oomkiller.service"]["killable"]
    assert "holds oomkiller itself" in by_job[PREFIX + "oomkiller.service"]["reasons"]
    assert not by_job["init.scope"]["killable"] and "holds PID 1" in by_job["init.scope"]["reasons"]
    # the scope this test tier runs in (deploy/vm/guest-run.sh: ManagedOOMPreference=omit)
    assert not by_job[PREFIX + "oomk-job.scope"]["killable"]
    assert "protect: xattr user.oomd_omit" in by_job[PREFIX + "oomk-job.scope"]["reasons"]


def test_lowmem_kills_down_the_walk_with_cgroup_kill(daemon, jobs):
    services = main_pids()
    assert daemon.ctl("lowmem")["ok"]
    res = jobs["prefer"].wait_dead(30)
    assert (res["Result"], res["ExecMainCode"], res["ExecMainStatus"]) == DAEMON_KILL_RESULT, res
    (rec,) = wait_for(daemon.kills, 10, "the first decision record")
    assert rec["decision"] == "simulated lowmem" and rec["victim"]["job"] == PREFIX + "oomkt-prefer.service"
    assert [a["method"] for a in rec["attempts"]] == ["cgroup.kill"]
    # the next walk, past the post-kill delay, takes the scope
    time.sleep(Config.post_kill_delay_ms / 1000 + 0.5)
    assert daemon.ctl("lowmem")["ok"]
    wait_for(lambda: len(daemon.kills()) == 2, 20, "the second kill")
    assert jobs["scope"].wait(timeout=30) == -signal.SIGKILL
    rec = daemon.kills()[1]
    assert rec["victim"]["job"] == PREFIX + "oomkt-scope.scope"
    assert [a["method"] for a in rec["attempts"]] == ["cgroup.kill"]
    for name in ("plain", "avoid", "omit"):
        assert jobs[name].active(), name
    assert main_pids() == services and daemon.alive()
    sh("systemctl", "reset-failed", check=False)
