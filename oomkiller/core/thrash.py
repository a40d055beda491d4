"""Is the domain thrashing? A pure function of plain values.

The freeze this catches: something holds on to memory that reclaim cannot
take (anonymous memory, no swap), the kernel keeps "free" memory looking
healthy by evicting page cache, the code and data running programs need
among it, and they read it back from disk at once. The kernel's OOM killer
never fires (reclaim keeps making progress) and free memory stays above any
sane redline.

Signals, all from files the snapshot reads anyway:

* **refault rate**: file pages read back in soon after their eviction
  (``workingset_refault_file`` of the domain's ``memory.stat``, v1's
  ``total_workingset_refault_file``, or ``/proc/vmstat`` for the host) per
  second, over the size of the file LRU they refault into (``active_file +
  inactive_file``), in permyriad per second. Android's lmkd reasons the same
  way. In a 512 MiB arena frozen by a hog at 85%: 0 at baseline, 1,100 to
  1,700 % per second while frozen, and over 20% in the first 250 ms.
* **memory stall**: the share of time some task of the domain was stalled on
  memory (PSI ``some``) over the last sustain span. The frozen service is
  stalled 15 to 30% of each second; a stream is stalled too (1 to 42% of a
  second, more on a loaded machine), so this alone does not clear it.
* **a squeezed cache** (in memory: the domain's swap is left out of these
  two shares): the file cache holds at most half the domain
  (``MAX_CACHE_PERMYRIAD``); a stream's cache fills it (99%), the frozen
  arena's held 12%, the rest being what nobody can reclaim; and that rest
  is at least half of it: free memory at most half the domain
  (``MAX_FREE_PERMYRIAD``). A build that deletes its files leaves a small
  cache in an empty arena (1% of it, 81% free), and refaults from before the
  deletion over that cache read 536%/s.
* **free memory**: where no PSI file can be read, the domain's free memory
  must be under the arm line instead: a stream keeps its cache reclaimable
  (half the arena free), a freeze leaves 7 to 13% free.
* **working set, not a stream**: of the refaults over the last sustain span,
  at least ``MIN_ACTIVATED_PERMYRIAD`` must be ones the kernel activated at
  once (``workingset_activate_file``: the page was evicted less than a
  working set's worth of evictions ago, so it would have stayed with a
  little more memory); or the activated ones alone come at the refault
  limit over ``ACTIVATED_LIMIT_DIVISOR`` (1%/s) of the file cache per
  second (a share anyone can dilute by streaming beside the freeze, a rate
  no one can); or free memory fell by ``MIN_FALL_PERMYRIAD`` of the domain within
  the last ``FALL_SPANS`` sustain span and the flush delay, into something
  other than file cache (``FALL_CACHE_SLACK_PERMYRIAD``). A stream that
  reads a file larger than its cache refaults each page a whole file's
  worth later: none is ever activated.
  Measured in this host's arena: the freeze 1.8 to 23% of its refaults
  (each second), a stream and a stream beside a job holding 60% exactly 0.
  At host level the memory stall counts kswapd's reclaim, and a stream
  beside a held heap reached the stall limit in the VM guest: this is what
  tells them apart. v1 memory cgroups count their refaults but not the
  activations: there the host's share (``/proc/vmstat``) stands in, and
  the rate is not used (the host's activations over the domain's cache
  would be no rate of the domain's). A stream in the domain adds only
  refaults nobody activates to it. A share is diluted under the limit by a
  stream elsewhere that refaults (share / 0.5% - 1) times the freeze's
  refaults: 2.6 times for a freeze at 1.8%, 30 times at 15%; the rate and
  the fall then decide. Judged over
  the sustain span, not segment by segment: single 100 ms segments of the
  freeze dipped to 0.07%. The freeze's first 0.7-2 s of refaults in the
  arena had none activated (the pages the hog's fill evicted first came
  back from beyond the shrinking working set): free memory falling fast
  stands in for the share then. What it leaves: a stream
  beside a held heap at host level once showed 0.8-3.8% activated for 1.3 s
  (the hot pages of other programs, evicted and read back: a real, short
  thrash), enough to fire over a sustain span that held the stall too.

Counters lag: v1 memory cgroups (and v2 ones, between flushes) may show
``workingset_refault_file`` unchanged for up to two seconds while pages
refault, then all of it at once. So a sample whose counter did not move
(or moved by fewer than ``MIN_SEGMENT_REFAULTS`` pages since the last
segment) says nothing (it neither starts nor ends an episode) until that
has lasted ``STATS_LAG_USEC``; a sample whose counter moved enough, but
slower than the limit, ends the episode at once.

Slow storage, I/O stall (``IO_LIMIT_DIVISOR``): a frozen service whose
disk bounds its re-reads refaults at only a few percent of the cache a
second and waits on I/O, not memory (memory PSI counts little of it). A
segment whose refaults come at a quarter of the limit carries an episode
while the domain is stalled on I/O 40% of the time with free memory short;
it fires only if over the sustain span its own tasks also faulted mapped
pages in from the disk (major faults, more than one a second: program
text, a mapped working set; a backup or a copy reads with read()) and,
where the domain counts its own activations, the working-set share
passes. Never the host's share, nor a fall of free memory, which anyone
on the host can supply; never for the host domain, whose every figure is
anyone's. Where this path holds, the stall limit takes the larger of the
memory and the I/O stall. A stretch carried by the I/O stall alone is no
part of a later episode over the refault limit.

An *episode* starts at the first sample whose refault rate (over the time
since the previous sample that moved the counter) is at or above the limit,
and ends at the first that moved it slower. A segment whose *activated*
refaults alone come at the activated limit (1%/s of the file cache) starts
or carries an episode too, whatever its refault rate: slow storage bounds
how fast a frozen service reads its pages back (the guest's freeze with
MGLRU on: 4-25%/s of its cache, 20-50% of it activated), and a stream's
activated refaults are 0 on any disk. Such an episode fires only if the
activated refaults held that rate over the whole sustain span, with free
memory at most ``MAX_FREE_ACTIVATED_PERMYRIAD`` of the domain, and never on
a v1 domain (the host's activations are no rate of the domain's). A
segment over a gap longer than half the sustain span, through which the
domain stalled under the limit, starts the episode over: two short bursts
with a quiet trickle between them are not one episode.

The detector *fires* on a sample that moved the counter at or above the
limit (or its activated refaults at theirs) once the episode has lasted
``sustain_usec``, with the stall share over the last
``sustain_usec`` at or above its limit (or free memory under the arm line):
a burst shorter than the sustain never fires, nor does one that the counter
shows only later in one jump, since PSI, which does not lag, shows the
stall over by then. It also fires on a sample at which the counter stands
still, if it last moved at or above the limit within the flush delay, in
an episode no segment of which was carried under the limit, and PSI shows
the domain stalled at the stall limit all the time since that move and
since the previous sample (not only over the sustain span, which a burst
that just ended still fills): a v1 counter stood still for 0.45 to 1 s at
a time through the arena's freeze. Never for the host domain.

Cause and sufferer: the refaults say who suffers (the service whose file
pages are evicted), not who causes it. The kill goes to the ranker's top
job, ranked on committed memory (what the cgroup is charged less the clean
file cache the kernel can drop): the growing, unreclaimable charge. The
suffering service's working set is file cache, which that score leaves
out, so it ranks below the job that crowds it out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..model import MemorySnapshot

PAGE_BYTES = 4096

# memcg statistics are flushed to what memory.stat shows at least every 2 s
# (the kernel's periodic flush); between flushes a counter may stand still.
STATS_LAG_USEC = 2_100_000

# Thrashing counts only while the file cache holds at most this share of the
# domain (permyriad): a cache that large is not squeezed by anything, and its
# refaults are its own readers' stream (cat of a file twice a 256 MiB arena:
# the cache is 99% of it, and up to 42% of a second stalled on a loaded
# machine, so the stall alone cannot tell). The frozen arena kept 12%.
MAX_CACHE_PERMYRIAD = 5000

# Nor while free memory is over this share of the domain (permyriad): a
# small cache in a domain that is mostly free was emptied (files deleted),
# not squeezed. The frozen arena had 7-13% free.
MAX_FREE_PERMYRIAD = 5000

# Samples closer than this are not a segment of their own: a rate over a few
# ms is noise (one read-around of 32 pages).
MIN_SEGMENT_USEC = 50_000

# Nor is a rate over a handful of pages: a segment ends at the first
# sample at least this many pages (1 MiB) of refaults after the last one
# that ended one; fewer say nothing, as a counter that stands still (up to
# the flush delay). A service that first read its file into an empty cache
# showed 2 refaults "over" the LRU of the sample before (empty): 1239%/s,
# and the episode that started there stood for the flush delay, until a
# 500 ms burst of pressure completed it into a kill. A freeze refaults
# 30,000 pages in 100 ms in the arena; on slow storage (the VM guest's
# emulated disk) 1-7 MiB a second, so a segment there spans a few samples.
MIN_SEGMENT_REFAULTS = 256

# Of the refaults over the last sustain span, at least this share
# (permyriad) activated at once for the refaults to be a working set's
# (module docstring); over fewer refaults than MIN_SEGMENT_REFAULTS the
# share says nothing and is not applied.
MIN_ACTIVATED_PERMYRIAD = 50

# ... unless free memory fell by at least this share of the domain
# (permyriad) within the last FALL_SPANS sustain span, the flush delay
# added: memory is being taken, and the pages taken first come back from
# beyond the working set as it shrinks. The arena's freeze refaulted for its
# first 0.7-2 s with none activated (its free memory fell from 50% to 10%
# in half a second); a held heap beside a stream was filled long before.
# Not tied to the episode's onset: a freeze that begins while a stream's
# episode runs (a backup, or a user's decoy) is seen taking memory too.
MIN_FALL_PERMYRIAD = 500
# One sustain span: the fall and the episode's first span; the flush delay
# on top, for an onset a v1 counter shows late. Longer would leave a heap
# filled just before a stream's episode to the stall alone for longer.
FALL_SPANS = 1
# ... and only while the file cache did not grow by more than this share of
# the domain (permyriad) since: a freeze's fill squeezes the cache as it
# takes free memory (the arena's from 40% of it to 12%), a build that
# writes new files into an emptied domain fills it (free memory from 81%
# to 45% of the arena while its cache grew from 1% to 13%, and its re-reads
# of what its own writes evicted refaulted at 1,400%/s, none activated).
FALL_CACHE_SLACK_PERMYRIAD = 100

# ... or unless the activated refaults alone come at the refault limit over
# this (permyriad of the file LRU per second; 1%/s at the shipped 20%/s): a
# share can be diluted by anyone who streams a big file beside the freeze
# (on the host, any user can), a rate cannot. The arena's freeze: about
# 200%/s; at host level in the VM guest 1.6-12%/s; a stream: 0.
#
# The same rate also starts and carries an episode on its own, whatever the
# refault rate: on slow storage the disk bounds how fast a frozen service
# can read its pages back, not the cache's size. The guest's freeze with
# MGLRU on refaulted at 4-25%/s of its cache, under the 20%/s limit, with
# 20-50% of it activated (1-10%/s of the cache), and was not ended in 40 s.
# A stream's activated refaults are 0, whatever its disk.
ACTIVATED_LIMIT_DIVISOR = 20
# ... never under 0.1%/s of the file cache, whatever the refault limit.
MIN_ACTIVATED_LIMIT = 10

# The activated refaults carry an episode by themselves only while free
# memory is at most this share of the domain (permyriad): a working set
# read back at 1%/s of the cache is cheap to make (a user re-reading a file
# a little too big for its share of the cache activates every refault, and
# stalls on them), so it counts only where memory is short as well. The
# guest's slow-disk freezes held 11-14% free, the arena's freeze 7-13%.
MAX_FREE_ACTIVATED_PERMYRIAD = 2500


# Slow storage, where the domain counts no activations of its own (a v1
# memory cgroup) or its disk bounds them under their limit: a segment whose
# refaults come at the refault limit over IO_LIMIT_DIVISOR (5%/s at the
# shipped 20%/s) starts or carries an episode while the domain was stalled
# on I/O (PSI "some" of its io.pressure) at least IO_STALL_PERMYRIAD of it,
# with free memory at most MAX_FREE_ACTIVATED_PERMYRIAD. Such an episode
# fires only if, over the whole sustain span, the refaults held that rate,
# the I/O stall held that share, and the domain's own tasks faulted mapped
# pages in from the disk (MIN_MAJOR_FAULTS_PER_S: program text, a mapped
# working set), with, where the domain counts its own activations, the
# working-set share too. A stream from a slow disk (a backup, a copy)
# stalls on I/O all the time, reads with read(), and none of its refaults
# is activated. Not the host's share, nor a fall of free memory: on a
# shared host anyone can supply either. Not for the host domain: every
# figure there is anyone's (its major faults are not given). The stall
# limit is then judged on the larger of the memory and the I/O stall (on
# either path that is carried): a frozen service waits for the disk, and
# memory PSI counts little of it. The arena's freeze with the service's
# file on a disk reading 8 MiB/s (v1 memory cgroup, this host): refaults
# at 10-18%/s of the cache, I/O stall 42-98% of each second, memory stall
# 0.1-0.3% of most seconds, 3-5 major faults a second. Traced at 100 ms:
# the counter moved a read-around at a time (640 pages, 2.5 MiB, one major
# fault), 300 ms apart, and slower runs leave more between them. A span of
# a second still holds two such faults while they come under 900 ms apart;
# the gaps, with memory PSI near 0, are held by the I/O stall (observe).
IO_LIMIT_DIVISOR = 4
# the default of thrash_io_stall_limit (ThrashLimits.io_stall_permyriad)
IO_STALL_PERMYRIAD = 4000
MIN_MAJOR_FAULTS_PER_S = 1


def io_limit(limits: "ThrashLimits") -> int:
    """The refault rate (permyriad of the file LRU per second) at which a
    domain stalled on I/O counts as thrashing (``IO_LIMIT_DIVISOR``)."""
    return max(MIN_ACTIVATED_LIMIT, limits.refault_permyriad_per_s // IO_LIMIT_DIVISOR)


def activated_limit(limits: "ThrashLimits") -> int:
    """The activated refault rate (permyriad of the file LRU per second)
    that passes the working-set rule and carries an episode by itself."""
    return max(MIN_ACTIVATED_LIMIT, limits.refault_permyriad_per_s // ACTIVATED_LIMIT_DIVISOR)


@dataclass(frozen=True)
class ThrashLimits:
    """The thresholds (Config: thrash_refault_limit, thrash_stall_limit,
    thrash_sustain_ms, thrash_io_stall_limit). ``refault_permyriad_per_s`` 0
    turns detection off."""

    refault_permyriad_per_s: int = 2000
    stall_permyriad: int = 1000
    sustain_usec: int = 1_000_000
    # thrash_io_stall_limit: the I/O stall that carries an episode on slow
    # storage (IO_LIMIT_DIVISOR); 0 turns that path off
    io_stall_permyriad: int = IO_STALL_PERMYRIAD


@dataclass(frozen=True)
class ThrashSample:
    taken_usec: int
    refault_pages: int          # cumulative workingset_refault_file
    file_lru_bytes: int
    some_stall_usec: int        # cumulative PSI "some" of the domain, -1 if unknown
    activate_pages: int = -1    # cumulative workingset_activate_file, -1 if unknown
    activate_of_pages: int = -1     # the refault counter those are a share of
    free_bytes: int = -1        # the domain's free memory, swap left out
    io_stall_usec: int = -1     # cumulative PSI "some" I/O stall of the domain, -1 if unknown
    major_faults: int = -1      # cumulative major faults of the domain's tasks, -1 if unknown


@dataclass(frozen=True)
class ThrashState:
    """What the detector remembers between samples."""

    # the samples of the last sustain span, oldest first: the newest one at
    # least sustain_usec old stays first (the stall window), the last is the
    # previous sample
    recent: tuple[ThrashSample, ...] = ()
    moved: ThrashSample | None = None       # the latest sample whose refault counter moved
    onset: ThrashSample | None = None       # the first sample of the episode, None if none
    last_rate_permyriad_per_s: int = 0      # rate of the latest segment that moved the counter
    last_activated_permyriad_per_s: int = 0     # ... and of its activated refaults (0 if unknown)
    # the latest segment that moved the counter carried the episode by its
    # I/O stall alone: such a stretch is no part of a later span over the
    # refault limit (two bursts with I/O stall between them are not one)
    last_io_only: bool = False
    # a segment of this episode was carried under the refault limit (the
    # activated or the I/O path): its still counter then proves nothing
    carried_in_episode: bool = False
    fired: int = 0                          # episodes that fired, for info
    fired_onset_usec: int = -1              # the onset of the episode counted last in ``fired``
    # (taken_usec, free memory without swap, file LRU) of the samples of the last
    # FALL_SPANS sustain span and the flush delay, oldest first
    frees: tuple[tuple[int, int, int], ...] = ()

    @property
    def last(self) -> ThrashSample | None:
        return self.recent[-1] if self.recent else None

    def reset(self) -> "ThrashState":
        """Forget the samples (after a kill, or a new cgroup at the domain's
        path); keep the count."""
        return ThrashState(fired=self.fired, fired_onset_usec=self.fired_onset_usec)


@dataclass(frozen=True)
class ThrashFigures:
    """What one sample showed: for the decision record and ``info``."""

    state: str                      # "off", "unknown" (no counters), "calm", "episode", "thrashing"
    refault_permyriad_per_s: int = 0
    episode_usec: int = 0
    stall_permyriad: int | None = None      # PSI some over the episode, None if unknown
    free_permyriad: int = 0
    reason: str = ""
    activated_permyriad: int | None = None  # of the refaults over the stall window, None if unknown
    activated_host: bool = False            # ... of the host's refaults (a v1 domain)
    # the activated refaults of the latest segment that moved the counter,
    # permyriad of the file cache per second; None where the domain counts
    # no activations of its own (v1, or a kernel before 5.9)
    activated_rate_permyriad_per_s: int | None = None
    # PSI "some" I/O stall over the last sustain span, None if unknown
    io_stall_permyriad: int | None = None

    @property
    def firing(self) -> bool:
        return self.state == "thrashing"

    def as_dict(self) -> dict:
        return {"state": self.state, "refault_permyriad_per_s": self.refault_permyriad_per_s,
                "episode_usec": self.episode_usec, "stall_permyriad": self.stall_permyriad,
                "free_permyriad": self.free_permyriad, "activated_permyriad": self.activated_permyriad,
                "activated_host": self.activated_host,
                "activated_rate_permyriad_per_s": self.activated_rate_permyriad_per_s,
                "io_stall_permyriad": self.io_stall_permyriad}


def sample_of(snap: MemorySnapshot) -> ThrashSample | None:
    """The detector's sample from a snapshot, None if it carries no refault figures."""
    if snap.refault_file_pages < 0 or snap.file_lru_bytes < 0:
        return None
    return ThrashSample(snap.taken_usec, snap.refault_file_pages, snap.file_lru_bytes, snap.some_stall_usec,
                        snap.activate_file_pages, snap.activate_of_pages, snap.ram_free_bytes,
                        snap.io_some_stall_usec, snap.major_faults)


