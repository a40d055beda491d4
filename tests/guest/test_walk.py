"""A walk below the arm line takes the listing the arming keeps (made in the
background) and reads again only the jobs it may kill, in the deployed
daemon with every source: runaway services one after another, each killed
at the redline. What each walk took is in its record
(``timings_usec.listing_age``) and in ``info`` (``walk_listings``); the
two must agree, and a reused listing is never older than the daemon
allows. measure_walk.py measures the same kills."""
from __future__ import annotations

import json
import os

import pytest

from guestlib import Daemon, main_pids, stop_test_units
from measure_walk import kills
# the oldest listing a walk takes as it is, and once every job's usage is read
from oomkiller.daemon import LISTING_MAX_AGE_USEC, LISTING_REUSE_USEC, LISTING_SWEEP_MAX_USEC

RUNS = 5
ARMED = "armed kill in the kernel"      # a decision that finishes the armed kill: no walk of the jobs


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()        # the shipped defaults: every source
    yield d
    d.stop()
    stop_test_units()


def test_walks_take_the_arming_listing_and_say_so(daemon):
    services = main_pids()
    runs = kills(daemon, RUNS)
    results = os.environ.get("OOMK_VM_RESULTS")
    if results:
        with open(os.path.join(results, "guest-walk.json"), "w") as f:
            json.dump(runs, f, indent=2)
    assert all(r["result"] in ("oom-kill", "signal") and r["kernel_kills"] == 0 and "decision" in r
               for r in runs), runs
    walks = daemon.info()["walk_listings"]
    walked = [r for r in daemon.records() if r.get("event") == "oom_decision"
              and r.get("result") not in ("held", "termed") and r.get("decision") != ARMED]
    took = [r["timings_usec"] for r in walked if "listing_age" in r["timings_usec"]]
    ages = [t["listing_age"] for t in took]
    # Every walk is counted one way or the other, and a record says it
    # took a listing exactly when info counts it so.
    assert walked and walks["listed"] + walks["reused"] == len(walked), (walks, walked)
    assert walks["reused"] == len(ages), (walks, runs)
    assert all(0 < t["listing_age"] < (LISTING_SWEEP_MAX_USEC if "sweep" in t
                                       else max(LISTING_REUSE_USEC, LISTING_MAX_AGE_USEC)) for t in took), took
    # Reading again only the jobs it may kill: the two at the top, a few
    # more at most (those the events name, one that shrank).
    assert walks["read_again"] >= 2 * walks["reused"], walks
    # Below the arm line the arming lists every job about every 250 ms in
    # the background, so most walks find one; under TCG a listing of the
    # guest's jobs takes 60-950 ms, and a walk that comes while the latest
    # is too old lists every job itself (measure_walk.py: 2 to 3 walks in
    # 6 to 8). None reused at all is a walk that no longer takes one.
    assert ages, f"no walk took the arming's listing: {walks}"
    assert main_pids() == services and daemon.alive()
