from oomkiller.decide import decide
from oomkiller.detect import SIMULATED_SHORTFALL_BYTES, detect
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