def segment_rate(prev: ThrashSample, cur: ThrashSample) -> int:
    """Refaults per second between two samples, in permyriad of the file LRU
    (the smaller of the two sizes: the LRU the pages came back into)."""
    dt = cur.taken_usec - prev.taken_usec
    lru_pages = max(1, min(prev.file_lru_bytes, cur.file_lru_bytes) // PAGE_BYTES)
    refaults = max(0, cur.refault_pages - prev.refault_pages)
    return refaults * 10_000 * 1_000_000 // (dt * lru_pages) if dt > 0 else 0


def stall_share(start: ThrashSample, cur: ThrashSample) -> int | None:
    """PSI ``some`` share between two samples in permyriad, None if unknown."""
    dt = cur.taken_usec - start.taken_usec
    if start.some_stall_usec < 0 or cur.some_stall_usec < 0 or dt <= 0:
        return None
    return max(0, cur.some_stall_usec - start.some_stall_usec) * 10_000 // dt


def io_share(start: ThrashSample, cur: ThrashSample) -> int | None:
    """PSI ``some`` I/O stall share between two samples in permyriad, None
    if unknown."""
    dt = cur.taken_usec - start.taken_usec
    if start.io_stall_usec < 0 or cur.io_stall_usec < 0 or dt <= 0:
        return None
    return max(0, cur.io_stall_usec - start.io_stall_usec) * 10_000 // dt


def activated_share(start: ThrashSample, cur: ThrashSample) -> int | None:
    """Of the file refaults between two samples, the share (permyriad) the
    kernel activated at once (of the counter ``activate_of_pages``: the
    domain's refaults, or the host's); None if unknown or over too few
    refaults."""
    n = cur.activate_of_pages - start.activate_of_pages
    if min(start.activate_pages, cur.activate_pages, start.activate_of_pages) < 0 or n < MIN_SEGMENT_REFAULTS:
        return None
    return min(10_000, max(0, cur.activate_pages - start.activate_pages) * 10_000 // n)


def activated_rate(start: ThrashSample, cur: ThrashSample) -> int | None:
    """Activated refaults per second between two samples, in permyriad of
    the file LRU (the smaller of the two sizes); None if unknown."""
    dt = cur.taken_usec - start.taken_usec
    if min(start.activate_pages, cur.activate_pages) < 0 or dt <= 0:
        return None
    lru_pages = max(1, min(start.file_lru_bytes, cur.file_lru_bytes) // PAGE_BYTES)
    n = max(0, cur.activate_pages - start.activate_pages)
    if min(start.activate_of_pages, cur.activate_of_pages) >= 0:
        # never more than the refaults they are a share of: MGLRU counts
        # activations that are not refaults (seconds with more of them than
        # refaults were seen in the guest)
        n = min(n, max(0, cur.activate_of_pages - start.activate_of_pages))
    return n * 10_000 * 1_000_000 // (dt * lru_pages)


def _keep(recent: tuple[ThrashSample, ...], cur: ThrashSample, span_usec: int) -> tuple[ThrashSample, ...]:
    kept = [*recent, cur]
    while len(kept) >= 2 and cur.taken_usec - kept[1].taken_usec >= span_usec:
        kept.pop(0)
    return tuple(kept)


def observe(state: ThrashState, snap: MemorySnapshot, limits: ThrashLimits,
            arm_line_bytes: int) -> tuple[ThrashState, ThrashFigures]:
    """One more snapshot: the new state, and what it showed. See the module
    docstring for the rule."""
    # RAM only: the page cache is squeezed in memory, whatever room swap has
    ram = snap.ram_total_bytes
    free_pm = snap.ram_free_bytes * 10_000 // ram if ram > 0 else 0
    if not limits.refault_permyriad_per_s:
        return ThrashState(), ThrashFigures("off", free_permyriad=free_pm)
    cur = sample_of(snap)
    if cur is None:
        return state.reset(), ThrashFigures("unknown", free_permyriad=free_pm)
    prev = state.last
    if (prev is None or cur.taken_usec <= prev.taken_usec or cur.refault_pages < prev.refault_pages
            or cur.activate_pages < prev.activate_pages or cur.activate_of_pages < prev.activate_of_pages):
        # The first sample, or counters that went back (a new cgroup at the
        # domain's path): start over from this one.
        return (dataclasses.replace(state.reset(), recent=(cur,), moved=cur),
                ThrashFigures("calm", free_permyriad=free_pm))
    if cur.taken_usec - prev.taken_usec < MIN_SEGMENT_USEC:
        # Too close to the last sample to be a segment of its own: nothing
        # new to judge; the next segment is measured from ``prev``.
        return state, _figures(state, prev, limits, arm_line_bytes, snap, free_pm, fresh=False)
    onset, moved, last_rate = state.onset, state.moved, state.last_rate_permyriad_per_s
    last_act = state.last_activated_permyriad_per_s
    io_only = state.last_io_only
    carried_in = state.carried_in_episode
    base = moved or prev
    if cur.refault_pages - base.refault_pages >= MIN_SEGMENT_REFAULTS:
        # The counter moved: this segment's rate is fresh. Measured from the
        # latest sample that moved it, so that a jump after a flush is spread
        # over the time it stood still, and a trickle of refaults (a few
        # pages a sample: too few for a rate) adds up until it is enough.
        last_rate = segment_rate(base, cur)
        # its activated refaults: the domain's own only (the host's over a v1
        # domain's cache would be no rate of the domain's)
        last_act = 0 if snap.activations_host else activated_rate(base, cur) or 0
        moved = cur
        short = free_pm <= MAX_FREE_ACTIVATED_PERMYRIAD
        act_counts = last_act >= activated_limit(limits) and short
        io_counts = (short and cur.major_faults >= 0 and last_rate >= io_limit(limits)
                     and limits.io_stall_permyriad > 0
                     and (io_share(base, cur) or 0) >= limits.io_stall_permyriad)
        # ... and holds the episode through the gap before it, or a flip over
        # the refault limit, only if the domain's own tasks faulted pages in
        # during it and its gap is under the sustain span: a slow disk's
        # read-around bursts come 0.3-1 s apart, each with a major fault, and
        # an unrelated burst (a program starting beside a backup that keeps
        # the I/O stall up) more than a sustain span after the last refaults
        # starts its own episode, which must then go on
        seg_faults = (cur.major_faults - base.major_faults
                      if min(cur.major_faults, base.major_faults) >= 0 else 0)
        io_holds = io_counts and seg_faults >= 1 and cur.taken_usec - base.taken_usec < limits.sustain_usec
        was_io_only = io_only
        io_only = last_rate < limits.refault_permyriad_per_s and not act_counts and io_counts
        if last_rate < limits.refault_permyriad_per_s and not act_counts and not io_counts:
            onset = None
        elif onset is None or (was_io_only and last_rate >= limits.refault_permyriad_per_s and not io_holds):
            # The episode starts here, not at the previous sample: a rate
            # over a long gap (a slow tick, a flush delay) may be one burst,
            # so later samples must show it goes on for the sustain span.
            # (A segment over the limit that the I/O path holds goes on with
            # the stretch before it: a slow disk's refaults come in bursts of
            # read-around on either side of the limit.)
            onset = cur
        elif cur.taken_usec - base.taken_usec > limits.sustain_usec // 2 and not io_holds:
            # A segment over a long gap (a flush delay, or a trickle of
            # refaults too small to end one) carries the episode only if the
            # domain stayed stalled through the gap: PSI does not lag, and a
            # freeze whose counter shows late stalls all along. Otherwise two
            # short bursts up to the flush delay apart would add up to one.
            # A segment the I/O stall carries (io_holds) was stalled on I/O
            # through the gap already (io_share over it): a service waiting
            # on a slow disk's read-around moves the counter a burst at a
            # time, 300 ms to a second apart, with memory PSI near 0.
            gap = stall_share(base, cur)
            if gap is not None and gap < limits.stall_permyriad:
                onset = cur
        under = last_rate < limits.refault_permyriad_per_s
        carried_in = onset is not None and ((carried_in and onset is not cur) or under)
    elif cur.taken_usec - base.taken_usec >= STATS_LAG_USEC:
        # Still (or all but) for longer than any flush delay: nothing
        # refaults that counts.
        onset, last_rate, last_act, io_only, carried_in = None, 0, 0, False, False
    span = FALL_SPANS * limits.sustain_usec + STATS_LAG_USEC
    frees = (tuple(f for f in state.frees if cur.taken_usec - f[0] <= span)
             + ((cur.taken_usec, cur.free_bytes, cur.file_lru_bytes),))
    new = dataclasses.replace(state, recent=_keep(state.recent, cur, limits.sustain_usec), moved=moved, onset=onset,
                              last_rate_permyriad_per_s=last_rate, last_activated_permyriad_per_s=last_act,
                              frees=frees, last_io_only=io_only, carried_in_episode=carried_in)
    # The counter stands still, but the episode goes on: PSI, which does not
    # lag, shows the domain stalled all the time the counter stood still and
    # since the previous sample (not only over the sustain span, which a
    # burst that just ended still fills), and the counter last moved over
    # the limit within the flush delay, in an episode no segment of which
    # was carried under the limit. Traced in the arena's freeze (v1): the
    # counter stood still 0.45 s and 1 s at a time with the service stalled
    # 22-28% of every 50 ms, and the kills waited for its next move, 0.2-1.3
    # s past the sustain span. Over the sustain span the counter must still
    # show enough refaults for the working-set share to be judged. Never
    # for the host domain: /proc/vmstat does not lag, and the host's stall
    # is anyone's.
    still = None
    if (moved is not cur and onset is not None and base is not None and snap.domain != "host"
            and last_rate >= limits.refault_permyriad_per_s and not carried_in
            and cur.taken_usec - base.taken_usec < STATS_LAG_USEC
            and new.recent and cur.refault_pages - new.recent[0].refault_pages >= MIN_SEGMENT_REFAULTS):
        since = stall_share(base, cur)
        now_stall = stall_share(prev, cur)
        if since is not None and now_stall is not None and min(since, now_stall) >= limits.stall_permyriad:
            still = (cur.taken_usec - base.taken_usec, since)
    figs = _figures(new, cur, limits, arm_line_bytes, snap, free_pm, fresh=moved is cur, still=still)
    if figs.firing and onset.taken_usec != state.fired_onset_usec:
        new = dataclasses.replace(new, fired=state.fired + 1, fired_onset_usec=onset.taken_usec)
    return new, figs


def _figures(st: ThrashState, cur: ThrashSample, limits: ThrashLimits, arm_line_bytes: int,
             snap: MemorySnapshot, free_pm: int, fresh: bool,
             still: tuple[int, int] | None = None) -> ThrashFigures:
    """``fresh``: the refault counter moved at ``cur``; else ``still``: how
    long it has stood still (usec) and the stall over that time
    (permyriad), where the stall says the episode goes on (``observe``)."""
    own_act = None if snap.activations_host or cur.activate_pages < 0 else st.last_activated_permyriad_per_s
    if st.onset is None:
        return ThrashFigures("calm", st.last_rate_permyriad_per_s, free_permyriad=free_pm,
                             activated_rate_permyriad_per_s=own_act)
    span = cur.taken_usec - st.onset.taken_usec
    # The stall over the last sustain span, not the whole episode: PSI does
    # not lag, so a burst the refault counter shows late is seen as over.
    stall = stall_share(st.recent[0], cur) if st.recent else None
    activated = activated_share(st.recent[0], cur) if st.recent else None
    io = io_share(st.recent[0], cur) if st.recent else None
    base = dict(refault_permyriad_per_s=st.last_rate_permyriad_per_s, episode_usec=span, stall_permyriad=stall,
                free_permyriad=free_pm, activated_permyriad=activated, activated_host=snap.activations_host,
                activated_rate_permyriad_per_s=own_act, io_stall_permyriad=io)
    if span < limits.sustain_usec or not (fresh or still):
        # Not long enough yet, or this sample's counter did not move and
        # nothing else says the episode goes on.
        return ThrashFigures("episode", **base)
    ram = snap.ram_total_bytes
    cache_pm = cur.file_lru_bytes * 10_000 // ram if ram > 0 else 10_000
    if cache_pm > MAX_CACHE_PERMYRIAD or free_pm > MAX_FREE_PERMYRIAD:
        return ThrashFigures("episode", **base)
    start = st.recent[0] if st.recent else cur
    # memory taken, not filled with file cache: only from a sample whose
    # cache was not smaller than now (FALL_CACHE_SLACK_PERMYRIAD)
    slack = ram * FALL_CACHE_SLACK_PERMYRIAD // 10_000 if ram > 0 else 0
    most = max((f for _, f, lru in st.frees if lru + slack >= cur.file_lru_bytes), default=-1)
    fell = (most - cur.free_bytes) * 10_000 // ram if most >= 0 and cur.free_bytes >= 0 and ram > 0 else 0
    # the host's activations over the domain's cache would be no rate of
    # the domain's: a v1 domain has the share and the fall only
    act_rate = 0 if snap.activations_host else activated_rate(start, cur) or 0
    whose = "the host's" if snap.activations_host else "them"
    ws = "" if activated is None else f"; {activated / 100:.1f}% of {whose} activated"
    act_limit = activated_limit(limits)
    # this fresh segment is under the refault limit: observe() kept the
    # episode for its activated refaults, with free memory short
    # (MAX_FREE_ACTIVATED_PERMYRIAD)
    carried = st.last_rate_permyriad_per_s < limits.refault_permyriad_per_s
    # the I/O path (IO_LIMIT_DIVISOR): over the whole sustain span
    dt_s = (cur.taken_usec - start.taken_usec) / 1e6
    faults = cur.major_faults - start.major_faults if min(cur.major_faults, start.major_faults) >= 0 else -1
    io_bound = (io is not None and limits.io_stall_permyriad > 0 and io >= limits.io_stall_permyriad and free_pm <= MAX_FREE_ACTIVATED_PERMYRIAD
                and faults > MIN_MAJOR_FAULTS_PER_S * dt_s > 0 and segment_rate(start, cur) >= io_limit(limits)
                and (snap.activations_host or (activated is not None and activated >= MIN_ACTIVATED_PERMYRIAD)))
    io_text = (f", {faults} major faults, I/O stall {io / 100:.1f}% >= {limits.io_stall_permyriad / 100:g}%"
               if io_bound else "")
    if carried:
        # Carried by the activated refaults alone, or by the I/O stall (slow
        # storage): over the whole sustain span too, not only the segment,
        # so that one segment of them at the end of a stream's long episode
        # does not fire it.
        if act_rate >= act_limit:
            ws += f", {act_rate / 100:.1f}%/s of the file cache >= {act_limit / 100:g}%/s"
        elif io_bound:
            ws += io_text
        else:
            return ThrashFigures("episode", **base)
    elif activated is not None and activated < MIN_ACTIVATED_PERMYRIAD:
        if act_rate >= act_limit:
            ws += f", {act_rate / 100:.0f}%/s of the file cache"
        elif fell >= MIN_FALL_PERMYRIAD:
            ws += f", free memory fell {fell / 100:.0f}% of the domain"
        else:
            return ThrashFigures("episode", **base)
    over = (f" >= {io_limit(limits) / 100:g}%/s" if carried and act_rate < act_limit
            else "" if carried else f" >= {limits.refault_permyriad_per_s / 100:g}%/s")
    on_io = False
    if stall is not None and io_bound and io > stall:
        # a frozen service waits for the disk: the stall limit takes the I/O
        # stall too, where the I/O path holds (on any path: a freeze on a
        # slow disk may also refault over the limit)
        stall, on_io = io, True
        if io_text not in ws:
            ws += io_text
    rate = (f"refaults {st.last_rate_permyriad_per_s / 100:.0f}%/s of the file cache "
            f"({cache_pm / 100:.0f}% of the domain{ws}){over} for {span // 1000} ms")
    if still and not fresh:
        rate += (f" (until {still[0] // 1000} ms ago; the counter still since, the domain stalled "
                 f"{still[1] / 100:.0f}% of that time)")
    if stall is not None:
        if stall < limits.stall_permyriad:
            return ThrashFigures("episode", **base)
        kind = "memory or I/O stall" if on_io else "memory stall"
        why = f"{rate}, {kind} {stall / 100:.1f}% >= {limits.stall_permyriad / 100:g}%"
    else:
        if snap.free_bytes >= arm_line_bytes:
            return ThrashFigures("episode", **base)
        why = f"{rate}, no stall figures, free {free_pm / 100:.1f}% below the arm line"
    return ThrashFigures("thrashing", reason=f"thrashing: {why}", **base)


# -- who suffers ---------------------------------------------------------------
# The detector asks whether the domain thrashes; the ranker then kills the
# cause (the largest charge nobody can reclaim). The jobs that suffer are the
# ones whose file pages are read back: their refault counters between two
# listings. They are not ranked by it (the service whose program text is
# evicted is the victim of the freeze, not its cause); the decision record
# and the log name them, so an operator sees what the kill relieved.

RefaultMarks = tuple[int, dict[tuple[str, int], int]]     # (when, {(path, inode): refaulted pages})


def refault_marks(jobs, taken_usec: int) -> RefaultMarks:
    """Each job's cumulative refault counter at one listing."""
    return taken_usec, {(j.path, j.inode): j.refault_file_pages for j in jobs if j.refault_file_pages >= 0}


def sufferers(before: RefaultMarks | None, jobs, now_usec: int, top: int = 3) -> list[dict]:
    """The jobs that refaulted the most file pages since the listing
    ``before`` (a job new since then, or made again at its path, from 0),
    most first, those with any: ``[{"job", "refault_pages", "span_usec"}]``."""
    if before is None:
        return []
    taken, marks = before
    out = []
    for j in jobs:
        if j.refault_file_pages < 0:
            continue
        n = j.refault_file_pages - marks.get((j.path, j.inode), 0)
        if n > 0:
            out.append({"job": j.name, "refault_pages": n, "span_usec": max(0, now_usec - taken)})
    out.sort(key=lambda d: (-d["refault_pages"], d["job"]))
    return out[:top]
