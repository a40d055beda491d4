"""The daemon: one event loop around the pure core.

Sources (the redline timer, the control socket, and any pluggable source with
``fds()`` / ``drain()``) only wake the core. Every wake takes a fresh snapshot
of the domain and steps the core (``core.state.step``) with it; the core says
what to do (arm, disarm, refresh triggers, hold, walk) and, when it needs
them, asks for the jobs, which the daemon lists. The daemon carries the
actions out (re-checks the domain before a kill, walks the ranking with the
killer) and reports each decision as the seed's lines and one JSON record.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import gc
import logging
from dataclasses import replace
import os
import select
import signal
import sys
import time
from typing import Any, Callable, Protocol, TextIO, TypeVar

from . import report
from . import cgtable
from .cgroupfs import Cgroupfs, stat_lag_slack_bytes
from .config import SOURCES, Config
from .control import ControlServer
from .core import state as core
from .core import thrash as thrash_core
from .core.detect import waiting_on_disk
from .core.thrash import ThrashFigures
from .core.timer import next_tick_usec
from .domain import Domain, DomainGone
from .footprint import status_bytes
from . import hooks as hooklib
from .hooks import Hooks
from .killer import Killer
from .kmsg import KernelLog
from .lister import Lister
from .marks import CgroupMarks
from .metrics import Buckets
from .model import (ArmedRecord, Candidate, DecisionRecord, EventKind, Job, KernelKillRecord, KillResult,
                    MemorySnapshot, PressureEvent, Ranking, Record, Result, Source)
from .notify import Notifier
from .output import NOTICE, LineWriter
from .procfs import Procfs
from .core.rank import rank, rerank

log = logging.getLogger("oomkiller")

R = TypeVar("R", bound=Record)

# The same failure is logged at most this often (with a count of repeats).
FAILURE_LOG_USEC = 60_000_000

# The loop publishes its counters for the metrics endpoint at most this
# often, and after every kill (a scrape every 15 s sees figures <= 1 s old).
PUBLISH_USEC = 1_000_000
# The garbage collector's passes on the loop (``Daemon._collect``): this
# often while the domain is calm, and at least this often whatever it is.
GC_CALM_EVERY_USEC = 60_000_000
GC_EVERY_USEC = 600_000_000
# The interpreter's switch interval while the loop runs (see ``run``).
SWITCH_INTERVAL_S = 0.0005

# Other OOM killers are looked for in /proc at most this often (for info).
OTHERS_SCAN_S = 60.0

# A cgroup domain without a memory.pressure file is looked at again at most
# this often.
PRESSURE_LOOK_USEC = 10_000_000

# A walk takes the latest listing of jobs instead of listing them all again
# when it is at most this old (below the arm line the arming asks for one
# every core.ARM_RERANK_USEC, so a walk there finds one) and no job came or
# went since; it reads again only the jobs it may kill: the first WALK_FRESH
# killable candidates of the ranking, again until they are all fresh, and
# the jobs the events name. A listing of 1000 jobs takes some 170 ms, which
# the kill then waited for; one job's read, 0.2 ms. More than
# WALK_MAX_READS reads and it lists them all. 500 ms: a listing made in the
# background (lister.py) every 250 ms that itself takes up to 250 ms.
LISTING_REUSE_USEC = report.LISTING_REUSE_MS * 1000
# With background listing (lister.py), the core's other needs (arming, the
# SIGTERM step, the PSI triggers) take a listing up to this old, its top jobs
# read again, while the next is made; with none such they wait for one
# (core.PENDING): none of them is worth holding the loop.
LISTING_ASYNC_MAX_USEC = 1_000_000
# Both ages grow with the time a listing takes (the latest one's), by these
# factors: with ten thousand jobs a listing takes most of a second, and
# one that must be younger than it takes to make could never be had; the
# walk's check of free memory since the listing still holds. The next
# listing is asked for once the latest is as old as one takes to make (so
# the thread lists at most half the time), on a wake: the latest is up to
# about three times as old as one takes when the next is ready.
LISTING_REUSE_FACTOR = 3.0
LISTING_ASYNC_FACTOR = 3.0
# ... but never past this (a listing slowed by a stalled machine).
LISTING_MAX_AGE_USEC = 3_000_000
# A listing that took less than this is made on the loop when one is
# needed: few jobs, and the arming it serves is worth more than the wait.
SYNC_LISTING_MAX_USEC = 20_000
# A walk with no listing it may take waits this long at most for the one
# under way in the background before it lists on the loop.
LISTER_WAIT_S = 2.0
WALK_FRESH = 2
WALK_MAX_READS = 8
# A walk whose listing may be stale reads every job's usage; more jobs than
# this grew since, and it lists them all instead.
SWEEP_MAX_READS = 16
# A listing older than the walk may take (above) but younger than this, with
# no job come or gone since, serves a walk through that sweep rather than
# waiting for the next (the PSI triggers' refresh lists every 10 s above the
# arm line): a job's oom_score_adj or xattrs changed since, with no growth,
# are seen this late at most.
LISTING_SWEEP_MAX_USEC = 12_000_000


class EventSource(Protocol):
    """What the loop needs of an event source besides the timer: it only
    wakes the core."""

    name: str

    def fds(self) -> list[int]: ...
    def drain(self, fd: int | None = None) -> list[PressureEvent]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Arming(Protocol):
    """The pre-armed kill's actuator (``sources.bpf.PreArm``): what the
    core's Arm and Disarm actions act on."""

    armed: int

    def arm(self, cgroup_path: str, cgroup_id: int) -> None: ...
    def disarm(self) -> None: ...


