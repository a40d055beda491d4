from oomkiller.core.decide import decide
import dataclasses

import pytest
from hypothesis import given, strategies as st

from oomkiller import config as config_mod

from oomkiller.core.detect import DIRTY_HOLD_PERMYRIAD, SIMULATED_SHORTFALL_BYTES, detect, waiting_on_disk
from oomkiller.model import MemorySnapshot


def snap(free):
    return MemorySnapshot("d", 1000, free, 1000 - free, 0, 0)


def test_detect_below_and_above_redline():
    d = detect(snap(300), 350, 420)
    assert (d.low, d.shortfall_bytes, d.delta_bytes, d.simulated) == (True, 50, -120, False)
    d = detect(snap(400), 350, None)
    assert (d.low, d.shortfall_bytes, d.delta_bytes) == (False, 0, 0)


def test_simulated_lowmem():
    d = detect(snap(900), 350, 880, simulate_lowmem=True)
    assert (d.low, d.simulated, d.shortfall_bytes, d.delta_bytes) == (True, True, SIMULATED_SHORTFALL_BYTES, 20)
    assert detect(snap(10), 350, None, simulate_lowmem=True).simulated is False


def test_decide_holds_after_a_kill():
    low = detect(snap(100), 350, None)
    assert decide(detect(snap(900), 350, None), 5, None, 10).act is False
    assert decide(low, 1_000_000, None, 500_000).act is True
    held = decide(low, 1_200_000, 1_000_000, 500_000)
    assert (held.act, held.reason) == (False, "post-kill delay: 300 ms left")
    assert decide(low, 1_600_000, 1_000_000, 500_000).act is True
    sim = detect(snap(900), 350, None, simulate_lowmem=True)
    assert decide(sim, 1_100_000, 1_000_000, 500_000).reason == "simulated lowmem"
    assert decide(low, 1_600_000, None, 0).reason == "free below redline"


def stalled(free, taken, stall):
    return MemorySnapshot("d", 1000, free, 1000 - free, 0, taken, stall)


def test_pressure_limit_catches_thrashing_with_free_memory():
    ref = stalled(900, 1_000_000, 5_000_000)
    now = stalled(900, 3_000_000, 6_300_000)       # 1.3 s stalled of 2 s: 65%
    d = detect(now, 350, 900, pressure_ref=ref, pressure_limit_permyriad=6000)
    assert (d.low, d.shortfall_bytes, d.reason) == (True, 0, "memory stall 65.0% >= 60%")
    assert not detect(now, 350, 900, pressure_ref=ref, pressure_limit_permyriad=7000).low
    assert not detect(now, 350, 900, pressure_ref=ref, pressure_limit_permyriad=0).low
    too_close = stalled(900, 1_400_000, 5_300_000)
    assert not detect(too_close, 350, 900, pressure_ref=ref, pressure_limit_permyriad=10).low
    unknown = stalled(900, 3_000_000, -1)
    assert not detect(unknown, 350, 900, pressure_ref=ref, pressure_limit_permyriad=10).low


def test_dirty_pages_hold_the_pressure_limit_but_not_the_redline():
    """A writer on a slow disk: its reclaim waits for writeback, which the
    kernel counts as memory stall; a kill would not shorten it."""
    ref = stalled(500, 1_000_000, 5_000_000)
    now = dataclasses.replace(stalled(500, 3_000_000, 6_900_000), file_lru_bytes=480)   # 95% stalled, half free
    d = detect(now, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000)
    assert (d.low, d.held) == (True, "")
    held = dataclasses.replace(now, dirty_bytes=125)     # an eighth of the domain
    d = detect(held, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000)
    assert not d.low
    assert d.held == "memory stall 95.0% >= 60%, held: 125 bytes dirty or under writeback of 1000"
    under = dataclasses.replace(now, dirty_bytes=124)
    assert detect(under, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000).low
    # no file LRU figure: nothing says the rest is file cache, so no hold
    assert detect(dataclasses.replace(held, file_lru_bytes=-1), 350, 500, pressure_ref=ref,
                  pressure_limit_permyriad=6000).low
    short = dataclasses.replace(held, free_bytes=300)
    assert detect(short, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000).reason == "free below redline"
    # under the limit: nothing to hold, nothing said
    calm = dataclasses.replace(held, full_stall_usec=5_100_000)
    assert detect(calm, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000).held == ""


