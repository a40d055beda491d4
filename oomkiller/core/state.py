"""All policy state, and the one step that moves it on.

``step(state, config, wake, jobs)`` looks at one wake (the time, a fresh
snapshot, the events that caused it) and returns the new state and the
actions to carry out. Listing the jobs is the costly read, so ``step`` first
runs without them and says whether it needs them (``Need.JOBS``, or
``Need.ARMED_JOB`` for the one job that was armed); the daemon reads them
and calls ``step`` again with the same state and wake; the jobs may come
ranked already (a ``Ranking`` made for the same policy and total is taken as
it is: the daemon keeps one per listing and places again only the jobs it
reads again, see ``rank.rerank``). A daemon that lists
jobs in the background may answer ``Need.JOBS`` with ``PENDING``: no listing
recent enough yet; what needed the jobs (arming, the SIGTERM step, the PSI
triggers) is then left for a later wake, as if not due yet. ``walked`` takes the
result of a walk the daemon carried out.

What lives here, and nowhere else: the previous free figure and the
snapshots of the last pressure span (the stall share and the adaptive
timer), the thrash detector's samples and episode, when the last walk was (the post-kill hold), whom the kernel holds
armed and when that choice was last made, when the jobs' PSI triggers were
last refreshed, the pids we killed lately (the kernel's mark of one of them
is not a kill of its own), the SIGTERM step's last signal and the jobs it
reached, and the counts ``info`` shows.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from ..config import Config
from .decide import decide, decide_term, term_target
from .detect import detect, lag_explains
from ..model import (Candidate, Detection, EventKind, Job, KillResult, MemorySnapshot, PressureEvent, Ranking,
                     Source)
from .rank import Policy, rank
from .thrash import ThrashFigures, ThrashLimits, ThrashState, observe

# PSI triggers on jobs: on the biggest this many, refreshed at most this
# often, and only on a timer tick while the domain is above the arm line.
# Making triggers while a job races to the limit once cost the arming its
# lead: never below the arm line.
JOB_PSI_TRIGGERS = 32
JOB_PSI_REFRESH_USEC = 10_000_000
# ... and only when the jobs may have changed: cgroups came or went in the
# domain (Wake.jobs_changed), or its free memory moved by at least this share
# of the domain (permyriad) since the last refresh, as a job that grew into
# the biggest would move it. Listing a thousand idle jobs every 10 s only to
# find the same biggest ones cost 2.6% of a core.
JOB_PSI_MOVE_PERMYRIAD = 100

# Below the arm line, the ranking that chooses whom to arm is redone at most
# this often (and at once after a kill): the timer may wake every 10 ms there,
# and listing a thousand jobs takes hundreds of ms.
ARM_RERANK_USEC = 250_000
# A job holding less than this share of the domain (permyriad) is never
# armed: killing it cannot end a shortage, and armed it would be killed at
# its first failed reclaim, a bystander (a 2 MiB logind, once the hog the
# kernel's OOM killer chose had gone from the ranking).
ARM_MIN_PERMYRIAD = 100

# The stall share is measured over at least this long (see detect.py).
PRESSURE_SPAN_USEC = 2_000_000

# Jobs sent SIGTERM in this episode below the term line, remembered so
# that none gets a second (decide.py); an episode has few.
TERMED_KEPT = 256

# Pids we killed, remembered so that the kernel marking one of them on its
# way out is not taken for a kill of the kernel's own.
OUR_VICTIMS_KEPT = 4096


class _Pending(tuple):
    """The type of ``PENDING``."""


# The jobs are being listed (in the background): what needs them waits.
PENDING = _Pending()


class Need(enum.Enum):
    NOTHING = "nothing"
    JOBS = "jobs"               # every job of the domain
    # every job of the domain, for a walk: the latest listing may serve if
    # it is recent and the jobs the walk may kill are read again
    WALK_JOBS = "walk_jobs"
    ARMED_JOB = "armed_job"     # the armed job, read again ([] if it is gone)


# How long the redline waits for the domain's statistics to catch up with
# its charge: the kernel sums them every 2 s at the latest (the longest lag
# seen here: 2.0 s).
STAT_LAG_HOLD_USEC = 2_500_000


@dataclass(frozen=True)
class CoreState:
    prev_free_bytes: int | None = None
    history: tuple[MemorySnapshot, ...] = ()    # the last pressure span, oldest first
    last_walk_usec: int | None = None
    armed: Job | None = None
    armed_ranked_usec: int = 0
    triggers_refreshed_usec: int = 0
    triggers_free_bytes: int = 0            # the domain's free memory at that refresh
    our_victims: tuple[int, ...] = ()
    kills: int = 0
    armed_kills: int = 0
    kernel_kills_seen: int = 0
    thrash: ThrashState = ThrashState()
    # the SIGTERM step: when the last SIGTERM went out, the jobs sent one
    # in this episode ((path, inode)), when the ranking for it was last made
    term_usec: int | None = None
    termed: tuple[tuple[str, int], ...] = ()
    term_ranked_usec: int = 0
    terms: int = 0
    # since when free memory has been under the redline (or the term line)
    # only by a charge the domain's statistics do not account for yet
    # (detect.lag_explains), and whether the lines wait for them now
    stat_lag_since_usec: int | None = None
    stat_lag_waiting: bool = False


@dataclass(frozen=True)
class Wake:
    now_usec: int
    snapshot: MemorySnapshot
    events: tuple[PressureEvent, ...] = ()
    lowmem: bool = False                    # a simulated low-memory event was asked for
    # pids of kernel OOM victims among the events that the daemon found
    # outside the domain (it asks the kernel; the core cannot)
    foreign_pids: frozenset[int] = frozenset()
    can_arm: bool = False                   # the pre-armed kill is live
    # while memory.stat lags: whether the domain's processes, counted
    # afresh (Procfs.anon_bytes), map more anonymous memory than it names,
    # past the slack (the lag is, at least in part, a hog's memory); None
    # if not counted or unknown
    lag_is_anon: bool | None = None
    can_track: bool = False                 # job PSI triggers can be kept
    # cgroups came or went in the domain since the triggers were last
    # refreshed (True when nothing watches for that)
    jobs_changed: bool = True


# -- actions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    job: Job
    previous: Job | None


@dataclass(frozen=True)
class Disarm:
    job: Job | None


@dataclass(frozen=True)
class TrackTriggers:
    """Keep PSI triggers on exactly these jobs' pressure files; ``jobs``:
    every job's cgroup, of which the listing was made (what below the
    domain is watched for cgroups that come and go)."""
    paths: frozenset[str]
    jobs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class KernelKill:
    """The kernel's own OOM killer chose a task of the domain."""
    event: PressureEvent