class Daemon:
    def __init__(self, config: Config, *, domain: Domain | None = None, procfs: Procfs | None = None,
                 cgroupfs: Cgroupfs | None = None, json_out: TextIO | None = None,
                 sources: list[EventSource] | None = None, unavailable: dict[str, str] | None = None,
                 arm: Arming | None = None, brake: Any = None, log_writer: LineWriter | None = None,
                 control: ControlServer | None = None, notifier: Notifier | None = None,
                 kernel_log: KernelLog | None = None, marks: CgroupMarks | None = None,
                 metrics: Any = None, hooks: Hooks | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, background_listing: bool = False) -> None:
        """Everything given here is the caller's to close (``cli`` builds and
        closes it); what the daemon makes itself, it closes."""
        self.config = config
        if domain is not None:
            self.domain, self.procfs, self.cgroupfs = domain, domain.procfs, domain.cgroupfs
        else:
            self.procfs = procfs or Procfs(config.proc_root)
            self.cgroupfs = cgroupfs or Cgroupfs(config.cgroup_root, self.procfs)
            self.domain = Domain(config.domain, self.procfs, self.cgroupfs, count_swap=config.count_swap)
        self.clock = clock
        self.self_pid = os.getpid()
        self.policy = core.policy_for(config, self.self_pid)
        self.killer = Killer(self.cgroupfs, dry_run=config.dry_run, self_pid=self.self_pid,
                             timeout_usec=config.kill_timeout_ms * 1000, clock=clock)
        self.json_out = json_out
        self.log_writer = log_writer
        self.sources = list(sources or [])
        self.unavailable = dict(unavailable or {})
        self.arm = arm
        self.brake = brake
        # all policy state: the core's
        self.state = core.CoreState()
        # state the seed's `k oom info` shows, set by control commands
        self.running = config.autostart
        self.printing = config.print_
        self.simulate_lowmem = False
        self.wakes = 0
        # PID 1's and our own cgroups are never inside a job (see Cgroupfs.job_paths)
        self.keep_out = self.cgroupfs.keep_out((1, self.self_pid))
        self.last_snapshot: MemorySnapshot | None = None
        self.last_thrash: ThrashFigures | None = None
        self._pressure_held = False     # the pressure limit held by dirty pages, said once per episode
        self._lag_held = False          # the redline held for lagging statistics, said once per episode
        # the latest listing of every job: (when, jobs, the free memory it
        # saw, the cgroupfs listing kept for it); and how walks got theirs
        self._listed: tuple[int, list[Job], int | None, object] | None = None
        # its ranking (made in the lister's thread, or on first need), and
        # the one before, whose candidates the next ranking takes for the
        # jobs that did not change (``rank``'s prior)
        self._ranking: Ranking | None = None
        self._ranking_prior: Ranking | None = None
        # (when, free bytes) of the latest snapshots: the free memory a
        # listing made in the background saw
        self._frees: collections.deque = collections.deque(maxlen=64)
        # listings made in a thread of their own (lister.py), with a Cgroupfs of their own
        self.lister: Lister | None = None
        self._rank_fs: Cgroupfs | None = None     # the control thread's, for ``rank``
        if background_listing:
            cg = self.cgroupfs
            self.lister = Lister(lambda: Cgroupfs(cg.root, self.procfs), self.domain.path, config.jobs,
                                 self.keep_out, self.now_usec, on_done=self._listing_done,
                                 finish=self._finish_listing)
        # a need of the core's waits for a listing (core.PENDING): the loop is
        # woken when it is ready, to finish it
        self._awaiting_listing = False
        self._listed_on_loop_usec = 0   # this wake's listings made on the loop (armed records)
        # how long the latest listing took (0: none yet, so the first is on the loop)
        self._listing_usec = 0
        self.walk_listings = {"listed": 0, "reused": 0, "read_again": 0, "swept": 0}
        self._jobs_changed = True
        # the PSI source's watch was last set for a listing found stale
        # since: it says nothing of the domain's folders (see _usable)
        self._watch_stale = False
        self._walk_listing_age = 0      # of the listing the latest walk took, 0 if it listed afresh
        self._walk_timings: dict[str, int] = {}     # its parts (usec)
        self._marks: thrash_core.RefaultMarks | None = None
        self._marks_before: thrash_core.RefaultMarks | None = None
        self._others: tuple[float, list[tuple[int, str]]] | None = None
        self._pressure_looked_usec = 0
        self._quit = False
        self._failures: dict[tuple[str, str, str], list[int]] = {}
        # why the domain's cgroup is gone, while it is (see _domain_gone)
        self.domain_gone: str | None = None
        self.control = control
        # The control thread sets flags and writes here; the loop does the rest.
        self._nudge_r, self._nudge_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep: Any = None
        self._by_fd: dict[int, EventSource] = {}
        # systemd: READY, STATUS and the watchdog's pings, all from the loop
        self.notifier = notifier
        # a line per kill for the kernel log, through its own writer thread
        self.kernel_log = kernel_log
        # systemd-oomd's marks on a killed job's cgroup, by a thread of their own
        self.marks = marks
        # pre_kill and post_kill (hooks.py): the loop only queues; no hook
        # runs in a dry run
        self.hooks = hooks if hooks is not None and hooks.enabled and not config.dry_run else None
        # what pre_kill is told of the walk under way: (what makes its record, ranking); None
        # while no walk is, and for the armed kill's (it has happened)
        self._pre_kill: tuple[Callable[[], tuple[DecisionRecord, list[str]]], Ranking] | None = None
        if not config.dry_run and (marks is not None or (self.hooks is not None and self.hooks.has(hooklib.PRE_KILL))):
            self.killer.before_signal = self._before_signal
        # Counters for the metrics endpoint: only the loop writes them, and
        # it publishes a copy (publish) that the metrics thread reads.
        self.wakes_by_source: dict[str, int] = {}
        self.kill_counts: dict[tuple[str, str], int] = {}
        self.freed_bytes_total = 0
        self.event_to_decision = Buckets()
        self.signal_to_empty = Buckets()
        self.term_counts: dict[str, int] = {}
        self.published: dict[str, Any] | None = None
        # the endpoint's server (metrics.MetricsServer), or why there is none
        self.metrics = metrics
        self.metrics_problem = ""
        self._published_usec = 0
        self._status_sent = ""
        self._last_kill = ""
        # the loop's own passes of the garbage collector (see run, _collect)
        self._collected_usec = 0
        self.gc_passes = 0
        self.gc_latest_usec = 0
        self._live = "timer"        # the live sources, named once the loop runs

    def now_usec(self) -> int:
        return self.clock() // 1000

    @property
    def kills(self) -> int:
        return self.state.kills

    @property
    def armed_job(self) -> Job | None:
        return self.state.armed

    # -- one wake of the core ----------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job, listed now, on the loop."""
        kept: list = []
        t0 = self.now_usec()
        out = self.cgroupfs.jobs(self.domain.path, self.config.jobs, self.keep_out, kept)
        now = self.now_usec()
        self._listing_usec = now - t0
        self._listed_on_loop_usec += now - t0
        self._set_listed(now, out, self._free_now(now), kept[0] if kept else None)
        return out

    def _set_listed(self, when: int, jobs: list[Job], free: int | None, kept: object,
                    made: tuple[Ranking | None, Any] | None = None) -> None:
        """The latest listing, with what the lister's thread made of it
        (``_finish_listing``) or, made on the loop, nothing yet."""
        self._listed = (when, jobs, free, kept)
        if self._ranking is not None:
            self._ranking_prior = self._ranking
        ranking, marks = made if made is not None else (None, None)
        self._ranking = ranking
        # each listing's refault counters, and the one's before, for the
        # jobs that suffer a thrash (core.thrash.sufferers)
        self._marks_before, self._marks = self._marks, (marks if marks is not None
                                                        else thrash_core.refault_marks(jobs, when))

    def _finish_listing(self, jobs: list[Job], when: int) -> tuple[Ranking | None, Any]:
        """In the lister's thread: what the loop would otherwise make of a
        listing when it takes it (its ranking, where each job is in it, the
        refault counters), made here, off the loop."""
        snap = self.last_snapshot
        ranking = None
        between = self.lister.between_jobs if self.lister is not None else None
        if snap is not None:
            ranking = rank(jobs, self.policy, snap.total_bytes, self._ranking or self._ranking_prior, between)
            ranking.named(between)      # made now, not by the walk that needs it
        return ranking, thrash_core.refault_marks(jobs, when)

    def _listed_ranking(self, total_bytes: int) -> Ranking:
        """The latest listing's ranking for ``total_bytes``: the one made
        with it if it fits, else made now (taking the earlier ranking's
        candidates for the jobs that did not change)."""
        ranking = self._ranking
        if ranking is None or ranking.made_for is None or ranking.made_for[1] != total_bytes:
            ranking = rank(self._listed[1], self.policy, total_bytes, ranking or self._ranking_prior)
            self._ranking = ranking
        return ranking

    def _adopt(self) -> None:
        """Take the background listing finished since, if newer."""
        done = self.lister.take() if self.lister is not None else None
        if done is not None:
            self._listing_usec = done[1] - done[0]
        if done is not None and (self._listed is None or done[1] > self._listed[0]):
            self._set_listed(done[1], done[2], self._free_while(done[0], done[1]), done[3], done[4])

    def _usable(self, max_age_usec: int) -> bool:
        """Whether the latest listing may serve: under ``max_age_usec`` old,
        and no job came or went since (the PSI source's watch, else the
        listing's own check: one stat per cgroup it looked at)."""
        return self._young(max_age_usec) and self._holds()

    def _young(self, max_age_usec: int) -> bool:
        """Whether there is a listing under ``max_age_usec`` old, made while
        free memory was known."""
        listed = self._listed
        return listed is not None and self.now_usec() - listed[0] < max_age_usec and listed[2] is not None

    def _holds(self) -> bool:
        """Whether no job came or went since the latest listing (see
        ``_usable``)."""
        listed = self._listed
        if not self._jobs_changed:
            return True
        # Cgroups came or went since the watch was set: watched afresh
        # (events already queued still count), then the listing checked.
        # If it still holds, nothing came or went that the new watch did not
        # see, and the next wakes need not check it again (with ten thousand
        # jobs, a tenth of a second each).
        psi = self._psi()
        watch = getattr(psi, "watch_jobs", None)
        if watch is not None:
            psi.jobs_changed()                  # what is queued, read before the watch is set again
            watch(self.domain.path, frozenset(j.path for j in listed[1]))
        if not self.cgroupfs.listing_unchanged(listed[3]):
            # The watch just set is of folders outside jobs the domain may
            # not have any more (one that was a job may hold jobs now, not
            # watched): it vouches for no listing until it is set again.
            self._watch_stale = watch is not None
            return False
        self._watch_stale = False
        if watch is not None and not psi.jobs_changed():
            self._jobs_changed = False
        return True

    def saw(self, snap: MemorySnapshot) -> None:
        """A fresh snapshot of the domain: the latest, and one of those a
        listing made meanwhile in the background is measured against."""
        self.last_snapshot = snap
        self._frees.append((snap.taken_usec, snap.free_bytes))

    def _listing_done(self) -> None:
        """In the lister's thread: wake the loop if a need waits for it."""
        if self._awaiting_listing:
            self._nudge()

    def core_jobs(self, events: list[PressureEvent] = (), total_bytes: int = 0, free_bytes: int | None = None) -> Any:
        """The jobs for the core's needs other than a walk (arming, the SIGTERM
        step, the jobs' PSI triggers). Listed now without background listing;
        with it, the latest listing under LISTING_ASYNC_MAX_USEC old with the
        jobs at its top read again (``_confirmed``), a new one asked for once
        it is LISTING_REUSE_USEC old; with none such, ``core.PENDING`` (the
        core leaves it for a later wake) and a listing asked for."""
        self._adopt()
        if self.lister is None or self._listing_usec < SYNC_LISTING_MAX_USEC:
            # a listing this quick (a domain of few jobs) is not worth waiting
            # a wake for: arming sooner is (a fast hog fills 50 MiB in 40 ms)
            self.jobs()
            return self._listed_ranking(total_bytes)
        jobs = None
        if self._usable(self._max_age(LISTING_ASYNC_MAX_USEC, LISTING_ASYNC_FACTOR)):
            if self.now_usec() - self._listed[0] >= self._max_age(LISTING_REUSE_USEC, 1.0):
                self.lister.request()
            jobs = self._confirmed(events, total_bytes, free_bytes)
        self._awaiting_listing = jobs is None
        if jobs is None:
            self.lister.request()
            return core.PENDING
        return jobs

    def _max_age(self, floor_usec: int, factor: float) -> int:
        """How old a listing may be: ``floor_usec``, or ``factor`` times
        as long as the latest listing took, if more."""
        return max(floor_usec, min(LISTING_MAX_AGE_USEC, int(factor * self._listing_usec)))

    def _free_while(self, started: int, finished: int) -> int | None:
        """The most free memory the loop's snapshots saw while a listing
        ran from ``started`` to ``finished`` (and the one before it): no
        less than any job of it saw. None if there is none."""
        seen = [f for t, f in self._frees if started < t <= finished]
        before = [f for t, f in self._frees if t <= started]
        if before:
            seen.append(before[-1])
        return max(seen) if seen else None

    def _free_now(self, now: int) -> int | None:
        """The domain's free memory as a listing taken at ``now`` saw it:
        this wake's snapshot, else a new one; None if it cannot be read."""
        snap = self.last_snapshot
        if snap is not None and now - snap.taken_usec <= LISTING_REUSE_USEC:
            return snap.free_bytes
        try:
            return self.domain.snapshot(now).free_bytes
        except Exception:   # noqa: BLE001 - then no walk takes this listing
            return None

    def walk_jobs(self, events: list[PressureEvent], total_bytes: int,
                  free_bytes: int | None = None) -> list[Job]:
        """The jobs for a walk: the latest listing if it may serve (see
        LISTING_REUSE_USEC), with the jobs the walk may kill read again; else
        the background listing under way, waited for; else every job, listed
        now. ``free_bytes`` is the domain's free memory now (see
        ``_confirmed``)."""
        self._adopt()
        max_age = self._max_age(LISTING_REUSE_USEC, LISTING_REUSE_FACTOR)
        t0 = self.now_usec()
        self._walk_timings = {}
        # Whether no job came or went is checked once for a listing: the
        # age comes first, and the check only for the listing taken.
        if not self._young(max_age) and self._young(LISTING_SWEEP_MAX_USEC) and self._holds():
            # older, but no job came or went: each job's usage says which
            # grew, sooner than a listing of every job (waited for, or made)
            jobs = self._take(events, total_bytes, free_bytes, t0, sweep=True)
            if jobs is not None:
                return jobs
        if not self._young(max_age) and self.lister is not None and self.lister.busy:
            # the listing under way ends sooner than a new one would
            t1 = self.now_usec()
            held = self.lister.held     # (held while the loop wakes)
            self.lister.release()
            try:
                self.lister.wait(LISTER_WAIT_S)
            finally:
                if held:
                    self.lister.hold()
            self._walk_timings["listing_wait"] = self.now_usec() - t1
            self._adopt()
        jobs = self._take(events, total_bytes, free_bytes, t0) if self._usable(max_age) else None
        return jobs if jobs is not None else self._listed_instead(events, total_bytes, free_bytes)

    def _take(self, events: list[PressureEvent], total_bytes: int, free_bytes: int | None, t0: int,
              sweep: bool = False) -> list[Job] | None:
        """The latest listing for a walk, confirmed (``_confirmed``), with
        its age and how long it took since ``t0`` kept for the record."""
        age = self.now_usec() - self._listed[0]
        t1 = self.now_usec()
        jobs = self._confirmed(events, total_bytes, free_bytes, count=True, sweep=sweep)
        if jobs is not None:
            self._walk_listing_age = max(1, age)
            self._walk_timings["listing_check"] = t1 - t0 - self._walk_timings.get("listing_wait", 0)
            self._walk_timings["read_again"] = self.now_usec() - t1
        return jobs

    def _confirmed(self, events: list[PressureEvent], total_bytes: int, free_bytes: int | None,
                   count: bool = False, sweep: bool = False) -> Ranking | None:
        """The latest listing's ranking with the jobs named by the events
        (their cgroups, their processes) read again, then the first
        WALK_FRESH killable candidates read again until they all are fresh.
        When free memory (``free_bytes``, now) fell since the listing by as
        much as the top job leads the first job not read again (that job may
        have grown past it unseen), or with ``sweep``: every other job's
        usage read, those that grew read again in full, and the top made
        fresh again. None past WALK_MAX_READS reads (and SWEEP_MAX_READS
        jobs that grew), or on a read that fails but for the job being gone:
        list again. A job read again is placed again in the ranking; the
        others keep their place (``rank.rerank``): no walk sorts every job."""
        listed = self._listed
        ranking = self._listed_ranking(total_bytes)
        fresh: set[int] = set()
        reads = 0
        grew = 0        # what the jobs read again gained since the listing (less what they gave back)

        def read_again(jobs: list[Job]) -> bool:
            nonlocal reads, grew, ranking
            changes: list[tuple[Job, Job | None]] = []
            ok = True
            for job in jobs:
                reads += 1
                try:
                    new = self.cgroupfs.job(job.path, self.domain.path, job.rule)
                except FileNotFoundError:       # Vanished: removed since the listing
                    changes.append((job, None))     # (what it held is not counted as given back)
                    continue
                except Exception:   # noqa: BLE001 - a job the listing read in part, or worse: list again
                    ok = False
                    break
                changes.append((job, new))
                fresh.add(id(new))
                # What the domain lost to it: its charge, not its score. A
                # process moved in brings its memory but leaves its charge
                # behind (and the domain lost nothing to the move); an
                # unknown charge counts as no gain, so the check below errs
                # toward listing.
                if new.charged_bytes and job.charged_bytes:
                    grew += new.charged_bytes - job.charged_bytes
            if ok and changes:
                ranking = rerank(ranking, changes, self.policy, total_bytes)
            return ok

        # An event names its task's cgroup, which is the job's own only if
        # the task is not in a cgroup below it (a pod's container, a
        # service's sub-cgroup): its process names the job too.
        named = {e.cgroup_id for e in events if e.cgroup_id}
        named_pids = {e.pid for e in events if e.pid}
        allowed = WALK_MAX_READS
        if named or named_pids:
            jobs = ranking.jobs_named(named, named_pids)
            if len(jobs) > WALK_MAX_READS // 2:
                # More than a walk reads: those that grew since the listing
                # (one small read each), which are why a named job is read
                # again (its listed score may rank it anywhere).
                jobs = self._grown(jobs)
                if jobs is None or len(jobs) > SWEEP_MAX_READS:
                    return None
                allowed += len(jobs)
            if not read_again(jobs):
                return None
        swept = False
        while True:
            while True:
                top = ranking.top(WALK_FRESH)
                stale = [c.job for c in top if id(c.job) not in fresh]
                if not stale:
                    break
                if reads + len(stale) > allowed or not read_again(stale):
                    return None
            # A job not read again is as the listing saw it. What the
            # domain's free memory lost since, some job took: less what the
            # jobs read again are seen to have taken, if that is as much as
            # the top leads the first job not read again (of its class, or
            # empty then), or as its whole score (a job the listing missed),
            # that job may now be the top.
            fell = listed[2] - (free_bytes if free_bytes is not None else listed[2]) - grew
            trips = False
            if top and fell > 0:
                first = top[0]
                trips = _rival(ranking, first.importance, fresh) + fell >= first.score_bytes
            if swept:
                if trips:
                    return None     # no job listed took it: one the listing lacks may have
                break
            if not (trips or sweep):
                break
            # Which jobs grew since the listing: each one's usage, one small
            # read (a tenth of a full read); those read again in full.
            t_sweep = self.now_usec()
            grown = self._grown([c.job for c in ranking.candidates if id(c.job) not in fresh])
            if grown is None or len(grown) > SWEEP_MAX_READS:
                return None
            allowed += len(grown)
            if not read_again(grown):
                return None
            swept = True
            self._walk_timings["sweep"] = self.now_usec() - t_sweep
        if swept and count:
            self.walk_listings["swept"] += 1
        if count:
            self.walk_listings["reused"] += 1
            self.walk_listings["read_again"] += reads
        return ranking

    def job_reads(self) -> dict[str, int]:
        """Jobs of listings read in full, and taken as read before (they had
        not changed), on the loop and in the background together; how
        long the latest listing took; the loop's passes of the garbage
        collector, and how long the latest took."""
        out = dict(self.cgroupfs.job_reads)
        if self.lister is not None:
            for k, v in self.lister.fs.job_reads.items():
                out[k] = out.get(k, 0) + v
        out["latest_listing_usec"] = self._listing_usec
        out["gc_passes"] = self.gc_passes
        out["gc_latest_usec"] = self.gc_latest_usec
        return out

    def _grown(self, jobs: list[Job]) -> list[Job] | None:
        """Those of ``jobs`` whose usage grew by more than
        cgtable.REUSE_USAGE_SLACK since they were read (or was not known
        then), and those gone; None if a usage cannot be read (in doubt:
        list again)."""
        out = []
        for job in jobs:
            try:
                now = self.cgroupfs.usage(job.path)
            except FileNotFoundError:       # Vanished: read_again drops it
                out.append(job)
                continue
            except (OSError, ValueError):
                return None
            if job.usage_bytes < 0 or now - job.usage_bytes > cgtable.REUSE_USAGE_SLACK:
                out.append(job)
        return out

    def _listed_instead(self, events: list[PressureEvent], total_bytes: int, free_bytes: int | None) -> list[Job]:
        """Every job listed now, and those the walk may kill read in full:
        the listing takes jobs whose usage held as read before (see
        ``Cgroupfs._job``), and a charge can move inside the same usage."""
        self.walk_listings["listed"] += 1
        jobs = self.jobs()
        if self._listed[2] is None:
            return jobs
        again = self._confirmed(events, total_bytes, free_bytes)
        return self._listed_ranking(total_bytes) if again is None else again

    def _psi(self) -> Any:
        return next((s for s in self.sources if hasattr(s, "track")), None)

    def wake(self, events: list[PressureEvent]) -> DecisionRecord | None:
        """Snapshot, step the core, carry out what it says. Returns the
        decision record when a walk happened (or was held back). A listing
        in the background waits meanwhile (``Lister.hold``), and so does the
        control server (``ControlServer.hold``), also while a listing the
        core waits for is made (it is released by the wake that takes it)."""
        control = self.control if hasattr(self.control, "hold") else None
        if control is not None:
            control.hold()
        if self.lister is not None:
            self.lister.hold()
        try:
            return self._wake(events)
        finally:
            if self.lister is not None:
                self.lister.release()
            if control is not None and not self._awaiting_listing:
                control.release()

    def _lag_is_anon(self, snap: MemorySnapshot) -> bool | None:
        """Whether the charge the domain's memory.stat lags is, at least in
        part, its processes' anonymous memory (``core.Wake.lag_is_anon``):
        their own counts are fresh, and a fast hog's memory shows in them
        at once. None if it cannot be told, and where it is not asked:
        no lag that explains a shortage, or one the redline has waited for
        as long as it may. A process of the domain that maps memory charged
        elsewhere (it moved in) only makes a wait less likely."""
        since = self.state.stat_lag_since_usec
        if (not snap.stat_lag_bytes or snap.stat_anon_bytes < 0
                or (since is not None and not core.lag_held(since, snap.taken_usec))
                or not core.lag_explains_a_line(self.config, snap)):
            return None
        return self.domain.lag_is_anon(snap.stat_anon_bytes, stat_lag_slack_bytes(snap.ram_total_bytes))

    def _wake(self, events: list[PressureEvent]) -> DecisionRecord | None:
        t0 = self.now_usec()
        self._listed_on_loop_usec = 0
        self.wakes += 1
        for src in {str(e.source) for e in events}:
            self.wakes_by_source[src] = self.wakes_by_source.get(src, 0) + 1
        if self.domain_gone is not None:
            if not self.domain.exists():
                return None
            self._domain_back()
        if (self.domain.pressure_path is None and not self.domain.is_host
                and t0 - self._pressure_looked_usec >= PRESSURE_LOOK_USEC):
            # No memory.pressure found at start (no v2 cgroup at the domain's
            # path, and no process to find one through): look again, seldom,
            # since it reads every process of the domain.
            self._pressure_looked_usec = t0
            if self.domain.find_pressure():
                log.info("OOM: the domain's memory stall is read from %s", report.printable(self.domain.pressure_path))
                self._watch_domain_pressure()
        snap = self.domain.snapshot(t0)
        self.saw(snap)
        psi = self._psi()
        # One read that finds nothing, mostly: whether cgroups came or went
        # since the jobs' triggers were last refreshed.
        changed = getattr(psi, "jobs_changed", None)
        self._jobs_changed = (changed() if changed is not None else True) or self._watch_stale
        wake = core.Wake(t0, snap, tuple(events), lowmem=self.simulate_lowmem,
                         foreign_pids=self._foreign_victims(events), can_arm=self.arm is not None,
                         lag_is_anon=self._lag_is_anon(snap),
                         can_track=psi is not None and self._ep is not None,
                         jobs_changed=self._jobs_changed)
        t_detect = self.now_usec()
        res = core.step(self.state, self.config, wake, None, self.self_pid)
        walk_age = 0
        if res.need is core.Need.JOBS:
            res = core.step(self.state, self.config, wake, self.core_jobs(events, snap.total_bytes, snap.free_bytes),
                            self.self_pid)
        elif res.need is core.Need.WALK_JOBS:
            self._walk_listing_age = 0
            res = core.step(self.state, self.config, wake, self.walk_jobs(events, snap.total_bytes, snap.free_bytes), self.self_pid)
            walk_age = self._walk_listing_age
        elif res.need is core.Need.ARMED_JOB:
            res = core.step(self.state, self.config, wake, self._armed_job_again(), self.self_pid)
        t_rank = self.now_usec()
        self.state = res.state
        self.last_thrash = res.thrash
        if res.lowmem_consumed:
            self.simulate_lowmem = False
        det = res.detection
        if det.held and not self._pressure_held:
            log.warning("OOM: %s: the stall is reclaim waiting for the disk, which no kill shortens; "
                        "no kill for it", det.held)
        self._pressure_held = bool(det.held)
        if det.lag_held and not self._lag_held:
            log.log(NOTICE, "OOM: %s: waiting up to %d ms for the kernel's statistics before the redline acts",
                    det.lag_held, core.STAT_LAG_HOLD_USEC // 1000)
        self._lag_held = bool(det.lag_held)
        level = logging.INFO if self.printing else logging.DEBUG
        if log.isEnabledFor(level):     # the line is not made on every tick for nothing
            log.log(level, report.free_line(snap, det.delta_bytes))
        record = None
        for action in res.actions:
            if isinstance(action, core.Note):
                log.debug(action.text)
            elif isinstance(action, core.KernelKill):
                self._kernel_kill(action.event, snap)
            elif isinstance(action, core.Disarm):
                self._disarm(action.job)
            elif isinstance(action, core.Arm):
                self._arm(action, snap, events, t0, {"snapshot": t_detect - t0, "rank": t_rank - t_detect,
                                                     "listing": self._listed_on_loop_usec})
            elif isinstance(action, core.TrackTriggers):
                self._track(action)
            elif isinstance(action, core.Term):
                record = self._term(action, res, events, snap, t0, t_rank,
                                    {"snapshot": t_detect - t0, "rank": t_rank - t_detect})
            else:
                timings = {"snapshot": t_detect - t0, "rank": t_rank - t_detect}
                if walk_age:
                    # the walk took the listing this old, its top jobs read
                    # again: how long it waited for it, checked it, read again
                    timings["listing_age"] = walk_age
                    timings.update(self._walk_timings)
                record = self._decision(action, res, events, snap, t0, t_rank, timings)
        return record

    def _foreign_victims(self, events: list[PressureEvent]) -> frozenset[int]:
        """Pids the kernel's OOM killer chose outside the domain."""
        out = set()
        for ev in events:
            if ev.kind == EventKind.KERNEL_OOM_VICTIM and ev.pid not in self.state.our_victims:
                try:
                    ours = self.domain.holds(ev.pid, ev.cgroup_id)
                except OSError:
                    ours = False
                if not ours:
                    out.add(ev.pid)
        return frozenset(out)

    def _armed_job_again(self) -> list[Job]:
        armed = self.state.armed
        try:
            return [self.cgroupfs.job(armed.path, self.domain.path)] if armed else []
        except OSError:
            return []       # the job is gone with its last task

    def _decision(self, action: Any, res: Any, events: list[PressureEvent], snap: MemorySnapshot, t0: int,
                  t_rank: int, timings: dict[str, int]) -> DecisionRecord:
        """A hold, an armed job found empty, or a walk: its lines and record."""
        det = res.detection
        if isinstance(action, core.Hold):
            log.debug("OOM: holding back: %s", action.reason)
            record = self._record(events, snap, res.redline_bytes, det.shortfall_bytes, det.simulated, action.reason)
            return replace(record, result=Result.HELD, timings_usec={"snapshot": timings["snapshot"]})
        armed = res.armed_hit
        shortfall = max(0, res.redline_bytes - snap.free_bytes) if armed else det.shortfall_bytes
        reason = "armed kill in the kernel" if armed else action.reason
        ranking = action.ranking
        thrash = None
        if not armed and res.thrash is not None and res.thrash.firing:
            suffer = thrash_core.sufferers(self._marks_before, [c.job for c in ranking.candidates], t_rank)
            thrash = {**self.thrash_data(res.thrash), "sufferers": suffer}
            if suffer:
                log.log(NOTICE, "OOM: thrashing: %s", report.sufferers_text(suffer))
        made: list[tuple[DecisionRecord, list[str]]] = []

        def record_and_lines() -> tuple[DecisionRecord, list[str]]:
            """The record so far and the lines before the walk's, made once:
            after the signal, unless pre_kill needs the record sooner (the
            snapshot as a dict, every process's line and the candidates are
            milliseconds on a slow machine)."""
            if not made:
                record = self._record(events, snap, res.redline_bytes, shortfall, det.simulated and not armed, reason)
                if thrash is not None:
                    record = replace(record, thrash=thrash)
                jobs = [c.job for c in ranking.candidates]
                lines = ["OOM: armed job killed in the kernel at its failed reclaim: finishing it"] if armed else []
                lines += report.lowmem_lines(shortfall, (p for j in jobs for p in j.procs))
                made.append((replace(record, ranking=tuple(report.candidate_record(c)
                                                           for c in ranking.candidates[:16])), lines))
            return made[0]
        if isinstance(action, core.ArmedDone):
            record, lines = record_and_lines()
            self._log(lines)
            log.log(NOTICE, "OOM: armed job '%s' is already empty", report.printable(action.job_name))
            if self.kernel_log is not None:
                self.kernel_log.kill(report.kmsg_line(action.job_name, None, snap.domain, snap.free_bytes,
                                                      snap.total_bytes), t_rank)
            if self.marks is not None and not self.config.dry_run:
                # Emptied before we knew: systemd has likely looked already,
                # but the count stays for tools that read it.
                job = next((c.job for c in ranking.candidates if c.job.name == action.job_name), None)
                if job is not None:
                    self.marks.before(job)
            self._last_kill = f"'{report.printable(action.job_name)}' in the kernel"
            record = self._emit(replace(record, result=Result.KILLED, victim={"job": action.job_name},
                                        timings_usec=timings))
            job_c = next((c for c in ranking.candidates if c.job.name == action.job_name), None)
            if job_c is not None:
                self._hook(hooklib.POST_KILL, "KILL", record, job_c, "armed", result="killed")
            return record
        before = snap
        if action.recheck_redline_bytes is not None:
            # Re-check just before acting: ranking took time and the pressure may be gone.
            before = self.domain.snapshot(self.now_usec())
            if before.free_bytes >= action.recheck_redline_bytes:
                record, lines = record_and_lines()
                self._log(lines + [f"OOM: {report.format_mib(before.free_bytes)} free again: no kill"])
                return self._emit(replace(record, result=Result.RECOVERED, free_at_recheck_bytes=before.free_bytes,
                                          timings_usec=timings))
        return self._kill(ranking, record_and_lines, before, events, t0, t_rank, timings,
                          action.recheck_redline_bytes, action.past_gone, armed)

    def _kill(self, ranking: Ranking, record_and_lines: Callable[[], tuple[DecisionRecord, list[str]]],
              before: MemorySnapshot, events: list[PressureEvent], t0: int, t_rank: int, timings: dict[str, int],
              redline_bytes: int | None = None, past_gone: bool = True, armed: bool = False) -> DecisionRecord:
        t_act = self.now_usec()
        # pre_kill never runs for the armed kill: the kernel has killed already.
        self._pre_kill = None if armed else (record_and_lines, ranking)
        try:
            attempts = self.killer.walk(ranking, None if redline_bytes is None else lambda: self._short(redline_bytes),
                                        past_gone=past_gone)
        finally:
            self._pre_kill = None
        t_done = self.now_usec()
        record, lines = record_and_lines()
        lines = list(lines)
        # Logging waits until the kill is done: the journal may block under
        # the very pressure being relieved.
        try:
            after = self.domain.snapshot(t_done)
        except DomainGone:
            after = before      # gone with the job: the kill stands, freed unknown
        attempts = [(c, dataclasses.replace(r, freed_bytes=max(0, before.used_bytes - after.used_bytes)))
                    if r.ok and not r.dry_run else (c, r) for c, r in attempts]
        self.state, after_actions = core.walked(self.state, t_done, attempts)
        if self.marks is not None:
            for c, r in attempts:
                if not r.dry_run:
                    self.marks.after(c.job, len(r.signalled_pids))
        for c, r in attempts:
            outcome = "dry_run" if r.dry_run else "failed" if not r.ok else "emptied" if r.emptied else "not_empty"
            self.kill_counts[(r.method, outcome)] = self.kill_counts.get((r.method, outcome), 0) + 1
            if r.ok and not r.dry_run:
                self.freed_bytes_total += r.freed_bytes
                if r.emptied:
                    self.signal_to_empty.observe(r.signal_to_empty_usec)
        self._published_usec = 0        # publish at the end of this pass
        for action in after_actions:
            self._disarm(action.job)
        lines += report.walk_lines(ranking, attempts)
        victim = next(((c, r) for c, r in attempts if r.ok), None)
        first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
        self._log(lines)
        if victim and not victim[1].dry_run:
            self.event_to_decision.observe(t_act - first_event_usec)
        if victim:
            c, r = victim
            # A kill is a notice; one whose job did not empty, a warning.
            log.log(NOTICE if r.emptied or r.dry_run else logging.WARNING,
                    report.outcome_line(c, r, t_done - first_event_usec))
            self._last_kill = (f"would kill '{report.printable(c.job.name)}'" if r.dry_run else
                               f"'{report.printable(c.job.name)}' {report.format_size(r.freed_bytes)} freed")
            if self.kernel_log is not None and not r.dry_run:
                self.kernel_log.kill(report.kmsg_line(c.job.name, r, before.domain, before.free_bytes,
                                                      before.total_bytes), t_done)
            record = replace(record, victim=report.candidate_record(c), freed_bytes=r.freed_bytes)
        record = self._emit(replace(
            record,
            result=Result.KILLED if victim and not victim[1].dry_run else Result.DRY_RUN if victim else Result.NO_VICTIM,
            attempts=tuple(report.result_record(r) for _, r in attempts),
            timings_usec={"event_to_wake": t0 - first_event_usec, **timings, "recheck": t_act - t_rank,
                          "kill": t_done - t_act, "event_to_decision": t_act - first_event_usec,
                          "total": t_done - t0,
                          # the record and the lines, made after the kill: the record is written this late
                          "record": self.now_usec() - t_done}))
        if victim and not victim[1].dry_run:
            c, r = victim
            self._hook(hooklib.POST_KILL, "KILL", record, c, "armed" if armed else None,
                       result="killed" if r.emptied else "not_empty", res=r)
        return record

    # -- hooks and the SIGTERM step ---------------------------------------------------
    def _before_signal(self, job: Job) -> None:
        """The killer's call just before a job's first signal: systemd-oomd's
        first mark, and pre_kill. Neither blocks (but for pre_kill_wait_ms)."""
        if self.marks is not None:
            self.marks.before(job)
        ctx = self._pre_kill
        if ctx is not None and self.hooks is not None and self.hooks.has(hooklib.PRE_KILL):
            record_and_lines, ranking = ctx
            c = next((c for c in ranking.candidates if c.job is job), None)
            if c is not None:
                self._hook(hooklib.PRE_KILL, "KILL", replace(record_and_lines()[0], victim=report.candidate_record(c),
                                                              ts_usec=self.now_usec()), c, None)

    def _hook(self, hook: str, sig: str, record: DecisionRecord, c: Candidate, trigger: str | None,
              result: str = "", res: KillResult | None = None) -> None:
        """Queue a hook's run; its stdin and environment are made by the
        hooks' thread, so the loop does no more than queue."""
        if self.hooks is None or not self.hooks.has(hook):
            return
        trig = trigger or hooklib.trigger_word(record.decision, simulated=record.simulated)

        def make() -> tuple[bytes, dict]:
            data = record.to_dict()
            env = hooklib.environment(hook, sig, data, trigger=trig, job_name=report.printable(c.job.name),
                                      cgroup=c.job.path, cgroup_v2=c.job.v2_path, score_bytes=c.score_bytes,
                                      result=result, freed_bytes=res.freed_bytes if res else 0,
                                      pids=res.signalled_pids if res else ())
            return (report.json_line(data) + "\n").encode(), env
        if hook == hooklib.PRE_KILL:
            self.hooks.pre_kill(make)
        else:
            self.hooks.post_kill(make)

    def _term(self, action: core.Term, res: Any, events: list[PressureEvent], snap: MemorySnapshot, t0: int,
              t_rank: int, timings: dict[str, int]) -> DecisionRecord:
        """The SIGTERM step: the top job's processes get SIGTERM, once; the
        core gives it term_grace_ms before another job may get one, and
        the redline's kill applies meanwhile as ever."""
        c = action.candidate
        record = self._record(events, snap, res.redline_bytes, max(0, action.term_line_bytes - snap.free_bytes),
                              False, action.reason)
        record = replace(record, ranking=tuple(report.candidate_record(x) for x in action.ranking.candidates[:16]),
                         victim=report.candidate_record(c))
        t_act = self.now_usec()
        if not self.config.dry_run:
            self._hook(hooklib.PRE_KILL, "TERM", replace(record, ts_usec=t_act), c, "term_redline")
        r = self.killer.term(c)
        t_done = self.now_usec()
        self.state = core.termed(self.state, t_done, c.job, r.ok, r.dry_run)
        name = report.printable(c.job.name)
        where = (f"{report.format_mib(snap.free_bytes)} free, below term_redline "
                 f"{report.format_mib(action.term_line_bytes)}")
        if r.dry_run:
            log.log(NOTICE, "OOM: would send SIGTERM to job '%s' (%d procs): %s; dry run", name,
                    len(r.signalled_pids), where)
        elif r.ok:
            log.log(NOTICE, "OOM: sent SIGTERM to job '%s' (%d procs): %s; it has %d ms to exit before another "
                    "job may get one, and is killed at once if free memory falls below the redline", name,
                    len(r.signalled_pids), where, self.config.term_grace_ms)
            self.term_counts["signalled"] = self.term_counts.get("signalled", 0) + 1
        else:
            log.info("OOM: no SIGTERM for job '%s': %s", name, report.printable(r.error))
            self.term_counts["failed"] = self.term_counts.get("failed", 0) + 1
        self._published_usec = 0
        first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
        record = self._emit(replace(
            record, result=Result.DRY_RUN if r.dry_run else Result.TERMED if r.ok else Result.NO_VICTIM,
            attempts=(report.result_record(r),),
            timings_usec={"event_to_wake": t0 - first_event_usec, **timings, "term": t_done - t_act,
                          "event_to_decision": t_act - first_event_usec, "total": t_done - t0}))
        if r.ok and not r.dry_run:
            self._hook(hooklib.POST_KILL, "TERM", record, c, "term_redline", result="termed", res=r)
        return record

    def _short(self, redline_bytes: int) -> bool:
        """Still below the redline (asked between walk attempts)."""
        try:
            return self.domain.snapshot(self.now_usec()).free_bytes < redline_bytes
        except DomainGone:
            return False

    def _log(self, lines: list[str]) -> None:
        """A decision's lines at info, but a failed kill's at error."""
        for line in lines:
            log.log(logging.ERROR if report.is_failure_line(line) else logging.INFO, line)

    def _kernel_kill(self, ev: PressureEvent, snap: MemorySnapshot) -> None:
        if self.domain.is_host:
            log.warning("OOM: the kernel OOM killer chose pid %d (%s)", ev.pid, report.printable(ev.detail))
        else:
            log.warning("OOM: the kernel OOM killer chose pid %d first (%s): a race lost", ev.pid,
                        report.printable(ev.detail))
        self._emit(KernelKillRecord(snap.domain, ev.pid, ev.cgroup_id, ev.detail))

    def _record(self, events: list[PressureEvent], snap: MemorySnapshot, redline: int, shortfall: int,
                simulated: bool, reason: str) -> DecisionRecord:
        return DecisionRecord(domain=snap.domain, decision=reason, redline_bytes=redline, shortfall_bytes=shortfall,
                              simulated=simulated, dry_run=self.config.dry_run, snapshot=dataclasses.asdict(snap),
                              woken_by=tuple(dataclasses.asdict(e) for e in events[:8]), events=len(events))

    def next_tick_usec(self) -> int:
        onset = self.state.thrash.onset
        return next_tick_usec(self.state.history, self.config, running=self.running, can_arm=self.arm is not None,
                              thrash_episode=onset is not None,
                              episode_due_usec=None if onset is None
                              else onset.taken_usec + self.config.thrash_sustain_ms * 1000,
                              stat_lag=self.state.stat_lag_waiting)

    # -- carrying out the core's actions ------------------------------------------------
    def _arm(self, action: core.Arm, snap: MemorySnapshot, events: list[PressureEvent], t0: int,
             timings: dict[str, int] | None = None) -> None:
        """``timings``: the wake's steps before it (the snapshot; the
        ranking, with the listing it made on the loop), for the record."""
        job = action.job
        try:
            self.arm.arm(job.v2_path, job.v2_id)
        except (OSError, ValueError) as e:
            log.warning("OOM: cannot arm '%s': %s", report.printable(job.name), e)
            self.state = core.arm_failed(self.state, action)
            return
        t_armed = self.now_usec()
        t_map = t_armed - t0 - sum((timings or {}).get(k, 0) for k in ("snapshot", "rank"))
        log.info("OOM: armed job %d '%s' (cgroup id %d) in the kernel", job.inode, report.printable(job.name), job.v2_id)
        first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
        self._emit(ArmedRecord(snap.domain, job.name, job.v2_id, snap.free_bytes,
                               self.config.arm_line_bytes(snap.total_bytes),
                               woken_by=tuple(dataclasses.asdict(e) for e in events[:8]),
                               timings_usec={"event_to_wake": t0 - first_event_usec, "wake_to_armed": t_armed - t0,
                                             **(timings or {}), **({"arm": t_map} if timings else {})}))

    def _disarm(self, job: Job | None = None) -> None:
        if self.arm and self.arm.armed:
            self.arm.disarm()
            log.info("OOM: disarmed '%s'", report.printable(job.name) if job else "?")

    def _disarm_now(self) -> None:
        """Stopped, or the domain is gone: nothing stays armed."""
        job = self.state.armed
        self.state = core.disarmed(self.state)
        self._disarm(job)

    def _track(self, action: core.TrackTriggers) -> None:
        """Keep PSI triggers on the biggest jobs' memory.pressure, and watch
        the domain for cgroups that come and go until the next refresh."""
        psi = self._psi()
        added, dropped = psi.track(set(action.paths))
        watch = getattr(psi, "watch_jobs", None)
        if watch is not None:
            watch(self.domain.path, action.jobs)
            self._watch_stale = False
        for fd in dropped:
            self._ep.unregister(fd)
            self._by_fd.pop(fd, None)
        psi.release(dropped)                # closing a trigger waits on RCU: not here
        for fd in added:
            self._ep.register(fd, psi.poll_events)
            self._by_fd[fd] = psi

    def _watch_domain_pressure(self, renew: bool = False) -> None:
        """The PSI source's trigger on the domain's memory.pressure, found
        after the start: without it only the host's trigger and the timer
        would wake the core for the domain's stalls."""
        psi = self._psi()
        if psi is None or self._ep is None or not self.domain.pressure_path:
            return
        added, dropped = psi.watch_domain(self.domain.pressure_path, renew)
        if dropped is not None:
            try:
                self._ep.unregister(dropped)
            except (OSError, ValueError):
                pass
            self._by_fd.pop(dropped, None)
            self.unavailable.pop(f"{psi.name} fd {dropped}", None)    # the old domain's file, gone
            psi.release([dropped])
        if added is not None:
            self._ep.register(added, psi.poll_events)
            self._by_fd[added] = psi
            log.info("OOM: PSI trigger on %s", report.printable(self.domain.pressure_path))
        elif self.domain.pressure_path in psi.failed:
            log.warning("OOM: no PSI trigger on %s: %s", report.printable(self.domain.pressure_path),
                        psi.failed[self.domain.pressure_path])

    def _emit(self, record: R) -> R:
        """One JSON line; the daemon's writer queues it and never blocks."""
        record = replace(record, ts_usec=self.now_usec())
        if self.json_out:
            self.json_out.write(report.json_line(record.to_dict()) + "\n")
            self.json_out.flush()
        return record

    def other_oom_killers(self) -> list[tuple[int, str]]:
        """Other OOM killers running, from a scan of /proc at most once a
        minute: anyone may ask for ``info`` a hundred times a second, and a
        scan of thousands of processes takes a third of a second."""
        now = time.monotonic()
        if self._others is None or now - self._others[0] >= OTHERS_SCAN_S:
            self._others = (now, self.procfs.other_oom_killers())
        return self._others[1]

    def term_data(self, total_bytes: int) -> dict[str, Any] | None:
        """The SIGTERM step for info: its line, grace and count; None if off."""
        c = self.config
        if not (c.term_redline.permyriad or c.term_redline.bytes_):
            return None
        st = self.state
        return {"term_redline": str(c.term_redline), "term_line_bytes": c.term_line_bytes(total_bytes),
                "grace_ms": c.term_grace_ms, "terms": st.terms, "in_episode": len(st.termed)}

    def thrash_data(self, figs: ThrashFigures | None) -> dict[str, Any] | None:
        """The thrash detector's figures with the limits they are held to."""
        if figs is None:
            return None
        c = self.config
        return {**figs.as_dict(), "limit_refault_permyriad_per_s": c.thrash_refault_limit_permyriad,
                "limit_stall_permyriad": c.thrash_stall_limit_permyriad, "sustain_usec": c.thrash_sustain_ms * 1000,
                "limit_activated_permyriad": thrash_core.MIN_ACTIVATED_PERMYRIAD,
                "limit_activated_rate_permyriad_per_s": thrash_core.activated_limit(core.thrash_limits(c)),
                "limit_io_stall_permyriad": c.thrash_io_stall_limit_permyriad,
                "fired": self.state.thrash.fired}

    def pressure_data(self) -> dict[str, Any]:
        """The pressure limit, and whether dirty pages hold it (core/detect.py)."""
        snap = self.last_snapshot
        hold = self.config.pressure_dirty_hold_permyriad
        return {"limit_permyriad": self.config.pressure_limit_permyriad,
                "dirty_bytes": snap.dirty_bytes if snap is not None else -1,
                "dirty_hold_permyriad": hold,
                "held_by_dirty": bool(snap is not None and waiting_on_disk(snap, hold))}

    def swap_data(self) -> dict[str, Any]:
        """The swap counted in the domain's free and total memory (see domain.py)."""
        snap = self.last_snapshot
        counted = bool(snap is not None and snap.swap_total_bytes)
        return {"count_swap": self.config.count_swap, "counted": counted,
                "free_bytes": snap.swap_free_bytes if counted else 0,
                "total_bytes": snap.swap_total_bytes if counted else 0}

    # -- control -----------------------------------------------------------------
    def info(self) -> tuple[str, dict[str, Any]]:
        st = self.state
        red = self.config.redline
        total = 0
        if self.last_snapshot is not None:
            total = self.last_snapshot.total_bytes
        elif self.domain_gone is None:
            try:
                total = self.domain.snapshot(self.now_usec()).total_bytes
            except DomainGone:
                pass
        red_b = red.resolve_bytes(total)
        sources = {"timer": {"state": "live", "sleep_ms": self.config.sleep_ms,
                             "adaptive": str(self.config.adaptive_sleep).lower(),
                             "next_ms": round(self.next_tick_usec() / 1000, 1)}}
        sources.update({s.name: {"state": "live", **s.stats()} for s in self.sources})
        if self.arm:
            sources["prearm"] = {"state": "live", "armed": self.armed_job.name if self.armed_job else "-",
                                 "kills": st.armed_kills, "armed_cgroup_id": self.arm.armed}
        if self.brake:
            sources["brake"] = {"state": "live", **self.brake.stats()}
        sources.update({name: {"state": "unavailable", "why": why} for name, why in dict(self.unavailable).items()})
        for name in SOURCES:
            if name not in sources and name not in self.config.sources:
                sources[name] = {"state": "off", "why": "not in sources"}
        output = {name: w.stats() for name, w in (("records", self.json_out), ("log", self.log_writer))
                  if hasattr(w, "stats")}
        if self.control is not None:
            output["control"] = self.control.stats()
        if self.notifier is not None and self.notifier.enabled:
            output["systemd"] = self.notifier.stats()
        if self.kernel_log is not None:
            output["kmsg"] = self.kernel_log.stats()
        if self.marks is not None:
            output["marks"] = self.marks.stats()
        if self.hooks is not None:
            output["hooks"] = self.hooks.stats()
        if self.metrics is not None:
            output["metrics"] = self.metrics.stats()
        elif self.metrics_problem:
            output["metrics"] = {"state": "unavailable", "why": self.metrics_problem}
        data = {"running": self.running, "printing": self.printing, "simulating_lowmem": self.simulate_lowmem,
                "sleep_ms": self.config.sleep_ms, "redline": str(red), "redline_bytes": red_b,
                "domain": self.domain.name, "domain_path": self.domain.path, "dry_run": self.config.dry_run,
                "domain_state": "live" if self.domain_gone is None else f"gone: {self.domain_gone}",
                "kills": st.kills, "armed_kills": st.armed_kills, "kernel_kills_seen": st.kernel_kills_seen,
                "term": self.term_data(total),
                "wakes": self.wakes, "walk_listings": dict(self.walk_listings),
                "background_listings": dict(self.lister.counts) if self.lister is not None else None,
                "job_reads": self.job_reads(),
                "sources": sources, "pid": self.self_pid,
                "memory": {k.lower() + "_bytes": v for k, v in status_bytes().items()},
                "pressure_file": self.domain.pressure_path, "pressure": self.pressure_data(),
                "thrash": self.thrash_data(self.last_thrash),
                "swap": self.swap_data(),
                "other_oom_killers": self.other_oom_killers(),
                "output": output}
        return report.info_text(data, status_bytes()), data

    def handle(self, cmd: str) -> tuple[bool, str, dict[str, Any]]:
        """A control command, in the control server's thread: it reads the
        loop's state or sets a flag and nudges the loop, never more."""
        if cmd == "info":
            for _ in range(3):
                try:
                    text, data = self.info()
                    break
                except RuntimeError:     # a dict the loop changed while it was read
                    continue
            else:
                return False, "info: the daemon's state kept changing; try again", {}
            return True, text, data
        if cmd == "rank":
            snap = self.domain.snapshot(self.now_usec())
            # Not self.jobs(): the loop's own listing (and the refault marks
            # the thrash sufferers are measured from) are the loop's. Every
            # job read in full: what an operator asks for is shown as it is.
            # A Cgroupfs of its own: this runs in the control thread, and the
            # loop's table is mutated by the loop as it lists and reads.
            if self._rank_fs is None:
                self._rank_fs = Cgroupfs(self.cgroupfs.root, self.procfs)
            jobs = self._rank_fs.jobs(self.domain.path, self.config.jobs, self.keep_out, reuse=False)
            ranking = rank(jobs, self.policy, snap.total_bytes)
            return True, report.format_ranking(ranking), {"ranking": [report.candidate_record(c) for c in ranking.candidates]}
        if cmd == "start":
            self.running = True
        elif cmd == "stop":
            self.running = False        # the loop disarms
        elif cmd == "print":
            self.printing = not self.printing
        elif cmd == "lowmem":
            self.simulate_lowmem = True
        self._nudge()
        return True, f"OOM: {cmd}: done", {"running": self.running, "printing": self.printing,
                                           "simulating_lowmem": self.simulate_lowmem}

    def _nudge(self) -> None:
        try:
            os.write(self._nudge_w, b"x")
        except BlockingIOError:
            pass        # the pipe is full: the loop has been nudged already

    # -- the loop -----------------------------------------------------------------
    def run(self) -> None:
        """Wait on the control socket, every source's fds and the timer
        deadline together (one epoll); wake the core on anything."""
        ep = self._ep = select.epoll()
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        own_control = self.control is None
        if own_control:
            self.control = ControlServer(self.config.control_socket, self.handle)
        ep.register(rfd, select.EPOLLIN)
        ep.register(self._nudge_r, select.EPOLLIN)
        self.control.start()
        by_fd = self._by_fd
        for src in self.sources:
            for fd in src.fds():
                # PSI and kernfs files signal with POLLPRI and always poll
                # readable, so each source says which of the two it means.
                ep.register(fd, getattr(src, "poll_events", select.EPOLLIN))
                by_fd[fd] = src
        self._live = ",".join(["timer", *(s.name for s in self.sources), *(["prearm"] if self.arm else [])])
        log.info("OOM: oomkiller %s watching %s, redline %s, sleep %d ms, sources %s%s", _version(),
                 self.domain.name, self.config.redline, self.config.sleep_ms, self._live,
                 ", dry run" if self.config.dry_run else "")
        deadline = self.now_usec()
        gc_was, switch_was = gc.isenabled(), sys.getswitchinterval()
        notifier = self.notifier if self.notifier is not None and self.notifier.enabled else None
        if notifier is not None:
            # The sources are live and the control socket is served: ready,
            # with the redline in bytes too.
            if self.last_snapshot is None:
                try:
                    self.last_snapshot = self.domain.snapshot(deadline)
                except (DomainGone, OSError):
                    pass
            self._status_sent = self._status()
            notifier.ready(self._status_sent, deadline)
        try:
            # The collector runs on the loop, when memory is plenty
            # (``_collect``), never in the middle of a walk, or of the
            # lister's listing while an event waits for the GIL: with ten
            # thousand jobs, one pass over the objects takes some 40 ms. What
            # start-up made lives as long as the daemon, and is left out of
            # every pass.
            gc.collect()
            gc.freeze()
            gc.disable()
            self._collected_usec = self.now_usec()
            # A thread that wants the GIL waits for the one holding it to
            # give it away at most this long: the loop, woken by an event
            # while the lister lists, waits so long for each of its reads
            # until the listing is held (``wake``), 5 ms each by default.
            sys.setswitchinterval(min(switch_was, SWITCH_INTERVAL_S))
            while not self._quit:
                wake_at = deadline
                if notifier is not None and notifier.next_ping_usec is not None:
                    wake_at = min(wake_at, notifier.next_ping_usec)
                timeout = max(0.0, (wake_at - self.now_usec()) / 1e6)
                ready = ep.poll(timeout)
                events: list[PressureEvent] = []
                for fd, mask in ready:
                    if fd == rfd:
                        _drain_pipe(rfd)
                    elif fd == self._nudge_r:
                        _drain_pipe(fd)
                        if not self.running:
                            self._disarm_now()
                        elif self.simulate_lowmem:
                            events.append(PressureEvent(Source.CONTROL, EventKind.LOWMEM, timestamp_usec=self.now_usec()))
                        if self._awaiting_listing and self.running:
                            # the listing a need waited for is ready: a tick finishes it
                            self._awaiting_listing = False
                            events.append(PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=self.now_usec(),
                                                        detail="jobs listed"))
                    elif fd in by_fd:
                        events.extend(self._drain(ep, by_fd, fd, mask))
                now = self.now_usec()
                if notifier is not None:
                    # From the loop itself: a loop that stalls stops pinging,
                    # and systemd restarts the daemon.
                    notifier.ping(now)
                if now >= deadline:
                    events.append(PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=now))
                    deadline = now + self.config.sleep_ms * 1000
                if events and self.running and not self._quit:
                    try:
                        self.wake(events)
                    except DomainGone as e:
                        self._domain_gone(e)
                    except Exception:
                        # A read that failed (a cgroup removed under us), a map
                        # update bcc refused: log it and keep watching. The
                        # next wake starts from a fresh snapshot.
                        self._failed("wake failed")
                    deadline = min(deadline, self.now_usec() + self.next_tick_usec())
                if notifier is not None:
                    self._send_status(notifier)
                self._collect()
                if self.metrics is not None and self.now_usec() - self._published_usec >= PUBLISH_USEC:
                    # only for the endpoint: it reads the eBPF counters' maps
                    self.publish()
        finally:
            if notifier is not None:
                notifier.stopping(f"stopping after {self.kills} kills")
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            ep.close()
            self._ep = None
            os.close(rfd)
            os.close(wfd)
            if own_control:
                self.control.close()
                self.control = None
            else:
                self.control.stop()         # no more requests; its maker closes it
            self._disarm_now()
            if self.lister is not None:
                self.lister.close()
            gc.unfreeze()
            if gc_was:
                gc.enable()
            sys.setswitchinterval(switch_was)
            log.info("OOM: oomkiller stopped after %d kills", self.kills)

    def _collect(self) -> None:
        """A pass of the garbage collector, on the loop, every
        GC_CALM_EVERY_USEC while the domain is calm (free memory above the
        arm line, nothing armed, no walk in that time), and at least every
        GC_EVERY_USEC unless free memory is below the redline: only cycles
        wait for it (everything else is freed as it is dropped), and they
        are few."""
        now = self.now_usec()
        since = now - self._collected_usec
        if since < GC_CALM_EVERY_USEC:
            return
        snap = self.last_snapshot
        calm = (snap is not None and snap.free_bytes >= self.config.arm_line_bytes(snap.total_bytes)
                and self.state.armed is None and now - (self.state.last_walk_usec or 0) >= GC_CALM_EVERY_USEC)
        # past GC_EVERY_USEC, whatever it is but short of memory (below the
        # redline a walk may be due at any moment)
        short = snap is None or snap.free_bytes < self.config.redline.resolve_bytes(snap.total_bytes)
        if calm or (since >= GC_EVERY_USEC and not short):
            gc.collect()
            done = self.now_usec()
            self.gc_passes += 1
            self.gc_latest_usec = done - now
            self._collected_usec = done

    def publish(self) -> None:
        """A copy of the counters for the metrics thread: plain values, one
        reference swap; no reads but the eBPF source's own counters."""
        now = self.now_usec()
        self._published_usec = now
        snap = self.last_snapshot
        total = snap.total_bytes if snap is not None else None
        ebpf = next((s for s in self.sources if s.name == "ebpf"), None)
        self.published = {
            "published_usec": now, "running": self.running,
            "domain_free_bytes": snap.free_bytes if snap is not None else None,
            "domain_total_bytes": total,
            "redline_bytes": self.config.redline.resolve_bytes(total) if total else None,
            "arm_line_bytes": self.config.arm_line_bytes(total) if total and self.arm is not None else None,
            "wakes_by_source": dict(self.wakes_by_source), "kills": dict(self.kill_counts),
            "freed_bytes": self.freed_bytes_total, "armed_kills": self.state.armed_kills,
            "kernel_kills_seen": self.state.kernel_kills_seen,
            "ebpf": None if ebpf is None else {k: getattr(ebpf, k, 0) for k in
                                               ("lost_perf", "rate_limited", "outside_domain")},
            "terms": dict(self.term_counts),
            "hooks": None if self.hooks is None else {k: self.hooks.stats()[k]
                                                      for k in ("ok", "failed", "timed_out", "dropped")},
            "event_to_decision_seconds": self.event_to_decision.snapshot(),
            "signal_to_empty_seconds": self.signal_to_empty.snapshot(),
        }

    def _status(self) -> str:
        """systemd's STATUS=: the domain, the redline, the live sources, and
        the kills so far; a few string operations, no reads."""
        name = report.printable(self.domain.name)
        if self.domain_gone is not None:
            state = f"domain {name} is gone, waiting for it"
        elif not self.running:
            state = f"stopped (`oomkiller start` starts it), domain {name}"
        else:
            state = f"watching {name}"
        red = self.config.redline.show()
        if self.last_snapshot is not None and self.config.redline.permyriad:
            red += f" ({report.format_size(self.config.redline.resolve_bytes(self.last_snapshot.total_bytes))})"
        text = f"{state}, redline {red}, sources {self._live}"
        if self.unavailable:
            text += f" ({', '.join(self.unavailable)} unavailable)"
        if self.config.dry_run:
            text += ", dry run"
        if self.state.kills:
            text += f"; kills {self.state.kills}, last {self._last_kill or '?'}"
        return text

    def _send_status(self, notifier: Notifier) -> None:
        """STATUS= again when it changed (a kill, a stop, the domain gone)."""
        text = self._status()
        if text != self._status_sent:
            self._status_sent = text
            notifier.status(text)

    def _drain(self, ep: Any, by_fd: dict[int, EventSource], fd: int, mask: int) -> list[PressureEvent]:
        src = by_fd[fd]
        # kernfs reports a change with EPOLLERR|EPOLLPRI, and a removed file
        # the same way, forever: only the file being gone tells them apart.
        if mask & (select.EPOLLERR | select.EPOLLHUP) and not getattr(src, "alive", lambda _fd: True)(fd):
            ep.unregister(fd)
            del by_fd[fd]
            if getattr(src, "forget", lambda _fd: False)(fd):
                return []       # a job's trigger, gone with its job
            self.unavailable[f"{src.name} fd {fd}"] = "the watched file went away"
            log.warning("OOM: source %s: a watched file went away; no longer polled", src.name)
            return []
        try:
            return src.drain(fd)
        except Exception:
            self._failed(f"source {src.name} failed to read its events")
            return []

    def _domain_gone(self, e: DomainGone) -> None:
        """The domain's cgroup was removed: one warning, nothing armed, and
        wakes wait (a cheap check each) until a cgroup is there again."""
        if self.domain_gone is None:
            log.warning("OOM: %s: not watching it until it is back", e)
            self._disarm_now()
        self.domain_gone = str(e)

    def _domain_back(self) -> None:
        """A cgroup is at the domain's path again: a new one, so nothing
        learned from the old one holds. Triggers and thresholds that were on
        the old one's files stay gone (``info`` lists them); the redline
        timer, the host's PSI trigger and eBPF watch the new one."""
        log.warning("OOM: domain %s is back: watching it again", report.printable(self.domain.path))
        self.domain_gone = None
        self.last_snapshot = None
        self.state = core.domain_replaced(self.state)
        if self.domain.find_pressure():
            self._watch_domain_pressure(renew=True)
        if not self.domain.is_host:
            # The program's domain filter held the old cgroup: every event of
            # the new one would be dropped (and the armed kill never fire).
            v2 = self.cgroupfs.v2_counterpart(self.domain.path)
            for s in self.sources:
                if hasattr(s, "set_domain"):
                    s.set_domain(v2)

    def _failed(self, what: str) -> None:
        """Log the exception being handled: with its traceback the first
        time, then the same error at most once a minute with a count, so a
        fault that repeats on every wake does not flood the journal."""
        e = sys.exc_info()[1]
        key = (what, type(e).__name__, str(e))
        now = self.now_usec()
        seen = self._failures.get(key)
        if seen is not None and now - seen[0] < FAILURE_LOG_USEC:
            seen[1] += 1
            return
        if seen is not None:
            log.error("OOM: %s: %s: %s (%d more times in the last minute)", what, key[1], key[2], seen[1])
        else:
            if len(self._failures) >= 64:
                self._failures.clear()
            log.exception("OOM: %s", what)
        self._failures[key] = [now, 0]

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._quit = True


def _rival(ranking: Ranking, importance: Any, fresh: set[int]) -> int:
    """The score of the first job of ``importance``'s class not read again
    (``fresh`` holds those that were) that is killable, or empty (it may
    have filled since): the class's largest, as the walk is ordered."""
    cands = ranking.candidates
    if len(ranking.keys) != len(cands):     # not ordered by ``rank``: look at them all
        return max((c.score_bytes for c in cands if c.importance == importance and id(c.job) not in fresh
                    and (c.killable or not c.job.procs)), default=0)
    for i in range(bisect.bisect_left(ranking.keys, (importance,)), len(cands)):
        c = cands[i]
        if c.importance != importance:
            break       # past the class
        if id(c.job) not in fresh and (c.killable or not c.job.procs):
            return c.score_bytes
    return 0


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _version() -> str:
    from . import __version__
    return __version__
