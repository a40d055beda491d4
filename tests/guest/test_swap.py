"""A domain that can still swap is not short of memory.

A slice with ``MemoryMax=128M`` and ``MemorySwapMax=96M``, on a guest given
a swap file for this module: a job that holds 160 MiB fills the slice's
memory and puts the rest in swap. The kernel has room (the swap), so with
the shipped ``count_swap`` the daemon kills nothing; with it off, free
memory is the slice's memory alone, under the redline, and the job dies.
"""
from __future__ import annotations

import os

import pytest

from guestlib import (DAEMON_KILL_RESULT, CGROUP_ROOT, MIB, Daemon, kernel_oom_kills, read_keyed, sh, start_hog,
                      start_idle, stop_test_units, wait_for)

SLICE = "oomktswap.slice"
SLICE_FILE = f"/run/systemd/system/{SLICE}"
LIMIT_BYTES = 128 * MIB
SWAP_MAX_BYTES = 96 * MIB
SWAP_FILE = "/var/tmp/oomkt.swap"
SWAP_FILE_BYTES = 192 * MIB
HOLD_BYTES = 160 * MIB


def _swap_on() -> None:
    sh("fallocate", "-l", str(SWAP_FILE_BYTES), SWAP_FILE)
    os.chmod(SWAP_FILE, 0o600)
    sh("mkswap", SWAP_FILE)
    sh("swapon", SWAP_FILE)


def _swap_off() -> None:
    sh("swapoff", SWAP_FILE, check=False)
    try:
        os.unlink(SWAP_FILE)
    except FileNotFoundError:
        pass


@pytest.fixture(scope="module")
def box():
    _swap_on()
    with open(SLICE_FILE, "w") as f:
        f.write(f"[Slice]\nMemoryMax={LIMIT_BYTES}\nMemorySwapMax={SWAP_MAX_BYTES}\n")
    sh("systemctl", "daemon-reload")
    keeper = start_idle("oomkt-swap-keeper", 8 * MIB, props=("ManagedOOMPreference=omit",), slice_=SLICE)
    try:
        yield os.path.join(CGROUP_ROOT, SLICE), keeper
    finally:
        stop_test_units()
        sh("systemctl", "stop", SLICE, check=False)
        os.unlink(SLICE_FILE)
        sh("systemctl", "daemon-reload")
        _swap_off()


def _daemon(**env: str) -> Daemon:
    return Daemon(OOMKILLER_DOMAIN=SLICE, OOMKILLER_SOURCES="memcg,timer", OOMKILLER_SLEEP_MS="250", **env).start()


def _swapped(box: str) -> int:
    with open(os.path.join(box, "memory.swap.current")) as f:
        return int(f.read())


@pytest.fixture(scope="module")
def swapper(box):
    """The job: it allocates HOLD_BYTES, the slice's memory fills and the
    rest goes to swap, and it holds it. No daemon runs while it grows."""
    box_path, _keeper = box
    hog = start_hog("oomkt-swapper", 4 * MIB, 0.0, HOLD_BYTES, slice_=SLICE)
    wait_for(lambda: _swapped(box_path) >= HOLD_BYTES - LIMIT_BYTES + 8 * MIB, 180, "the job to swap 40 MiB", 0.25)
    return hog


def test_a_job_that_fits_in_memory_and_swap_is_not_killed(box, swapper):
    box, keeper = box
    ooms = kernel_oom_kills()
    d = _daemon()
    try:
        info = d.info()
        assert info["swap"]["counted"] and info["swap"]["total_bytes"] == SWAP_MAX_BYTES, info["swap"]
        # the timer looks four times a second: a dozen looks at a full memory
        wakes = info["wakes"]
        wait_for(lambda: d.info()["wakes"] >= wakes + 12, 60, "a dozen timer wakes", 0.25)
        info = d.info()
        assert swapper.active(), swapper.show("Result", "ExecMainCode", "ExecMainStatus")
        assert d.kills() == [], d.kills()
        assert kernel_oom_kills() == ooms and keeper.active() and d.alive()
        anon = read_keyed(os.path.join(box, "memory.stat"))["anon"]
        print(f"slice: {anon >> 20} MiB anon in memory, {_swapped(box) >> 20} MiB in swap; the daemon saw "
              f"{info['swap']['free_bytes'] >> 20} MiB of swap room; {info['wakes']} wakes, no kill")
    finally:
        d.stop()


def test_with_count_swap_off_free_memory_is_memory_alone(box, swapper):
    box, keeper = box
    ooms = kernel_oom_kills()
    d = _daemon(OOMKILLER_COUNT_SWAP="false")
    try:
        res = swapper.wait_dead(60)
        (rec,) = wait_for(d.kills, 10, "the decision record")
        assert (res["Result"], res["ExecMainCode"], res["ExecMainStatus"]) == DAEMON_KILL_RESULT, res
        assert rec["victim"]["job"] == swapper.name and rec["decision"] == "free below redline", rec
        assert d.info()["swap"] == {"count_swap": False, "counted": False, "free_bytes": 0, "total_bytes": 0}
        assert kernel_oom_kills() == ooms and keeper.active() and d.alive()
    finally:
        d.stop()