@dataclass(frozen=True)
class Note:
    """A line for the log at debug level: what the core passed over and why."""
    text: str


@dataclass(frozen=True)
class Hold:
    """Low, but no walk now."""
    reason: str


@dataclass(frozen=True)
class Walk:
    """Walk ``ranking`` and kill the first killable job. ``recheck_redline_bytes``:
    read the domain again first and kill nothing if free memory is back
    above it, and again after an attempt that killed nothing.
    ``past_gone``: without a redline to re-check, whether the walk goes on
    to the next job when one emptied or vanished before our signal (the
    kernel's OOM killer, or the job itself, ended it). A walk for thrashing
    or for the stall limit does not: the cause may be what just went, and
    only fresh figures can tell; the next wake decides again."""
    ranking: Ranking
    reason: str
    recheck_redline_bytes: int | None = None
    past_gone: bool = True


@dataclass(frozen=True)
class Term:
    """Send SIGTERM to ``candidate``'s processes (the gentler first step):
    free memory is below the term line, not below the redline."""
    candidate: Candidate
    ranking: Ranking
    reason: str
    term_line_bytes: int


@dataclass(frozen=True)
class ArmedDone:
    """The kernel killed the armed job's last task: nothing is left to kill."""
    job_name: str
    ranking: Ranking


