"""The thrash detector on plain values: the freeze fires within the sustain
span, healthy loads and short bursts never do."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomkiller import config as config_mod
from oomkiller.config import ConfigError
from oomkiller.core import state as core
from oomkiller.core.detect import detect
from oomkiller.core.thrash import MIN_SEGMENT_USEC, STATS_LAG_USEC, ThrashLimits, ThrashState, observe
from oomkiller.core.timer import THRASH_EPISODE_TICK_USEC, THRASH_WATCH_TICK_USEC, next_tick_usec
from oomkiller.model import Importance, Job, MemorySnapshot, Proc

MIB = 1 << 20
TOTAL = 512 * MIB
LRU = 64 * MIB                  # 16384 pages
LIMITS = ThrashLimits(refault_permyriad_per_s=2000, stall_permyriad=1000, sustain_usec=1_000_000)
ARM_LINE = TOTAL // 5


class Feed:
    """Snapshots every ``step_usec`` with refaults at ``rate`` (share of the
    LRU per second) and some-stall at ``stall`` (share of time)."""

    def __init__(self, free=40 * MIB, step_usec=100_000, psi=True, lru=LRU, swap_total=0, swap_free=0,
                 activated=None):
        self.t, self.refaults, self.stall = 1_000_000, 5000, 77_000
        # the share of the refaults the kernel activates; None: unknown (v1)
        self.activated, self.activations, self.host = activated, 300, False
        self.free, self.step, self.psi, self.lru = free, step_usec, psi, lru
        self.swap_total, self.swap_free = swap_total, swap_free
        self.state = ThrashState()
        self.figs = []
        self.limits = LIMITS
        self.io_stall = -1      # cumulative I/O some stall; -1 until a tick gives one
        self.domain = "d"       # "host": the host domain
        self.majflt = -1.0      # cumulative major faults, likewise

    def tick(self, rate: float, stall: float, n: int = 1, flushed: bool = True, io: float | None = None,
             majflt: float | None = None):
        for _ in range(n):
            self.t += self.step
            if io is not None:
                self.io_stall = max(self.io_stall, 0) + int(io * self.step)
            if majflt is not None:
                self.majflt = max(self.majflt, 0) + majflt * self.step / 1e6
            n_ref = int(rate * self.lru / 4096 * self.step / 1e6)
            self.refaults += n_ref
            self.activations += int(n_ref * (self.activated or 0))
            self.stall += int(stall * self.step)
            shown = self.refaults if flushed else self.state.last.refault_pages
            snap = MemorySnapshot(self.domain, TOTAL + self.swap_total, self.free + self.swap_free, TOTAL - self.free, 0,
                                  self.t, -1, self.stall if self.psi else -1, shown, self.lru,
                                  self.swap_free, self.swap_total,
                                  activate_file_pages=-1 if self.activated is None else self.activations,
                                  activate_of_pages=-1 if self.activated is None else self.refaults,
                                  activations_host=self.host, io_some_stall_usec=self.io_stall,
                                  major_faults=int(self.majflt))
            self.state, f = observe(self.state, snap, self.limits, ARM_LINE)
            self.figs.append(f)
        return self.figs[-1]

    def states(self):
        return [f.state for f in self.figs]


def test_baseline_is_calm_and_first_sample_never_fires():
    f = Feed()
    assert f.tick(0, 0, 20).state == "calm"
    assert "thrashing" not in f.states()


def test_freeze_fires_after_the_sustain_span_and_says_why():
    f = Feed()
    f.tick(0, 0, 5)
    f.tick(14, 0.18, 10)                # onset at the first of these
    assert "thrashing" not in f.states()
    fig = f.tick(14, 0.18)
    assert fig.firing and fig.episode_usec == 1_000_000
    assert fig.refault_permyriad_per_s == pytest.approx(140_000, rel=0.01)
    assert fig.stall_permyriad == 1800
    assert fig.reason == ("thrashing: refaults 1400%/s of the file cache (12% of the domain) >= 20%/s "
                          "for 1000 ms, memory stall 18.0% >= 10%")
    assert f.state.fired == 1
    f.tick(14, 0.18, 3)
    assert f.state.fired == 1, "one episode counts once"


def test_the_squeeze_is_judged_in_memory_whatever_room_swap_has():
    """Swap with room (4 GiB, all free) beside a 512 MiB domain frozen in
    memory: the cache and free shares are of its memory, so it fires as
    without swap; counted over memory and swap, free would read 89% and
    the cache 1.5%, and it never would."""
    f = Feed(swap_total=4 << 30, swap_free=4 << 30)
    f.tick(0, 0, 5)
    f.tick(14, 0.18, 11)
    assert f.figs[-1].firing
    assert "(12% of the domain)" in f.figs[-1].reason and f.figs[-1].free_permyriad == 781


def test_a_burst_shorter_than_the_sustain_never_fires():
    f = Feed()
    f.tick(0, 0, 5)
    f.tick(14, 0.25, 8)                 # 0.8 s
    f.tick(0, 0, 40)
    assert "thrashing" not in f.states()
    assert f.figs[-1].state == "calm"


def test_a_burst_the_counter_shows_late_never_fires():
    """The refault counter stands still while the burst runs (a memcg flush
    delay) and shows it all in one jump later; PSI does not lag, so the stall
    over the last second says the burst is over."""
    f = Feed()
    f.tick(0, 0, 5)
    f.tick(14, 0.25, 1)                 # the onset is seen
    f.tick(14, 0.25, 6, flushed=False)
    f.tick(0, 0, 8, flushed=False)
    f.tick(0, 0, 1)                     # the flush: everything at once
    f.tick(0.3, 0, 3)                   # a trickle above the limit after it
    assert "thrashing" not in f.states()


def test_a_stream_that_refaults_but_does_not_stall_never_fires():
    """cat of a file twice the arena's size in a loop: 800-1000 %/s, up to
    8% stalled, its cache filling the arena."""
    f = Feed(free=250 * MIB, lru=250 * MIB)
    f.tick(9.5, 0.08, 100)
    assert "thrashing" not in f.states() and f.figs[-1].state == "episode"


def test_refaults_none_of_which_the_kernel_activates_are_a_stream():
    """A stream beside a held heap at host level: refaults over the limit,
    the cache under half, free under half, and kswapd's reclaim stalling
    the host 11% of a second; but not one refault activated (a stream
    refaults each page a whole file later, beyond the working set). The
    freeze's refaults are 1.8-23% activated."""
    stream = Feed(activated=0.0)
    stream.tick(0, 0, 5)
    fig = stream.tick(14, 0.11, 30)
    assert "thrashing" not in stream.states()
    assert fig.state == "episode" and fig.activated_permyriad == 0 and fig.stall_permyriad == 1100
    freeze = Feed(activated=0.02)
    freeze.tick(0, 0, 5)
    freeze.tick(14, 0.18, 11)
    fig = freeze.figs[-1]
    assert fig.firing and fig.activated_permyriad == pytest.approx(200, abs=2)
    assert fig.reason == ("thrashing: refaults 1400%/s of the file cache (12% of the domain; 2.0% of them activated)"
                          " >= 20%/s for 1000 ms, memory stall 18.0% >= 10%")
    # A segment of activated refaults late in the stream's long episode (hot
    # pages of other programs evicted once): judged over the sustain span,
    # 0.5% in one segment of ten is 0.05%, at 0.7%/s of the cache.
    stream.activated = 0.005
    stream.tick(14, 0.15)
    stream.activated = 0.0
    stream.tick(14, 0.15, 9)
    assert "thrashing" not in stream.states()
    # under the share, and the activated ones at 0.7%/s of the cache, under
    # that rate too: held
    low = Feed(activated=0.0005)
    low.tick(0, 0, 5)
    low.tick(14, 0.18, 20)
    assert "thrashing" not in low.states()
    # The freeze's first seconds: the hog's fill takes free memory from 50%
    # to 8% of the domain in half a second, and the pages it evicted first
    # come back from beyond the shrinking working set, none activated for
    # up to 2 s. Memory taken since a sustain span before the episode
    # stands in for the share, for the episode's first three spans.
    filling = Feed(activated=0.0, free=TOTAL // 2)
    filling.tick(0, 0, 5)
    for _ in range(5):
        filling.free -= TOTAL * 84 // 1000
        filling.tick(14, 0.3)
    filling.tick(14, 0.3, 6)
    assert filling.figs[-1].firing and filling.figs[-1].activated_permyriad == 0
    assert "(12% of the domain; 0.0% of them activated, free memory fell 42% of the domain)" in \
        filling.figs[-1].reason
    # ... but not after the sustain span and the flush delay: a heap filled
    # before a stream's episode leaves the stall alone to hold the detector
    # back only that long
    late = Feed(activated=0.0, free=TOTAL // 2)
    late.tick(0, 0, 5)
    for _ in range(5):
        late.free -= TOTAL * 84 // 1000
        late.tick(14, 0.05)
    late.tick(14, 0.05, 32)                     # stall under the limit for 3.2 s
    late.tick(14, 0.3, 15)
    assert "thrashing" not in late.states()
    # A freeze that begins while a stream's episode runs (a backup, or a
    # user's decoy: 99.8% of the refaults, none activated): the fill is seen
    # however old the episode is.
    decoy = Feed(activated=0.0, free=TOTAL // 2)
    decoy.tick(0, 0, 5)
    decoy.tick(70, 0.05, 100)                   # 10 s of the decoy's episode
    assert "thrashing" not in decoy.states()
    for _ in range(5):
        decoy.free -= TOTAL * 84 // 1000
        decoy.tick(70, 0.3)
    decoy.tick(70, 0.3, 6)
    assert decoy.figs[-1].firing and "free memory fell 42% of the domain" in decoy.figs[-1].reason
    # A build writing new files into a domain it had emptied: free memory
    # falls as fast, but into file cache (1% of the domain to 13%), and its
    # re-reads of what its own writes evicted refault, none activated
    build = Feed(activated=0.0, free=TOTAL * 81 // 100, lru=TOTAL // 100)
    build.tick(0, 0, 5)
    for _ in range(5):
        build.free -= TOTAL * 7 // 100
        build.lru += TOTAL * 24 // 1000
        build.tick(14, 0.3)
    build.tick(14, 0.3, 6)
    assert "thrashing" not in build.states() and build.figs[-1].state == "episode"
    slow = Feed(activated=0.0, free=TOTAL // 2)
    slow.tick(0, 0, 5)
    for _ in range(40):
        slow.free -= TOTAL * 1 // 1000          # 1% a second: a held heap's slow growth
        slow.tick(14, 0.3)
    assert "thrashing" not in slow.states()
    # Someone streams a big file beside the freeze: 99% of the refaults are
    # the stream's, none activated, so the freeze's 15% reads 0.2%. The
    # activated refaults alone still come at 14%/s of the cache.
    diluted = Feed(activated=0.002)
    diluted.tick(0, 0, 5)
    diluted.tick(70, 0.18, 10)
    fig = diluted.tick(70, 0.18)
    assert fig.firing and fig.activated_permyriad == pytest.approx(20, abs=1)
    assert "0.2% of them activated, 14%/s of the file cache)" in fig.reason, fig.reason
    # no activation counter at all: the rule is left out
    v1 = Feed()
    v1.tick(0, 0, 5)
    assert v1.tick(14, 0.18, 11).firing and v1.figs[-1].activated_permyriad is None
    # the host's activations over a v1 domain's cache are no rate of the
    # domain's: there the share alone (0.1% here, at 1.4%/s) decides
    v1 = Feed(activated=0.001)
    v1.host = True
    v1.tick(0, 0, 5)
    v1.tick(14, 0.18, 20)
    assert "thrashing" not in v1.states()
    # an activation counter that went back (the domain made again between
    # two samples) starts over, as the refault counter's does
    again = Feed(activated=0.02)
    again.tick(0, 0, 5)
    again.tick(14, 0.18, 8)
    again.activations = 0
    again.tick(14, 0.18)
    assert again.figs[-1].state == "calm" and again.state.onset is None
    # a v1 domain judged on the host's share says so
    v1 = Feed(activated=0.02)
    v1.host = True
    v1.tick(0, 0, 5)
    fig = v1.tick(14, 0.18, 11)
    assert fig.firing and fig.activated_host and "2.0% of the host's activated" in fig.reason


def test_on_slow_storage_activated_refaults_carry_the_episode_under_the_refault_limit():
    """The guest's freeze with MGLRU on, its disk emulated: the service could
    read its pages back only as fast as the disk gave them, 4-25%/s of its
    cache (noisy, segment to segment), under the 20%/s limit, but 20-50% of
    them activated, with the memory stall at 13-15%. Under the old rule each
    episode ended at the next slower segment and the freeze was never ended
    in 40 s."""
    lru = 100 * MIB                     # 25,600 pages: the guest's cache while frozen (18% of 594 MiB)
    f = Feed(activated=0.3, lru=lru)
    f.tick(0, 0, 5)
    for i in range(11):
        # 1.8-6%/s of the cache activated; the first segment (6%/s, 154
        # pages) too few for a rate: the episode starts at the second
        f.tick((0.06, 0.2, 0.1, 0.15)[i % 4], 0.14)
    assert "thrashing" not in f.states()
    fig = f.tick(0.12, 0.14)
    assert fig.firing and fig.episode_usec == 1_000_000
    assert fig.activated_rate_permyriad_per_s == pytest.approx(360, abs=5)
    assert fig.reason == ("thrashing: refaults 12%/s of the file cache (20% of the domain; 29.8% of them activated, "
                          "3.7%/s of the file cache >= 1%/s) for 1000 ms, memory stall 14.0% >= 10%"), fig.reason
    # In a smaller cache (64 MiB) 12%/s is under 256 pages a sample: each
    # segment spans two samples, and it fires a sample later.
    small = Feed(activated=0.3)
    small.tick(0, 0, 5)
    small.tick(0.12, 0.14, 14)
    fired = small.states().index("thrashing") - 5
    assert fired in (11, 12), small.states()
    assert small.figs[5 + fired].episode_usec == 1_000_000
    # the same without the stall: nobody suffers, no kill
    calm = Feed(activated=0.3, lru=lru)
    calm.tick(0, 0, 5)
    calm.tick(0.12, 0.05, 30)
    assert "thrashing" not in calm.states() and calm.figs[-1].state == "episode"
    # nor a burst of it shorter than the sustain span
    burst = Feed(activated=0.3, lru=lru)
    burst.tick(0, 0, 5)
    burst.tick(0.12, 0.3, 8)
    burst.tick(0, 0, 30)
    assert "thrashing" not in burst.states()
    # A stream on the same slow disk: refaults at 12%/s, the stall at 30%,
    # none activated: never an episode.
    stream = Feed(activated=0.0, lru=lru)
    stream.tick(0, 0, 5)
    stream.tick(0.12, 0.3, 50)
    assert set(stream.states()) == {"calm"}
    # Activated refaults under 1%/s of the cache (5% of 12%/s): calm.
    low = Feed(activated=0.05, lru=lru)
    low.tick(0, 0, 5)
    low.tick(0.12, 0.3, 50)
    assert set(low.states()) == {"calm"}
    # A v1 domain judged on the host's share: the host's activations over
    # the domain's cache are no rate of the domain's, so under the refault
    # limit nothing starts.
    v1 = Feed(activated=0.3, lru=lru)
    v1.host = True
    v1.tick(0, 0, 5)
    v1.tick(0.12, 0.3, 50)
    assert set(v1.states()) == {"calm"}
    assert v1.figs[-1].activated_rate_permyriad_per_s is None


def test_one_activated_segment_at_the_end_of_a_streams_episode_does_not_fire():
    """A stream's long episode (refaults over the limit, none activated,
    the stall over its limit as at host level), then one segment under the
    refault limit whose refaults are activated: the episode goes on, but
    over its sustain span the activated refaults are far under 1%/s."""
    f = Feed(activated=0.0, lru=100 * MIB)
    f.tick(0, 0, 5)
    f.tick(14, 0.15, 30)
    assert f.figs[-1].state == "episode"
    f.activated = 0.5
    fig = f.tick(0.12, 0.15)
    assert fig.state == "episode" and fig.activated_rate_permyriad_per_s == pytest.approx(600, abs=5)
    f.activated = 0.0
    f.tick(14, 0.15, 5)
    assert "thrashing" not in f.states()


def test_two_short_bursts_with_a_trickle_between_do_not_add_up():
    """A burst of 0.2 s, a trickle of refaults for 1.7 s (too few pages to
    end a segment), a burst of 0.1 s: the segment that ends at the second
    burst spans the quiet gap, in which the domain did not stall, so the
    episode starts over there rather than carrying the first burst's
    onset. By the refault rate and by the activated path alike."""
    for activated, rate_b in ((0.3, 0.6), (None, 14)):
        f = Feed(activated=activated)
        f.tick(0, 0, 5)
        f.tick(14, 0.5, 2)
        f.tick(0.005, 0.0, 17)
        f.tick(rate_b, 1.0, 1)
        f.tick(rate_b, 1.0, 3)
        assert "thrashing" not in f.states(), (activated, f.figs[-1].reason)
    # ... while a freeze whose counter shows late stalls through the gap
    # and fires as before
    g = Feed(activated=0.3)
    g.tick(0, 0, 5)
    g.tick(14, 0.3, 2)
    g.tick(0.005, 0.3, 8)
    g.tick(14, 0.3, 1)
    assert g.figs[-1].firing


def test_activations_count_no_more_than_the_refaults():
    """MGLRU counts activations that are not refaults: a trickle of
    refaults (0.6%/s of the cache) with three times as many activations
    is not 1.8%/s of activated refaults."""
    f = Feed(activated=3.0, lru=100 * MIB)
    f.tick(0, 0, 5)
    f.tick(0.006, 0.12, 40)
    assert "thrashing" not in f.states()


def test_the_activated_path_wants_memory_short_too():
    """A user re-reading a file a little too big for their share of the
    cache: every refault activated, 3%/s of the cache, stalled on them;
    with 40% of the domain free that is not a freeze (with 8% free it
    is)."""
    roomy = Feed(activated=1.0, lru=100 * MIB, free=TOTAL * 40 // 100)
    roomy.tick(0, 0, 5)
    roomy.tick(0.03, 0.12, 30)
    assert "thrashing" not in roomy.states()
    short = Feed(activated=1.0, lru=100 * MIB)
    short.tick(0, 0, 5)
    short.tick(0.03, 0.12, 30)
    assert "thrashing" in short.states()


def test_the_activated_limit_follows_the_refault_limit_with_a_floor():
    from oomkiller.core.thrash import activated_limit
    assert activated_limit(LIMITS) == 100
    assert activated_limit(ThrashLimits(refault_permyriad_per_s=10_000)) == 500
    assert activated_limit(ThrashLimits(refault_permyriad_per_s=20)) == 10


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.199), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=60))
def test_under_the_refault_limit_only_a_second_of_activated_refaults_fires(segments):
    """Refaults always under the 20%/s limit, each 100 ms segment with any
    activated share and stall: a firing always has the activated refaults
    of its whole sustain span at 1%/s of the cache or more, and the stall
    at its limit; and without activations nothing ever starts."""
    for host in (False, True):
        f = Feed(activated=0.0, lru=100 * MIB)
        f.host = host
        f.tick(0, 0, 5)
        marks = []                  # (t, activations) at each sample
        for rate, share, stall in segments:
            f.activated = share
            fig = f.tick(rate, stall)
            marks.append((f.t, f.activations))
            if fig.firing:
                assert not host, "a v1 domain's activations are the host's: no rate of its own"
                t0, a0 = next(m for m in marks if f.t - m[0] <= 1_000_000)
                back = [m for m in marks if f.t - m[0] >= 1_000_000]
                if back:
                    t0, a0 = back[-1]
                rate_pm = (f.activations - a0) * 10_000 * 1_000_000 // ((f.t - t0) * (100 * MIB // 4096))
                assert rate_pm >= 95, (rate_pm, fig.reason)
                assert fig.stall_permyriad >= 1000
        if all(share == 0 for _, share, _ in segments):
            assert set(f.states()) == {"calm"}


def test_a_cache_that_fills_the_domain_is_not_squeezed():
    """Stalled and refaulting, but the cache holds 60% of the domain: its
    readers' own stream, nothing to kill for."""
    f = Feed(lru=TOTAL * 6 // 10)
    f.tick(0, 0, 2)
    f.tick(14, 0.3, 30)
    assert "thrashing" not in f.states() and f.figs[-1].state == "episode"
    g = Feed(lru=TOTAL // 2)
    g.tick(0, 0, 2)
    g.tick(14, 0.3, 11)
    assert g.figs[-1].firing


def test_a_small_cache_in_a_mostly_free_domain_is_not_squeezed():
    """A build-like load just deleted its files: the cache is 1% of the
    domain, 81% is free, and refaults from before the deletion over that
    small cache read hundreds of percent a second, with some stall."""
    f = Feed(free=TOTAL * 81 // 100, lru=TOTAL // 100)
    f.tick(0, 0, 2)
    f.tick(5.4, 0.11, 30)
    assert "thrashing" not in f.states() and f.figs[-1].state == "episode"
    g = Feed(free=TOTAL // 2, lru=TOTAL // 100)
    g.tick(0, 0, 2)
    g.tick(5.4, 0.11, 11)
    assert g.figs[-1].firing


def test_counter_standing_still_does_not_end_the_episode_within_the_flush_delay():
    f = Feed()
    f.tick(0, 0, 2)
    f.tick(14, 0.2, 5)
    f.tick(0, 0, 10, flushed=False)     # 1 s with no movement and no stall: unknown, not over
    assert f.figs[-1].state == "episode" and "thrashing" not in f.states()
    # the counter catches up: the domain did not stall through the gap, so
    # the episode starts over there
    caught = f.tick(14, 0.2)
    assert caught.state == "episode" and caught.episode_usec == 0
    g = Feed()
    g.tick(0, 0, 2)
    g.tick(14, 0.2, 5)
    g.tick(0, 0, STATS_LAG_USEC // g.step + 1, flushed=False)
    assert g.figs[-1].state == "calm"


def test_a_still_counter_fires_while_psi_shows_the_stall_go_on():
    # a v1 counter stood still 0.45-1 s at a time in the arena's freeze: the
    # episode fires when it has lasted the sustain span if the domain is
    # stalled since the previous sample, not at the counter's next move
    f = Feed()
    f.tick(0, 0, 2)
    f.tick(14, 0.2, 5)
    f.tick(14, 0.25, 5, flushed=False)
    assert "thrashing" not in f.states()
    fired = f.tick(14, 0.25, 1, flushed=False)
    assert fired.firing and fired.episode_usec == 1_000_000
    assert (">= 20%/s for 1000 ms (until 600 ms ago; the counter still since, the domain stalled 25% of "
            "that time)") in fired.reason
    # not for the host domain: /proc/vmstat does not lag, its stall is anyone's
    h = Feed()
    h.domain = "host"
    h.tick(0, 0, 2)
    h.tick(14, 0.2, 5)
    h.tick(14, 0.25, 8, flushed=False)
    assert "thrashing" not in h.states()
    # a burst that ended: the stall over the sustain span is still over the
    # limit (60% for its half second), but nothing stalls since: no kill
    b = Feed()
    b.tick(0, 0, 2)
    b.tick(14, 0.6, 5)
    b.tick(0, 0, 15, flushed=False)
    assert "thrashing" not in b.states()
    assert any(x.episode_usec >= LIMITS.sustain_usec and x.stall_permyriad >= LIMITS.stall_permyriad for x in b.figs)
    # ... nor a counter still for longer than the flush delay
    c = Feed()
    c.tick(0, 0, 2)
    c.tick(14, 0.2, 5)
    c.tick(0, 0.05, STATS_LAG_USEC // c.step, flushed=False)
    assert "thrashing" not in c.states()
    # ... nor a burst that ended, then a stall blip at the due sample: the
    # domain must have stalled all the time the counter stood still
    e = Feed()
    e.tick(0, 0, 2)
    e.tick(14, 0.6, 3)
    e.tick(0, 0, 7)
    assert e.tick(0, 0.3).episode_usec == 1_000_000 and "thrashing" not in e.states()
    # ... nor one segment of a stream (none activated) and then a stall with
    # no refault at all: the sustain span must show enough refaults for the
    # working-set share to be judged
    w = Feed(activated=0.0)
    w.tick(0, 0, 2)
    w.tick(14, 0.3)
    w.tick(0, 0.12, 12)
    assert "thrashing" not in w.states()
    # ... nor an episode that the I/O path carried, then one segment over
    # the limit it held, then a still counter with memory stall
    io = Feed(activated=0.05)
    io.tick(0, 0, 5, io=0.0, majflt=0)
    io.tick(0.16, 0.01, 4, io=0.6, majflt=20)
    io.tick(0.5, 0.2, 1, io=0.6, majflt=20)
    io.tick(0, 0.2, 10, io=0.2, majflt=0)
    assert "episode" in io.states() and "thrashing" not in io.states()
    # ... nor an episode carried under the refault limit (slow storage),
    # which fires only on a counter that moved
    d = Feed(activated=0.5, free=TOTAL // 10)
    d.tick(0, 0, 2)
    d.tick(0.1, 0.3, 5)
    d.tick(0.1, 0.3, 10, flushed=False)
    assert "episode" in d.states() and "thrashing" not in d.states()
    assert d.tick(0.1, 0.3).firing      # the counter moved


def test_a_slower_segment_ends_the_episode():
    f = Feed()
    f.tick(0, 0, 2)
    f.tick(14, 0.2, 8)
    f.tick(0.1, 0.2, 1)                 # moved, by 163 pages: too few for a rate, says nothing
    assert f.figs[-1].state == "episode"
    f.tick(0.1, 0.2, 1)                 # 326 pages since the last segment, at 10%/s: under 20%/s
    assert f.figs[-1].state == "calm"
    f.tick(14, 0.2, 10)
    assert "thrashing" not in f.states()
    assert f.tick(14, 0.2).firing


def test_without_psi_free_memory_must_be_under_the_arm_line():
    f = Feed(psi=False, free=200 * MIB)
    f.tick(0, 0, 2)
    f.tick(14, 0, 30)
    assert "thrashing" not in f.states()
    g = Feed(psi=False, free=40 * MIB)
    g.tick(0, 0, 2)
    g.tick(14, 0, 11)
    assert g.figs[-1].firing and "no stall figures, free 7.8% below the arm line" in g.figs[-1].reason


def test_a_slow_first_tick_does_not_count_as_sustained():
    """A 1 s tick that sees a 0.3 s burst: the episode starts at that tick,
    not the one before, so it must go on for a sustain span after it."""
    f = Feed(step_usec=1_000_000)
    f.tick(0, 0, 2)
    f.tick(4, 0.1, 1)
    assert f.figs[-1].state == "episode" and f.figs[-1].episode_usec == 0
    f.step = 100_000
    f.tick(0, 0, 30)
    assert "thrashing" not in f.states()


def test_unknown_counters_and_off():
    snap = MemorySnapshot("d", TOTAL, 1, 1, 0, 5, -1, -1, -1, -1)
    st, fig = observe(ThrashState(fired=3), snap, LIMITS, ARM_LINE)
    assert fig.state == "unknown" and st.fired == 3
    st, fig = observe(ThrashState(), snap, dataclasses.replace(LIMITS, refault_permyriad_per_s=0), ARM_LINE)
    assert fig.state == "off"


def test_counters_that_go_back_start_over():
    f = Feed()
    f.tick(14, 0.2, 5)
    f.refaults = 0
    assert f.tick(14, 0.2).state == "calm"


# -- in the core's step -------------------------------------------------------

def job(name, charged, inode):
    return Job(name, f"/sys/fs/cgroup/memory/a/{name}", inode, procs=(Proc(inode, name, charged, 0, "S", 1),),
               charged_bytes=charged, v2_path=f"/sys/fs/cgroup/unified/a/{name}", v2_id=inode)


def test_step_walks_to_the_cause_not_the_sufferer():
    """The freeze's hog holds 435 MiB of anonymous memory; the service's
    working set is file cache, which its score leaves out."""
    conf = config_mod.load(cli={"domain": "/a"})
    jobs = [job("svc", 3 * MIB, 11), job("hog", 435 * MIB, 12)]
    st = core.CoreState()
    f = Feed()
    walk = None
    for i in range(40):
        rate, stall = (0, 0) if i < 5 else (14, 0.18)
        f.t += 100_000
        f.refaults += int(rate * LRU / 4096 / 10)
        f.stall += int(stall * 100_000)
        snap = MemorySnapshot("a", TOTAL, 40 * MIB, TOTAL - 40 * MIB, 0, f.t, -1, f.stall, f.refaults, LRU)
        wake = core.Wake(f.t, snap)
        res = core.step(st, conf, wake, None, 1)
        if res.need in (core.Need.JOBS, core.Need.WALK_JOBS):
            res = core.step(st, conf, wake, jobs, 1)
        st = res.state
        walk = next((a for a in res.actions if isinstance(a, core.Walk)), None)
        if walk:
            break
    assert walk is not None and i == 15, i
    assert walk.reason.startswith("thrashing: refaults") and walk.recheck_redline_bytes is None
    # the kernel (or the job itself) may end the hog before our signal:
    # the walk must not go on to the service, which only suffered
    assert walk.past_gone is False
    assert [c.job.name for c in walk.ranking.killable()] == ["hog", "svc"]
    assert walk.ranking.candidates[0].importance is Importance.NORMAL
    assert st.thrash.fired == 1
    st2, _ = core.walked(st, f.t, [])
    assert st2.thrash.onset is not None, "nothing killed: the episode goes on"


def test_detect_puts_the_redline_first():
    snap = MemorySnapshot("a", TOTAL, 10, TOTAL - 10, 0, 5)
    from oomkiller.core.thrash import ThrashFigures
    d = detect(snap, 100, None, thrash=ThrashFigures("thrashing", reason="thrashing: x"))
    assert d.reason == "free below redline"
    d = detect(dataclasses.replace(snap, free_bytes=1000), 100, None,
               thrash=ThrashFigures("thrashing", reason="thrashing: x"))
    assert (d.low, d.reason, d.shortfall_bytes) == (True, "thrashing: x", 0)


def test_the_timer_samples_faster_in_an_episode_and_under_the_arm_line():
    conf = config_mod.load()
    calm = MemorySnapshot("a", TOTAL, 400 * MIB, 0, 0, 5, -1, 0, 0, LRU)
    low = dataclasses.replace(calm, free_bytes=50 * MIB)
    assert next_tick_usec((calm,), conf, running=True, can_arm=False) == 1_000_000
    assert next_tick_usec((low,), conf, running=True, can_arm=False) == THRASH_WATCH_TICK_USEC
    assert next_tick_usec((calm,), conf, running=True, can_arm=False, thrash_episode=True) == THRASH_EPISODE_TICK_USEC
    # the sample that completes the sustain span falls when it is due, not
    # up to a tick later; never before it, nor so soon after the last that
    # the detector would not take it as a segment of its own
    t = calm.taken_usec
    due = lambda d: next_tick_usec((calm,), conf, running=True, can_arm=False, thrash_episode=True,
                                   episode_due_usec=t + d)
    assert due(70_000) == 70_000
    assert due(1_000) == due(40_000) == MIN_SEGMENT_USEC
    assert due(0) == due(-5_000) == due(100_000) == due(900_000) == THRASH_EPISODE_TICK_USEC
    off = config_mod.load(cli={"thrash_refault_limit": "0"})
    assert next_tick_usec((low,), off, running=True, can_arm=False, thrash_episode=True) == 1_000_000
    assert next_tick_usec((low,), off, running=True, can_arm=False, thrash_episode=True,
                          episode_due_usec=low.taken_usec + 40_000) == 1_000_000
    unknown = dataclasses.replace(low, refault_file_pages=-1)
    assert next_tick_usec((unknown,), conf, running=True, can_arm=False) == 1_000_000


# -- config -----------------------------------------------------------------------

def test_thrash_config_keys():
    c = config_mod.load()
    assert (c.thrash_refault_limit_permyriad, c.thrash_stall_limit_permyriad, c.thrash_sustain_ms) == (2000, 1000, 1000)
    c = config_mod.load(cli={"thrash_refault_limit": "150%", "thrash_stall_limit": "0", "thrash_sustain_ms": "2500"})
    assert (c.thrash_refault_limit_permyriad, c.thrash_stall_limit_permyriad, c.thrash_sustain_ms) == (15000, 0, 2500)
    assert c.describe()["thrash_refault_limit"] == "150%"
    for key, bad, why in (("thrash_refault_limit", "fast", "not a percentage"),
                          ("thrash_refault_limit", "20000%", "out of range"),
                          ("thrash_refault_limit", 0.2, "not a percentage"),
                          ("thrash_stall_limit", "101%", "out of range"),
                          ("thrash_sustain_ms", "100", "outside 250..60000"),
                          ("thrash_sustain_ms", True, "not an integer")):
        with pytest.raises(ConfigError) as e:
            config_mod.load(cli={key: bad})
        msg = str(e.value)
        assert msg.startswith(f"command line: bad value for {key!r}: ") and why in msg and "\n" not in msg


def test_shipped_config_lists_the_thrash_keys(tmp_path):
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "oomkiller.toml")
    c = config_mod.load(config_file=path)
    assert c == config_mod.load()


def test_info_line():
    from oomkiller.report import thrash_text
    t = {"state": "thrashing", "refault_permyriad_per_s": 183_112, "episode_usec": 1_046_000, "stall_permyriad": 2216,
         "free_permyriad": 956, "limit_refault_permyriad_per_s": 2000, "limit_stall_permyriad": 1000,
         "sustain_usec": 1_000_000, "fired": 1}
    assert thrash_text(t) == ("thrashing, refaults 1831.1%/s of the file cache (limit 20%/s), episode 1046 ms "
                              "(sustain 1000 ms), memory stall 22.2% (limit 10%), free 9.6%, fired 1")
    # with the activation counter (v2, the host): the share of the refaults
    assert thrash_text({**t, "activated_permyriad": 290, "limit_activated_permyriad": 50}) == (
        "thrashing, refaults 1831.1%/s of the file cache (limit 20%/s), episode 1046 ms (sustain 1000 ms), memory "
        "stall 22.2% (limit 10%), activated 2.9% of the refaults (at least 0.5%), free 9.6%, fired 1")
    # ... and, the domain's own, their rate against the limit that carries
    # an episode by itself
    assert thrash_text({**t, "activated_permyriad": 3000, "limit_activated_permyriad": 50,
                        "activated_rate_permyriad_per_s": 362, "limit_activated_rate_permyriad_per_s": 100}) == (
        "thrashing, refaults 1831.1%/s of the file cache (limit 20%/s), episode 1046 ms (sustain 1000 ms), memory "
        "stall 22.2% (limit 10%), activated 30.0% of the refaults (at least 0.5%), 3.6%/s of the file cache "
        "(limit 1%/s), free 9.6%, fired 1")
    assert "activated 0.0% of the host's refaults (at least 0.5%)" in thrash_text(
        {**t, "activated_permyriad": 0, "limit_activated_permyriad": 50, "activated_host": True})
    assert "memory stall 22.2% (limit 10%), I/O stall 98.8% (it carries an episode at 40%), free" in thrash_text(
        {**t, "io_stall_permyriad": 9880, "limit_io_stall_permyriad": 4000})
    assert "I/O stall 98.8% (it carries none: thrash_io_stall_limit 0), free" in thrash_text(
        {**t, "io_stall_permyriad": 9880, "limit_io_stall_permyriad": 0})
    assert "memory stall - " in thrash_text({**t, "state": "calm", "stall_permyriad": None})
    assert "memory stall unknown " in thrash_text({**t, "state": "episode", "stall_permyriad": None})
    assert thrash_text({"state": "unknown"}) == "unknown (no refault or file cache figures)"
    assert thrash_text(None) == "-"


def test_a_handful_of_refaults_into_an_empty_cache_starts_no_episode():
    # Measured in the burst load: a service read its file into an empty
    # cache, 2 pages counted as refaults "over" the empty LRU (1239%/s); the
    # counter then stood still, and a burst of pressure 2 s later completed
    # that episode into a firing after 0.4 s of real thrashing.
    st = ThrashState()

    def snap(t_ms, refaults, lru, stall_ms, free=TOTAL // 10):
        return MemorySnapshot("d", TOTAL, free, TOTAL - free, 0, 1_000_000 + t_ms * 1000, -1, stall_ms * 1000,
                              refaults, lru)
    seq = [snap(0, 0, 0, 0, free=TOTAL)]
    seq += [snap(150 + 180 * i, 2, 32 * MIB, 0, free=TOTAL) for i in range(11)]
    # the burst: 0.4 s of real thrashing, stalled 15%, then the memory is freed
    seq += [snap(2200, 5659, 25 * MIB, 17), snap(2360, 38467, 25 * MIB, 51), snap(2590, 81980, 25 * MIB, 156),
            snap(2790, 105386, 31 * MIB, 201, free=TOTAL * 94 // 100)]
    states = []
    for s in seq:
        st, f = observe(st, s, LIMITS, ARM_LINE)
        states.append(f.state)
    assert "thrashing" not in states
    assert states[1:12] == ["calm"] * 11


def test_sufferers_are_the_jobs_that_refaulted_most_since_the_listing_before():
    from oomkiller.core.thrash import refault_marks, sufferers

    def job(name, inode, refaults):
        return Job(name=name, path="/d/" + name, inode=inode, refault_file_pages=refaults)
    before = refault_marks([job("svc", 1, 100), job("hog", 2, 0), job("web", 3, 50), job("old", 4, 7),
                            job("dunno", 5, -1)], 1_000_000)
    now = [job("svc", 1, 40_100), job("hog", 2, 0), job("web", 3, 1050), job("old", 44, 30),  # made again
           job("new", 6, 500), job("dunno", 5, -1)]
    got = sufferers(before, now, 3_500_000)
    assert got == [{"job": "svc", "refault_pages": 40_000, "span_usec": 2_500_000},
                   {"job": "web", "refault_pages": 1000, "span_usec": 2_500_000},
                   {"job": "new", "refault_pages": 500, "span_usec": 2_500_000}]
    assert [d["job"] for d in sufferers(before, now, 3_500_000, top=5)] == ["svc", "web", "new", "old"]
    assert sufferers(None, now, 3_500_000) == []
    from oomkiller import report
    assert report.sufferers_text(got[:2]) == (f"refaulted most: 'svc' {report.format_mib(40_000 * 4096)} in 2.50 s, "
                                              f"'web' {report.format_mib(1000 * 4096)} in 2.50 s")
    assert report.sufferers_text([{"job": "a\nb", "refault_pages": 1, "span_usec": 0}]).startswith(
        "refaulted most: 'a\\nb' ")


# -- slow storage: the I/O stall carries an episode ------------------------------

class ExactFeed(Feed):
    """A Feed whose activations add up without rounding each tick: small
    shares (0.5%) of small rates."""

    def tick(self, rate, stall, n=1, flushed=True, io=None, majflt=None):
        for _ in range(n):
            before = self.refaults
            self.exact = getattr(self, "exact", float(self.activations))
            share, self.activated = self.activated, 0.0
            super().tick(rate, stall, 1, flushed, io, majflt)
            self.activated = share
            self.exact += (self.refaults - before) * (share or 0)
            self.activations = int(self.exact)
        return self.figs[-1]


def slow_disk_feed(activated=0.1, free=40 * MIB):
    """A v1 domain (the host's activations stand in) whose frozen service
    reads its working set back from a slow disk."""
    f = Feed(free=free, activated=activated)
    f.host = True
    return f


def test_a_freeze_on_a_slow_disk_fires_on_its_io_stall():
    """Measured in the arena (v1, the service's file read at 8 MiB/s):
    refaults 10-18%/s of the cache, I/O stall 42-98%, memory stall 0.1-0.3%,
    3-5 major faults a second."""
    f = slow_disk_feed()
    f.tick(0.12, 0.002, n=10, io=0.6, majflt=4)
    assert "thrashing" not in f.states()        # under the sustain span
    f.tick(0.12, 0.002, n=10, io=0.6, majflt=4)
    last = next(x for x in f.figs if x.firing)
    assert 1_000_000 <= last.episode_usec < 1_300_000
    assert "major faults, I/O stall 60.0% >= 40%) >= 5%/s" in last.reason
    assert "memory or I/O stall 60.0% >= 10%" in last.reason
    assert last.io_stall_permyriad == 6000
    # the same freeze with no I/O pressure file, or no major fault figures: as before, never
    for io, majflt in ((None, 4), (0.6, None)):
        g = slow_disk_feed()
        g.tick(0.12, 0.002, n=40, io=io, majflt=majflt)
        assert "thrashing" not in g.states(), (io, majflt)


def test_thrash_io_stall_limit_moves_the_io_path_and_0_turns_it_off():
    # at 80%: the freeze stalled 60% of the time on I/O carries nothing
    f = slow_disk_feed()
    f.limits = dataclasses.replace(LIMITS, io_stall_permyriad=8000)
    f.tick(0.12, 0.002, n=40, io=0.6, majflt=4)
    assert "thrashing" not in f.states()
    # ... at 90% it does, and says so
    f.tick(0.12, 0.002, n=15, io=0.9, majflt=4)
    assert "I/O stall 90.0% >= 80%" in next(x for x in f.figs if x.firing).reason
    # off: never, however stalled
    g = slow_disk_feed()
    g.limits = dataclasses.replace(LIMITS, io_stall_permyriad=0)
    g.tick(0.12, 0.002, n=60, io=1.0, majflt=4)
    assert "thrashing" not in g.states()
    # the config key, the environment, and what it refuses
    assert core.thrash_limits(config_mod.load()).io_stall_permyriad == 4000
    c = config_mod.load(cli={"thrash_io_stall_limit": "55%"})
    assert core.thrash_limits(c).io_stall_permyriad == 5500 and c.describe()["thrash_io_stall_limit"] == "55%"
    assert config_mod.load(environ={"OOMKILLER_THRASH_IO_STALL_LIMIT": "0"}).thrash_io_stall_limit_permyriad == 0
    for bad, why in (("19.9%", "under 20%"), ("0.001%", "rounds to 0"), ("101%", "out of range"), ("40", "percentage")):
        with pytest.raises(config_mod.ConfigError, match=f"thrash_io_stall_limit.*{why}"):
            config_mod.load(cli={"thrash_io_stall_limit": bad})


@pytest.mark.parametrize("gap_ticks", [3, 6], ids=["300ms", "600ms"])
def test_a_slow_disks_read_around_bursts_carry_the_episode_across_gaps_and_the_limit(gap_ticks):
    """Traced in the arena (v1, the service's file read at 8 MiB/s): the
    domain's refault counter moved a read-around (640 pages) at a time,
    300 ms apart and 600 ms on a slower machine, each burst at 12-68%/s
    of the cache, on either side of the 20%/s limit; memory stall 0-0.5%,
    I/O stall 92-99%, a major fault a burst; the host's activated share
    0.6% to 33%. Neither the gaps (judged on the memory stall) nor a burst
    over the limit may start the episode over: the I/O stall holds it
    through them. (A CI run took 12 s from the collapse to the kill.)"""
    f = ExactFeed(activated=0.002)      # the host's share under MIN_ACTIVATED_PERMYRIAD
    f.host = True
    f.tick(0.0, 0.0, io=0.0, majflt=0)
    for i in range(24 // gap_ticks):
        rate = 0.3 if i % 2 else 0.12
        f.tick(rate, 0.002, n=gap_ticks - 1, flushed=False, io=0.97, majflt=0)
        f.tick(rate, 0.002, io=0.97, majflt=10)        # the burst's one major fault
    fired = [x for x in f.figs if x.firing]
    assert fired, [(x.state, x.episode_usec) for x in f.figs]
    assert fired[0].episode_usec <= 1_000_000 + gap_ticks * 100_000
    assert "I/O stall 97.0% >= 40%" in fired[0].reason
    # ... and fired on a burst under the limit: over it, on a v1 domain
    # whose host's activated share is under 0.5%, the I/O path is no reason
    assert "%/s of the file cache (12% of the domain; 0.2% of the host's activated" in fired[0].reason
    assert " >= 5%/s for " in fired[0].reason
    # the same bursts with the I/O stall under its share: the gaps still part them
    g = ExactFeed(activated=0.002)
    g.host = True
    g.tick(0.0, 0.0, io=0.0, majflt=0)
    for i in range(60 // gap_ticks):
        g.tick(0.12, 0.002, n=gap_ticks - 1, flushed=False, io=0.3, majflt=0)
        g.tick(0.12, 0.002, io=0.3, majflt=10)
    assert "thrashing" not in g.states()


@pytest.mark.parametrize("what, feed, rate, io, majflt", [
    ("a stream from a slow disk: read(), no major faults, the host's share 10%", dict(), 0.12, 0.9, 0),
    ("a stream, the host's share at 0.55% from anyone", dict(activated=0.0055), 0.06, 0.9, 0),
    ("too little I/O stall", dict(), 0.12, 0.3, 4),
    ("refaults under a quarter of the limit", dict(), 0.04, 0.9, 4),
    ("free memory over a quarter of the domain", dict(free=160 * MIB), 0.12, 0.9, 4),
    ("major faults not over one a second", dict(), 0.12, 0.9, 0.9),
])
def test_what_the_io_stall_never_fires_on(what, feed, rate, io, majflt):
    f = ExactFeed(free=feed.get("free", 40 * MIB), activated=feed.get("activated", 0.1))
    f.host = True
    f.tick(rate, 0.002, n=60, io=io, majflt=majflt)
    assert "thrashing" not in f.states(), what


def test_a_v2_domain_needs_its_own_working_set_share_too():
    f = ExactFeed(activated=0.0)
    f.tick(0.12, 0.002, n=60, io=0.9, majflt=4)
    assert "thrashing" not in f.states()
    g = ExactFeed(activated=0.01)
    g.tick(0.12, 0.002, n=30, io=0.9, majflt=4)
    assert "thrashing" in g.states()


def test_the_fall_of_free_memory_does_not_open_the_io_path():
    """A backup (read(), no major faults) beside a job that takes 5% of
    memory at once."""
    f = ExactFeed(free=120 * MIB, activated=0.0)
    f.host = True
    f.tick(0.06, 0.002, n=10, io=0.9, majflt=0)
    f.free -= 26 * MIB
    f.tick(0.06, 0.002, n=30, io=0.9, majflt=0)
    assert "thrashing" not in f.states()


def test_a_short_burst_of_io_bound_refaults_never_fires():
    f = slow_disk_feed()
    for _ in range(6):
        f.tick(0.12, 0.002, n=7, io=0.9, majflt=4)       # 700 ms
        f.tick(0.0, 0.0, n=30, io=0.0, majflt=0)         # then calm for 3 s
    assert "thrashing" not in f.states()


def test_two_bursts_with_io_stall_between_are_not_one_episode():
    f = ExactFeed(activated=0.1)
    f.host = True
    f.tick(0.5, 0.25, n=4, io=0.2)
    f.tick(0.06, 0.0, n=6, io=0.9)
    f.tick(0.5, 0.25, n=4, io=0.2)
    assert "thrashing" not in f.states()


def test_an_unrelated_burst_after_a_gap_beside_a_backup_starts_its_own_episode():
    """A backup keeps the domain's I/O stall at 90% with free memory short;
    some refaults (no major fault), 1.4 s of nothing, then a program starts
    (1000 refaults, 20 major faults in 100 ms). The gap is over the sustain
    span and the first burst made no major fault: the program's burst is
    an episode of its own, which goes no further."""
    for first_faults in (0, 10):
        f = ExactFeed(activated=0.002)
        f.host = True
        f.tick(0.0, 0.0, io=0.9, majflt=0)
        f.tick(0.25, 0.002, n=2, io=0.9, majflt=first_faults)     # burst A
        f.tick(0.0, 0.002, n=14, flushed=False, io=0.9, majflt=0)
        f.tick(6.0, 0.002, io=0.9, majflt=200)                     # burst B
        f.tick(0.0, 0.002, n=30, flushed=False, io=0.9, majflt=0)
        assert "thrashing" not in f.states(), first_faults


def test_a_v1_stream_over_the_limit_with_a_few_major_faults_never_fires():
    """On a v1 domain the host's activated share is the over-limit rule's
    guard (0.2% here: nobody's working set): refaults at 30%/s, I/O stall
    90%, 3 major faults a second (swap-ins, a program start) do not stand
    in for it."""
    f = ExactFeed(activated=0.002)
    f.host = True
    f.tick(0.3, 0.002, n=60, io=0.9, majflt=3)
    assert "thrashing" not in f.states()


def test_the_io_stall_counts_for_the_stall_limit_only_where_the_io_path_holds():
    # the activated path (a v2 domain's own activations): with the I/O path
    f = Feed(activated=0.3)
    f.tick(0.12, 0.002, n=15, io=0.6, majflt=4)
    assert "memory or I/O stall 60.0%" in next(x for x in f.figs if x.firing).reason
    # ... an I/O stall under its share does not stand in for the memory stall
    g = Feed(activated=0.3)
    g.tick(0.12, 0.002, n=30, io=0.12, majflt=4)
    assert "thrashing" not in g.states()
    # over the refault limit too: a faster slow disk is no reason to hold back
    h = Feed(activated=0.3)
    h.tick(0.3, 0.002, n=15, io=0.6, majflt=4)
    assert "memory or I/O stall 60.0%" in next(x for x in h.figs if x.firing).reason
    k = Feed(activated=0.3)
    k.tick(0.3, 0.002, n=30, io=0.6)       # ... but not without major faults
    assert "thrashing" not in k.states()
