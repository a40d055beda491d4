"""A cgroup domain on pure v2: a systemd slice with ``MemoryMax=``. The
``memory.high`` brake throttles a runaway service in it, the change in
``memory.events`` wakes the core at once (the timer is set to a minute), and
the service is killed before the kernel's OOM killer acts in the slice."""
from __future__ import annotations

import os

import pytest

from guestlib import (DAEMON_KILL_RESULT,
                      CGROUP_ROOT, MIB, Daemon, InfoProbe, main_pids, read_keyed, sh, start_hog, start_idle,
                      stop_test_units, wait_for)

# Not "oomkt-box.slice": systemd reads a dash in a slice name as nesting.
SLICE = "oomkt.slice"
SLICE_FILE = f"/run/systemd/system/{SLICE}"
LIMIT_BYTES = 256 * MIB
REDLINE_BYTES = 32 * MIB
# the brake: the domain's memory.high at its limit minus half the redline
HIGH_BYTES = LIMIT_BYTES - REDLINE_BYTES // 2
# The redline timer ticks at start and then once a minute: a 5 s period still
# woke one kill of the runaway first. What wakes the core here must be the
# kernel's notification.
TIMER_MS = 60_000


@pytest.fixture(scope="module")
def box():
    with open(SLICE_FILE, "w") as f:
        f.write(f"[Slice]\nMemoryMax={LIMIT_BYTES}\nMemorySwapMax=0\n")
    sh("systemctl", "daemon-reload")
    # systemd makes a slice's cgroup only once a unit is in it: a service
    # that must live, and stays out of the ranking.
    keeper = start_idle("oomkt-keeper", 16 * MIB, props=("ManagedOOMPreference=omit",), slice_=SLICE)
    yield os.path.join(CGROUP_ROOT, SLICE), keeper
    stop_test_units()
    sh("systemctl", "stop", SLICE, check=False)
    os.unlink(SLICE_FILE)
    sh("systemctl", "daemon-reload")


@pytest.fixture(scope="module")
def daemon(box):
    d = Daemon(OOMKILLER_DOMAIN=SLICE, OOMKILLER_REDLINE=str(REDLINE_BYTES), OOMKILLER_MEMORY_HIGH_BRAKE="true",
               OOMKILLER_SOURCES="memcg,timer", OOMKILLER_SLEEP_MS=str(TIMER_MS)).start()
    yield d
    d.stop()


def memory_high(box: str) -> str:
    with open(os.path.join(box, "memory.high")) as f:
        return f.read().strip()


def test_the_slice_is_the_domain_with_memcg_and_brake_live(daemon, box):
    box, _keeper = box
    info = daemon.info()
    assert info["domain"] == "/" + SLICE and info["domain_path"] == box
    assert info["sources"]["memcg"]["state"] == "live", info["sources"]
    assert info["sources"]["memcg"]["thresholds"] == "memory.events"
    assert info["sources"]["brake"]["state"] == "live", info["sources"]
    assert info["sources"]["brake"]["memory_high_bytes"] == HIGH_BYTES
    assert memory_high(box) == str(HIGH_BYTES)


def test_the_brake_holds_a_runaway_and_memory_events_wake_the_kill(daemon, box):
    box, keeper = box
    services = main_pids()
    events_before = read_keyed(os.path.join(box, "memory.events"))
    with InfoProbe() as probe:
        hog = start_hog("oomkt-boxed-hog", 4 * MIB, 0.0, slice_=SLICE)
        res = hog.wait_dead(120)
        recs = wait_for(daemon.kills, 10, "the decision record")
    events = read_keyed(os.path.join(box, "memory.events"))
    assert (res["Result"], res["ExecMainCode"], res["ExecMainStatus"]) == DAEMON_KILL_RESULT, res
    assert events["oom_kill"] == events_before["oom_kill"], "the kernel's OOM killer acted in the slice"
    assert events["high"] > events_before["high"], f"the brake never throttled: {events}"
    (rec,) = recs
    assert rec["domain"] == "/" + SLICE and rec["victim"]["job"] == "oomkt-boxed-hog.service"
    assert [a["method"] for a in rec["attempts"]] == ["cgroup.kill"]
    woke = {(e["source"], e["kind"]) for e in rec["woken_by"]}
    assert ("memcg", "memcg_events") in woke, rec["woken_by"]
    assert daemon.info()["sources"]["memcg"]["fired"] > 0
    assert keeper.active() and main_pids() == services and daemon.alive()
    assert not probe.failures and probe.slowest_s < 1.0, f"`info` took {probe.slowest_s:.2f} s"
    print(f"memory.events {events}; woken by {sorted(woke)}; "
          f"event to decision {rec['timings_usec']['event_to_decision']} us")


def test_the_brake_is_released_when_the_daemon_stops(daemon, box):
    box, _keeper = box
    assert memory_high(box) == str(HIGH_BYTES)
    daemon.stop()
    assert memory_high(box) == "max"