# typing.Union, not `|`: an alias is evaluated at import, and Python 3.9 has no `type | type`.
Action = Union[Arm, Disarm, TrackTriggers, KernelKill, Note, Hold, Walk, ArmedDone, Term]


@dataclass(frozen=True)
class Step:
    state: CoreState | None        # None when ``need`` asks for a second call
    actions: tuple[Action, ...] = ()
    need: Need = Need.NOTHING
    detection: Detection | None = None
    redline_bytes: int = 0
    lowmem_consumed: bool = False  # the lowmem request was acted on (a walk, a hold)
    armed_hit: bool = False
    thrash: ThrashFigures | None = None


def lag_explains_a_line(config: Config, snap: MemorySnapshot) -> bool:
    """Whether free memory is under the redline, or the SIGTERM step's line
    if it is on, only by a charge the statistics do not account for yet
    (``detect.lag_explains``)."""
    term = config.term_line_bytes(snap.total_bytes)
    return (lag_explains(snap, config.redline.resolve_bytes(snap.total_bytes))
            or bool(term) and lag_explains(snap, term))


def lag_held(since_usec: int | None, now_usec: int) -> bool:
    """Whether a lag of the statistics seen since ``since_usec`` still holds
    the lines (STAT_LAG_HOLD_USEC)."""
    return since_usec is not None and now_usec - since_usec < STAT_LAG_HOLD_USEC


def thrash_limits(config: Config) -> ThrashLimits:
    return ThrashLimits(config.thrash_refault_limit_permyriad, config.thrash_stall_limit_permyriad,
                        config.thrash_sustain_ms * 1000, config.thrash_io_stall_limit_permyriad)


def policy_for(config: Config, self_pid: int) -> Policy:
    return Policy(config.protect, config.avoid, config.prefer, self_pid)


def _pressure_history(history: tuple[MemorySnapshot, ...], snap: MemorySnapshot) -> tuple[MemorySnapshot, ...]:
    """``history`` plus ``snap``, less what is older than needed: the newest
    earlier snapshot at least a pressure span old stays first."""
    hist = [*history, snap]
    while len(hist) >= 2 and snap.taken_usec - hist[1].taken_usec >= PRESSURE_SPAN_USEC:
        hist.pop(0)
    return tuple(hist)


def _remember(victims: tuple[int, ...], pids: Sequence[int]) -> tuple[int, ...]:
    return (*victims, *pids)[-OUR_VICTIMS_KEPT:]