def test_the_dirty_hold_follows_its_setting_and_0_never_holds():
    ref = stalled(500, 1_000_000, 5_000_000)
    now = dataclasses.replace(stalled(500, 3_000_000, 6_900_000), file_lru_bytes=480, dirty_bytes=200)
    for hold, low in ((0, True), (1250, False), (2000, False), (2001, True), (10000, True)):
        d = detect(now, 350, 500, pressure_ref=ref, pressure_limit_permyriad=6000, dirty_hold_permyriad=hold)
        assert (d.low, bool(d.held)) == (low, not low), hold
        assert waiting_on_disk(now, hold) == (not low)
    assert config_mod.load().pressure_dirty_hold_permyriad == 1250
    c = config_mod.load(cli={"pressure_dirty_hold": "20%"})
    assert c.pressure_dirty_hold_permyriad == 2000 and c.describe()["pressure_dirty_hold"] == "20%"
    assert config_mod.load(cli={"pressure_dirty_hold": "0"}).pressure_dirty_hold_permyriad == 0
    for zero in ("0%", "0.0%", 0):
        assert config_mod.load(cli={"pressure_dirty_hold": zero}).pressure_dirty_hold_permyriad == 0
    assert config_mod.load(cli={"pressure_dirty_hold": "5%"}).pressure_dirty_hold_permyriad == 500
    # a lower share holds the limit more often: under 5% (and what rounds
    # to 0 without being 0) would hold it beside any writing at all
    for bad, why in (("101%", "out of range"), ("-1%", "percentage"), ("12.5", "percentage"),
                     ("lots", "percentage"), ("1%", "5% is the least"), ("4.99%", "5% is the least"),
                     ("0.004%", "rounds to 0")):
        with pytest.raises(config_mod.ConfigError, match=f"pressure_dirty_hold.*{why}"):
            config_mod.load(cli={"pressure_dirty_hold": bad})


def test_dirty_pages_beside_a_freeze_hold_nothing():
    """The freeze: most of the domain is memory reclaim cannot take (a hog's
    anonymous pages, or what swap thrashes on); a writer's dirty pages
    beside it do not make the stall the disk's."""
    ref = stalled(150, 1_000_000, 5_000_000)
    hog = MemorySnapshot("d", 1000, 150, 850, 100, 3_000_000, 6_900_000, file_lru_bytes=300, dirty_bytes=200)
    assert not waiting_on_disk(hog)             # 550 of 1000 is not file cache
    assert detect(hog, 50, 150, pressure_ref=ref, pressure_limit_permyriad=6000).low
    # swap in use counts as not memory: 2000 of swap, 1500 of it used, in the domain's figures
    swapping = MemorySnapshot("d", 3000, 650, 2350, 100, 3_000_000, 6_900_000, file_lru_bytes=300,
                              swap_free_bytes=500, swap_total_bytes=2000, dirty_bytes=200)
    assert not waiting_on_disk(swapping)        # 850 - 300 = 550 of 1000
    assert waiting_on_disk(dataclasses.replace(swapping, used_bytes=2300))     # 500: half


@given(total=st.integers(0, 1 << 50), swap=st.integers(0, 1 << 40), used=st.integers(0, 1 << 50),
       lru=st.integers(-1, 1 << 50), dirty=st.integers(-5, 1 << 50),
       stall=st.integers(-1, 10 ** 7), span=st.integers(0, 10 ** 7))
def test_a_held_pressure_limit_never_fires_and_dirty_pages_only_ever_hold_it(total, swap, used, lru, dirty,
                                                                            stall, span):
    swap = min(swap, total)
    snap = MemorySnapshot("d", total, total, used, 0, 1 + span, stall, file_lru_bytes=lru,
                          swap_total_bytes=swap, swap_free_bytes=swap, dirty_bytes=dirty)
    ref = MemorySnapshot("d", total, total, 0, 0, 1, 0)
    fires = span >= 500_000 and stall > 0 and stall * 10000 // span >= 1
    d = detect(snap, 0, None, pressure_ref=ref, pressure_limit_permyriad=1)
    held = waiting_on_disk(snap)
    if held:
        # never an eighth less than the memory, nor with over half of it not file cache
        assert dirty * 8 >= total - swap and (used - lru) * 2 <= total - swap
    assert d.low == (fires and not held)
    assert bool(d.held) == (fires and held)
    # more dirty pages never lift a hold; none (unknown, or 0) never holds
    assert not held or waiting_on_disk(dataclasses.replace(snap, dirty_bytes=dirty + 1 + dirty // 3))
    assert not waiting_on_disk(dataclasses.replace(snap, dirty_bytes=-1))
