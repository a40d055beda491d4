"""The host domain (MemAvailable of MemTotal) on real guest-wide pressure: a
runaway service is killed with ``cgroup.kill`` once MemAvailable crosses the
redline, the rest of the system lives, and the daemon answers throughout."""
from __future__ import annotations

import pytest

from guestlib import (DAEMON_KILL_RESULT,
                      MIB, Daemon, InfoProbe, kernel_oom_kills, main_pids, start_hog, start_idle,
                      stop_test_units, wait_for)


@pytest.fixture(scope="module")
def daemon():
    # The redline path alone: the timer, ten times a second, and PSI.
    # test_race.py has the eBPF path and the pre-armed kill.
    d = Daemon(OOMKILLER_SOURCES="psi,timer", OOMKILLER_SLEEP_MS="100").start()
    yield d
    d.stop()
    stop_test_units()


def test_a_runaway_service_is_killed_when_memavailable_crosses_the_redline(daemon):
    services = main_pids()
    oom_before = kernel_oom_kills()
    bystander = start_idle("oomkt-bystander", 24 * MIB)
    with InfoProbe() as probe:
        # about 200 MB/s: MemAvailable falls through the redline within
        # seconds, but slowly enough for a 100 ms redline check.
        hog = start_hog("oomkt-runaway", 4 * MIB, 0.02)
        res = hog.wait_dead(180)
        recs = wait_for(daemon.kills, 10, "the decision record")
    assert (res["Result"], res["ExecMainCode"], res["ExecMainStatus"]) == DAEMON_KILL_RESULT, res
    assert kernel_oom_kills() == oom_before, "the kernel's OOM killer acted"
    (rec,) = recs
    assert rec["domain"] == "host" and rec["decision"] == "free below redline"
    assert rec["snapshot"]["free_bytes"] < rec["redline_bytes"] == daemon.info()["redline_bytes"]
    assert rec["victim"]["job"] == "system.slice/oomkt-runaway.service"
    assert [(a["job"], a["method"], a["ok"]) for a in rec["attempts"]] == [
        ("system.slice/oomkt-runaway.service", "cgroup.kill", True)]
    assert rec["freed_bytes"] > 100 * MIB
    assert bystander.active(), "a bystander service was killed"
    assert main_pids() == services, "a system service died or restarted"
    assert daemon.alive()
    assert not probe.failures and probe.latencies_s
    assert probe.slowest_s < 1.0, f"`info` took {probe.slowest_s:.2f} s under the pressure"
    print(f"free at the kill {rec['snapshot']['free_bytes'] >> 20} MiB < redline {rec['redline_bytes'] >> 20} MiB; "
          f"freed {rec['freed_bytes'] >> 20} MiB; kill took {rec['timings_usec']['kill']} us; "
          f"{len(probe.latencies_s)} info answers, slowest {probe.slowest_s * 1000:.0f} ms")