def step(state: CoreState, config: Config, wake: Wake, jobs: Sequence[Job] | Ranking | None = None,
         self_pid: int | None = None) -> Step:
    """One wake. See the module docstring."""
    snap = wake.snapshot
    redline = config.redline.resolve_bytes(snap.total_bytes)
    history = _pressure_history(state.history, snap)
    thrash_state, thrash = observe(state.thrash, snap, thrash_limits(config), config.arm_line_bytes(snap.total_bytes))
    # The redline waits for statistics that lag the charge, for as long as
    # the kernel takes to sum them (STAT_LAG_HOLD_USEC), then acts on what
    # it has. The lag may be a fast hog's memory, and a wait for it would
    # hand the race to the kernel's OOM killer (a sidecar without eBPF lost
    # its hog so): so only while the processes' own counts show it is no
    # anonymous memory of theirs, or, where they cannot tell, while a job
    # is armed in the kernel, which ends a hog at the kernel's own failed
    # reclaims without waiting.
    # The SIGTERM step's line, above the redline, waits the same way. One
    # clock for both, kept while the lag explains a shortfall whatever the
    # counts say: a wait never starts again until memory is back over the
    # lines (so a shortfall that began at the term line leaves the redline
    # less of the wait).
    may_wait = wake.lag_is_anon is False or (wake.lag_is_anon is None and wake.can_arm
                                             and state.armed is not None)
    lag_since = ((state.stat_lag_since_usec if state.stat_lag_since_usec is not None else snap.taken_usec)
                 if lag_explains_a_line(config, snap) else None)
    waiting = may_wait and lag_held(lag_since, snap.taken_usec)
    det = detect(snap, redline, state.prev_free_bytes, wake.lowmem, pressure_ref=history[0],
                 pressure_limit_permyriad=config.pressure_limit_permyriad, thrash=thrash,
                 dirty_hold_permyriad=config.pressure_dirty_hold_permyriad, lag_hold=waiting)
    s = dataclasses.replace(state, prev_free_bytes=snap.free_bytes, history=history, thrash=thrash_state,
                            stat_lag_since_usec=lag_since, stat_lag_waiting=waiting)
    actions: list[Action] = []
    policy = policy_for(config, os.getpid() if self_pid is None else self_pid)

    armed_hit = False
    for ev in wake.events:
        if ev.kind != EventKind.ARMED_KILL:
            continue
        if ev.pid in s.our_victims:
            # The program fired on a task a walk of ours had already
            # signalled (the map is cleared after the walk): one kill, ours.
            actions.append(Note(f"OOM: the armed kill hit pid {ev.pid}, which we had killed already"))
            continue
        s = dataclasses.replace(s, armed_kills=s.armed_kills + 1, our_victims=_remember(s.our_victims, [ev.pid]))
        if s.armed is None:
            # Fired just before a disarm (free memory went back above the
            # arm line): one task is gone, and nothing says to kill more.
            actions.append(Note(f"OOM: the armed kill hit pid {ev.pid} as the job was disarmed"))
            continue
        armed_hit = True
    for ev in wake.events:
        if ev.kind != EventKind.KERNEL_OOM_VICTIM:
            continue
        if ev.pid in s.our_victims:
            # A victim of ours, dying, that failed one more allocation on its
            # way out: the kernel marks it so it may use reserves. It killed
            # no one (its oom_kill counters do not move).
            actions.append(Note(f"OOM: the kernel marked our dying victim pid {ev.pid}"))
        elif ev.pid in wake.foreign_pids:
            actions.append(Note(f"OOM: the kernel OOM killer chose pid {ev.pid} outside the domain"))
        else:
            # The kernel's OOM killer relieved the domain: the thrash
            # detector's window holds the time before, as after our kills.
            s = dataclasses.replace(s, kernel_kills_seen=s.kernel_kills_seen + 1, thrash=s.thrash.reset())
            actions.append(KernelKill(ev))

    done = dict(detection=det, redline_bytes=redline, armed_hit=armed_hit, thrash=thrash)
    if armed_hit:
        # The kernel killed a task of the armed job at its failed reclaim:
        # kill the rest of that job now, whatever the numbers say.
        if jobs is None:
            return Step(None, need=Need.ARMED_JOB, **done)
        armed = s.armed
        actions.append(Disarm(armed))
        s = dataclasses.replace(s, armed=None, armed_ranked_usec=0)
        ranking = rank(jobs or (), policy, snap.total_bytes)
        if not ranking.top(1):
            # The task the kernel killed was the job's last: it is empty already.
            actions.append(ArmedDone(armed.name, ranking))
            s = dataclasses.replace(s, kills=s.kills + 1, last_walk_usec=wake.now_usec, history=(),
                                    thrash=s.thrash.reset())
            return Step(s, tuple(actions), **done)
        actions.append(Walk(ranking, "armed kill in the kernel"))
        return Step(s, tuple(actions), **done)

    if not det.low:
        return _calm(s, config, wake, jobs, policy, actions, done)

    dec = decide(det, wake.now_usec, s.last_walk_usec, config.post_kill_delay_ms * 1000)
    if not dec.act:
        actions.append(Hold(dec.reason))
        return Step(s, tuple(actions), lowmem_consumed=True, **done)
    if jobs is None:
        return Step(None, need=Need.WALK_JOBS, **done)
    ranking = rank(jobs, policy, snap.total_bytes)
    recheck = redline if det.reason == "free below redline" else None
    actions.append(Walk(ranking, dec.reason, recheck, past_gone=recheck is not None or det.simulated))
    return Step(s, tuple(actions), lowmem_consumed=True, **done)


