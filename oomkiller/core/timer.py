"""When the redline timer wakes next: a pure function of the snapshot history."""
from __future__ import annotations

from collections.abc import Sequence

from ..config import Config
from ..model import MemorySnapshot
from .thrash import MIN_SEGMENT_USEC

# The adaptive timer (config adaptive_sleep) never wakes sooner than this.
MIN_TICK_USEC = 10_000

# The thrash detector's cadence (core/thrash.py): during an episode, a sample
# every 100 ms (a snapshot costs ~0.1 ms: the files it reads are the
# redline's), so the sustain span is judged on ten segments; below the arm
# line, every 250 ms, so an episode's start is seen within a quarter second
# where a freeze leaves free memory (7-13% of the arena). An episode's
# sample also falls when it will have lasted the sustain span, not up to a
# tick later: the freeze's kills came 35-170 ms past it at a 100 ms cadence.
THRASH_EPISODE_TICK_USEC = 100_000
THRASH_WATCH_TICK_USEC = 250_000
# While the redline waits for the domain's statistics (core/state.py,
# STAT_LAG_HOLD_USEC): a sample every 50 ms, so that the kill, if it is one,
# comes as soon as they catch up.
STAT_LAG_TICK_USEC = 50_000


def thrash_tick_usec(history: Sequence[MemorySnapshot], config: Config, *, in_episode: bool,
                     episode_due_usec: int | None = None) -> int | None:
    """How soon the thrash detector wants its next sample, None if it has no
    wish (off, or calm with free memory above the arm line).
    ``episode_due_usec``: when the episode will have lasted the sustain span
    (its onset's sample time plus ``thrash_sustain_ms``), if one runs."""
    if not config.thrash_refault_limit_permyriad or not history:
        return None
    if in_episode:
        left = episode_due_usec - history[-1].taken_usec if episode_due_usec is not None else 0
        # measured from the last sample, which the loop took before its work
        # on it: the next one falls at the due time or just after, never
        # before, and never so close to the last that the detector would
        # not take it as a segment of its own (MIN_SEGMENT_USEC)
        return (max(MIN_SEGMENT_USEC, left) if 0 < left < THRASH_EPISODE_TICK_USEC
                else THRASH_EPISODE_TICK_USEC)
    last = history[-1]
    if last.refault_file_pages >= 0 and last.free_bytes < config.arm_line_bytes(last.total_bytes):
        return THRASH_WATCH_TICK_USEC
    return None


def next_tick_usec(history: Sequence[MemorySnapshot], config: Config, *, running: bool, can_arm: bool,
                   thrash_episode: bool = False, episode_due_usec: int | None = None,
                   stat_lag: bool = False) -> int:
    """The sooner of the redline timer's tick (``redline_tick_usec``) and
    the thrash detector's (``thrash_tick_usec``); ``stat_lag``: the redline
    waits for the domain's statistics (STAT_LAG_TICK_USEC)."""
    tick = redline_tick_usec(history, config, running=running, can_arm=can_arm)
    if stat_lag and running:
        tick = min(tick, STAT_LAG_TICK_USEC)
    thrash = (thrash_tick_usec(history, config, in_episode=thrash_episode, episode_due_usec=episode_due_usec)
              if running else None)
    return tick if thrash is None else min(tick, thrash)


def redline_tick_usec(history: Sequence[MemorySnapshot], config: Config, *, running: bool, can_arm: bool) -> int:
    """How long the timer sleeps from now: ``sleep_ms``, or while free
    memory falls, half the time to the next line (the term line, the arm
    line, the redline: the nearest below free memory) at the rate seen over the kept snapshots (the last
    pressure span), not under MIN_TICK_USEC. The seed's loop samples at a
    fixed period; a leak crossing the line just after a tick would go unseen
    for a whole period."""
    sleep = config.sleep_ms * 1000
    if not config.adaptive_sleep or len(history) < 2 or not running:
        return sleep
    # The oldest kept snapshot, not the one before last: a leak that grows in
    # steps looks steady between two close ticks.
    ref, last = history[0], history[-1]
    dt = last.taken_usec - ref.taken_usec
    fall = ref.free_bytes - last.free_bytes
    if dt <= 0 or fall <= 0:
        return sleep
    red = config.redline.resolve_bytes(last.total_bytes)
    lines = [red]
    if config.term_line_bytes(last.total_bytes):
        lines.append(config.term_line_bytes(last.total_bytes))
    if can_arm:
        lines.append(config.arm_line_bytes(last.total_bytes))
    # the nearest line still below free memory
    line = max((x for x in lines if x < last.free_bytes), default=red)
    headroom = last.free_bytes - line
    if headroom <= 0:
        return sleep        # below the redline: the walk and its hold decide
    return max(MIN_TICK_USEC, min(sleep, headroom * dt // fall // 2))