def _calm(s: CoreState, config: Config, wake: Wake, jobs: Sequence[Job] | Ranking | None, policy: Policy,
          actions: list[Action], done: dict) -> Step:
    """Not low: keep the top victim armed between the redline and the arm
    line (disarmed above it), the biggest jobs' PSI triggers fresh, and,
    below the term line, send the top job SIGTERM (decide.py)."""
    snap = wake.snapshot
    arm_line = config.arm_line_bytes(snap.total_bytes)
    ranked: list[Ranking] = []

    def ranking() -> Ranking:
        if not ranked:
            ranked.append(rank(jobs or (), policy, snap.total_bytes))
        return ranked[0]
    if wake.can_arm:
        # Unlike a kill, arming is not held by the post-kill delay: the last
        # victim's cgroup was empty before its kill returned, so its memory
        # is back, and the armed kill needs the kernel's own proof (failed
        # reclaims) before it fires.
        if snap.free_bytes >= arm_line or config.dry_run:
            if s.armed is not None:
                actions.append(Disarm(s.armed))
            s = dataclasses.replace(s, armed=None, armed_ranked_usec=0)
        elif jobs is PENDING:
            pass        # chosen once they are listed
        elif not (s.armed_ranked_usec and snap.taken_usec - s.armed_ranked_usec < ARM_RERANK_USEC):
            if jobs is None:
                return Step(None, need=Need.JOBS, **done)
            s = dataclasses.replace(s, armed_ranked_usec=snap.taken_usec)
            top = next(ranking().walk(), None)
            if (top is None or not top.job.v2_path
                    or top.job.committed_bytes * 10000 < snap.total_bytes * ARM_MIN_PERMYRIAD):
                # The core chooses who: if the top victim cannot be armed, no one is.
                if s.armed is not None:
                    actions.append(Disarm(s.armed))
                s = dataclasses.replace(s, armed=None)
            elif s.armed is None or s.armed.v2_id != top.job.v2_id:
                actions.append(Arm(top.job, s.armed))
                s = dataclasses.replace(s, armed=top.job)
    if (wake.can_track and jobs is not PENDING and any(e.source == Source.TIMER for e in wake.events)
            and not (s.triggers_refreshed_usec
                     and snap.taken_usec - s.triggers_refreshed_usec < JOB_PSI_REFRESH_USEC)
            and snap.free_bytes >= arm_line and _jobs_may_have_changed(s, wake)):
        # Only on a timer tick, at most every JOB_PSI_REFRESH_USEC, and only
        # above the arm line: a trigger costs the kernel a poll worker, and
        # its making once came before the arming.
        if jobs is None:
            return Step(None, need=Need.JOBS, **done)
        s = dataclasses.replace(s, triggers_refreshed_usec=snap.taken_usec, triggers_free_bytes=snap.free_bytes)
        listed = jobs.jobs() if isinstance(jobs, Ranking) else jobs
        biggest = sorted(listed, key=lambda j: -j.committed_bytes)[:JOB_PSI_TRIGGERS]
        actions.append(TrackTriggers(frozenset(os.path.join(j.v2_path, "memory.pressure")
                                               for j in biggest if j.v2_path),
                                     frozenset(j.path for j in listed)))
    term_line = config.term_line_bytes(snap.total_bytes)
    if term_line and snap.free_bytes >= term_line:
        if s.termed or s.term_ranked_usec:
            s = dataclasses.replace(s, termed=(), term_ranked_usec=0)     # the episode is over
    elif term_line and s.stat_lag_waiting and lag_explains(snap, term_line):
        actions.append(Note("OOM: no SIGTERM now: free memory is under the term line only by a charge "
                            "memory.stat does not account for yet"))
    elif term_line:
        dec = decide_term(snap.free_bytes, term_line, wake.now_usec, s.term_usec, config.term_grace_ms * 1000,
                          s.last_walk_usec, config.post_kill_delay_ms * 1000)
        if not dec.act:
            actions.append(Note(f"OOM: no SIGTERM now: {dec.reason}"))
        elif jobs is PENDING:
            pass        # once they are listed
        elif not (s.term_ranked_usec and snap.taken_usec - s.term_ranked_usec < ARM_RERANK_USEC):
            # At most every ARM_RERANK_USEC: the job list is the costly read.
            if jobs is None:
                return Step(None, need=Need.JOBS, **done)
            s = dataclasses.replace(s, term_ranked_usec=snap.taken_usec)
            target, why = term_target(ranking(), s.termed)
            if target is None:
                actions.append(Note(f"OOM: no SIGTERM: {why}"))
            else:
                actions.append(Term(target, ranking(), dec.reason, term_line))
    return Step(s, tuple(actions), **done)


def _jobs_may_have_changed(s: CoreState, wake: Wake) -> bool:
    """Whether the biggest jobs may not be those the triggers are on: never
    refreshed, cgroups came or went, or free memory moved by
    JOB_PSI_MOVE_PERMYRIAD of the domain since. A job that grows while
    another shrinks as much is not seen; the domain's own triggers, the
    timer and the eBPF events still are."""
    snap = wake.snapshot
    return (not s.triggers_refreshed_usec or wake.jobs_changed
            or abs(snap.free_bytes - s.triggers_free_bytes) * 10000 >= snap.total_bytes * JOB_PSI_MOVE_PERMYRIAD)


def arm_failed(state: CoreState, action: Arm) -> CoreState:
    """The kernel would not take the arming: the previous choice stands, and
    the next rerank tries again."""
    return dataclasses.replace(state, armed=action.previous)


def walked(state: CoreState, now_usec: int, attempts: Sequence[tuple[Candidate, KillResult]]
           ) -> tuple[CoreState, tuple[Action, ...]]:
    """After a walk: hold the next one for the post-kill delay (also when
    nothing could be killed: walking again on every wake would only flood
    the log); after a real kill, remember its pids, forget the stall figures
    from before it, choose whom to arm next at once, and disarm the victim if
    it was the armed job."""
    s = dataclasses.replace(state, last_walk_usec=now_usec)
    victim = next(((c, r) for c, r in attempts if r.ok), None)
    if victim is None or victim[1].dry_run:
        return s, ()
    c, r = victim
    # The thrash detector starts over too: the refaults and stalls from
    # before the kill say nothing about what is left.
    s = dataclasses.replace(s, kills=s.kills + 1, our_victims=_remember(s.our_victims, r.signalled_pids),
                            history=(), armed_ranked_usec=0, thrash=s.thrash.reset())
    if s.armed is not None and s.armed.path == c.job.path:
        return dataclasses.replace(s, armed=None), (Disarm(s.armed),)
    return s, ()


def termed(state: CoreState, now_usec: int, job: Job, ok: bool, dry_run: bool = False) -> CoreState:
    """After a Term: a job signalled (or, in a dry run, that would have
    been) starts the grace and gets no second SIGTERM in this episode. One
    that could not be signalled (it emptied, it vanished) starts nothing."""
    if not ok:
        return state
    return dataclasses.replace(state, term_usec=now_usec, termed=(*state.termed, (job.path, job.inode))[-TERMED_KEPT:],
                               terms=state.terms + (0 if dry_run else 1))


def disarmed(state: CoreState) -> CoreState:
    """Stopped, or the domain is gone: nothing stays armed."""
    return dataclasses.replace(state, armed=None, armed_ranked_usec=0)


def domain_replaced(state: CoreState) -> CoreState:
    """A new cgroup at the domain's path: nothing learned from the old one
    holds (figures, timings, choices); the counts and our victims stay."""
    return CoreState(our_victims=state.our_victims, kills=state.kills, armed_kills=state.armed_kills,
                     kernel_kills_seen=state.kernel_kills_seen, thrash=state.thrash.reset(), terms=state.terms)
