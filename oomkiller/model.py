"""Core types: frozen values with units in their names.

Everything the policy core (detect, rank, decide) sees is one of these: plain,
immutable, and free of file handles, clocks and kernel objects, so the core can
be tested on hand-built values.
"""
from __future__ import annotations

import dataclasses
import functools
import enum
from dataclasses import dataclass
from typing import Any


class Importance(enum.IntEnum):
    """A job's importance class; the walk goes from PREFER to AVOID.

    PROTECT jobs are never killed: they appear in the walk as ``(skip)``.
    """

    PREFER = 0
    NORMAL = 1
    AVOID = 2
    PROTECT = 3


@dataclass(frozen=True)
class MemorySnapshot:
    """Free and total memory of the domain at one instant.

    ``free_bytes`` is what the domain can still hand out without the kernel
    running out: ``MemAvailable`` for the host, for a cgroup its limit minus
    what it cannot give back (see ``domain.py``), plus the room left in the
    swap it may use; ``total_bytes`` is its memory plus that swap.
    """

    domain: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    reclaimable_bytes: int
    taken_usec: int
    full_stall_usec: int = -1   # cumulative "full" memory stall of the domain (PSI total=), -1 if unknown
    some_stall_usec: int = -1   # cumulative "some" memory stall of the domain (PSI total=), -1 if unknown
    refault_file_pages: int = -1    # cumulative workingset_refault_file of the domain, -1 if unknown
    file_lru_bytes: int = -1        # active_file + inactive_file of the domain, -1 if unknown
    # The swap counted in free_bytes / total_bytes (0 on a host with none, or
    # with count_swap off): the room left in swap, and all of it.
    swap_free_bytes: int = 0
    swap_total_bytes: int = 0
    # cumulative workingset_activate_file: the refaults the kernel put
    # straight back on the active list (evicted within the working set's
    # size), -1 if unknown; and the refault counter they are a share of.
    # The domain's own, or the host's where the domain counts no
    # activations (a v1 memory cgroup): then ``activations_host``.
    activate_file_pages: int = -1
    activate_of_pages: int = -1
    activations_host: bool = False
    # file pages of the domain waiting for the disk: dirty and under
    # writeback (the host's Dirty + Writeback), -1 if unknown
    dirty_bytes: int = -1
    # cumulative "some" I/O stall of the domain (PSI total= of io.pressure
    # beside its memory.pressure), -1 if unknown: a working set read back
    # from a slow disk stalls on I/O more than on memory (core/thrash.py)
    io_some_stall_usec: int = -1
    # cumulative major faults of the domain's tasks (pgmajfault of its
    # memory.stat: mapped file pages, program text among them, read from
    # the disk), -1 if unknown and for the host
    major_faults: int = -1
    # the domain's charge its memory.stat does not account for yet, beyond
    # a slack (cgroupfs.stat_lag_bytes): the kernel sums the statistics
    # late, so a fast fill shows in the usage before it shows as cache or
    # anonymous memory; 0 if none, and for the host
    stat_lag_bytes: int = 0
    # the anonymous memory the domain's memory.stat names (v2 anon, v1
    # rss), -1 if unknown and for the host: what a fresh count of the
    # processes' own anonymous memory is held against, to tell a lag of a
    # hog's memory from one of page cache (Daemon._lag_is_anon)
    stat_anon_bytes: int = -1

    @property
    def ram_total_bytes(self) -> int:
        """The domain's memory without its swap: the limit, or MemTotal."""
        return self.total_bytes - self.swap_total_bytes

    @property
    def ram_free_bytes(self) -> int:
        """Free memory without the room left in swap."""
        return self.free_bytes - self.swap_free_bytes


class Source(str, enum.Enum):
    """What woke the core. A ``str``: it is written as its value in records."""

    EBPF = "ebpf"
    PSI = "psi"
    MEMCG = "memcg"
    TIMER = "timer"
    CONTROL = "control"

    def __str__(self) -> str:
        return self.value


class EventKind(str, enum.Enum):
    """What a source saw. The BPF program's kinds, then the others'."""

    MEMCG_RECLAIM = "memcg_reclaim"
    DIRECT_RECLAIM = "direct_reclaim"
    STALL = "stall"
    KSWAPD = "kswapd"
    RECLAIM_RETRY = "reclaim_retry"
    COMPACT_RETRY = "compact_retry"
    KERNEL_OOM_VICTIM = "kernel_oom_victim"     # the kernel's OOM killer chose a task
    ARMED_KILL = "armed_kill"                   # the armed job was killed at its failed reclaim
    PSI_SOME = "psi_some"
    MEMCG_THRESHOLD = "memcg_threshold"
    MEMCG_EVENTS = "memcg_events"
    TICK = "tick"
    LOWMEM = "lowmem"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PressureEvent:
    """Evidence that memory may be short: it wakes the core, it is not the truth."""

    source: Source
    kind: EventKind | str  # a str only for a kind this version does not know (from a newer BPF program)
    cgroup_id: int = 0     # cgroup v2 id (inode) where the pressure was seen, 0 if unknown
    pid: int = 0
    stall_usec: int = 0
    timestamp_usec: int = 0   # CLOCK_MONOTONIC
    detail: str = ""


@dataclass(frozen=True)
class Proc:
    """One process of a job, as read from procfs."""

    pid: int
    name: str
    committed_bytes: int    # RssAnon + RssShmem + VmSwap: what reclaim cannot drop
    oom_score_adj: int
    state: str              # one-letter state from /proc/PID/stat
    start_ticks: int        # start time in clock ticks since boot: with pid, a stable identity
    kernel_thread: bool = False
    private_bytes: int = 0  # RssAnon + VmSwap: memory that is the process's own, wherever it moves


@dataclass(frozen=True)
class Job:
    """A cgroup and the processes of its whole subtree.

    A job is identified by its cgroup inode *and* path, since paths are reused.
    """

    name: str               # path relative to the domain's cgroup (host: to the root)
    path: str               # absolute path of the cgroup folder
    inode: int
    procs: tuple[Proc, ...] = ()
    descendants: int = 0    # number of cgroups below this one
    xattrs: tuple[tuple[str, str], ...] = ()
    oom_group: bool = False
    v2_id: int = 0          # cgroup v2 id of the job (same as inode on pure v2 hosts)
    v2_path: str = ""       # the v2 cgroup holding the job and nothing else, if any
    charged_bytes: int = 0  # anon + shmem + swap charged to the cgroup (memory.stat), 0 if unknown
    # names and trusted xattrs of the descendants owned by root: those that can protect the job
    inner: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # xattrs set on a cgroup of the job but not honoured (it is not owned by root), each as a reason
    ignored_xattrs: tuple[str, ...] = ()
    # names and owners of the descendants not owned by root: their owner chose
    # the name, so it cannot protect the job
    user_inner: tuple[tuple[str, int], ...] = ()
    # what the listing could not read of the job (a subtree too deep or too
    # large, an unexpected error), each as a reason
    notes: tuple[str, ...] = ()
    # processes are in its subtree, even if none could be listed (one moved
    # between its cgroups while they were read): set by cgroupfs
    populated: bool = False
    # what made the cgroup a job (see core.jobrule): "systemd unit", "glob '…'", ...
    rule: str = ""
    # who the job is beyond its cgroup (pods.py): a Kubernetes pod's
    # ("pod_uid", …), ("pod", "namespace/name"), ("containers", "a,b")
    labels: tuple[tuple[str, str], ...] = ()
    # cumulative workingset_refault_file of its subtree, -1 if unknown: how
    # much it suffers thrashing (core/thrash.py ``sufferers``)
    refault_file_pages: int = -1
    # boot time in clock ticks just before its processes were listed (0 if
    # unknown): a process in ``procs`` that started before it is the one
    # listed, whatever its pid names later (the killer's ``_ranked_away``)
    listed_ticks: int = dataclasses.field(default=0, compare=False)
    # the cgroup's usage (memory.current; memory.usage_in_bytes on v1) as
    # its charge was read, -1 if unknown: what a walk compares it with to
    # find the jobs that grew since a listing (Daemon._confirmed)
    usage_bytes: int = dataclasses.field(default=-1, compare=False)

    @functools.cached_property
    def committed_bytes(self) -> int:
        """The cgroup's own charge where the kernel gives it, else the sum of
        its processes (which counts shared memory once per process). Never
        less than the private memory of its largest process: a charge stays
        with the cgroup where the page was first touched, so a process that
        moved into this job from another brings its memory without its
        charge. The largest one, not the sum: forked workers share pages
        copy-on-write, and each one's RssAnon counts them."""
        if not self.charged_bytes:
            return sum(p.committed_bytes for p in self.procs)
        return max(self.charged_bytes, max((p.private_bytes for p in self.procs), default=0))


@dataclass(frozen=True)
class Candidate:
    """A job in the ranked walk, with its place and the reasons for it."""

    job: Job
    importance: Importance
    score_bytes: int
    killable: bool
    reasons: tuple[str, ...] = ()


# A ranking made in the lister's thread gives the loop its turn this often
# (``Ranking.named``, ``core.rank.rank``'s ``between``), in jobs.
BETWEEN_EVERY = 128


@dataclass(frozen=True)
class Ranking:
    """The ordered walk: killable candidates first to last, skipped ones where they fall.

    One made by ``core.rank.rank`` also keeps each candidate's sort key and
    what it was ranked for (the policy, the domain's total), so that a few
    jobs read again can be placed again without sorting every job
    (``core.rank.rerank``)."""

    candidates: tuple[Candidate, ...] = ()
    keys: tuple[tuple, ...] = dataclasses.field(default=(), compare=False, repr=False)
    made_for: Any = dataclasses.field(default=None, compare=False, repr=False)    # (policy, total bytes)

    def killable(self) -> tuple[Candidate, ...]:
        return tuple(self.walk())

    def walk(self):
        """The killable candidates, first to last, as they are asked for."""
        return (c for c in self.candidates if c.killable)

    def top(self, n: int) -> tuple[Candidate, ...]:
        """The first ``n`` killable candidates, without going further."""
        out = []
        for c in self.walk():
            if len(out) == n:
                break
            out.append(c)
        return tuple(out)

    def jobs(self) -> tuple[Job, ...]:
        return tuple(c.job for c in self.candidates)

    def named(self, between: Any = None) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """Where each job is in the walk, by its v2 cgroup id and by each of
        its processes' pids: the jobs an event names are found without
        looking at every job. Made once per ranking (the lister's thread
        makes it for each listing's, calling ``between`` every
        BETWEEN_EVERY jobs); kept without ``functools.cached_property``,
        whose lock (before Python 3.12) all rankings share."""
        got = self.__dict__.get("_named")
        if got is not None:
            return got
        by_id: dict[int, list[int]] = {}
        by_pid: dict[int, list[int]] = {}
        for i, c in enumerate(self.candidates):
            if between is not None and i % BETWEEN_EVERY == 0:
                between()
            job = c.job
            if job.v2_id:
                by_id.setdefault(job.v2_id, []).append(i)
            for p in job.procs:
                by_pid.setdefault(p.pid, []).append(i)
        got = self.__dict__["_named"] = (by_id, by_pid)
        return got

    def jobs_named(self, cgroup_ids, pids) -> list[Job]:
        """The jobs whose v2 cgroup is one of ``cgroup_ids`` or that hold
        one of ``pids``, in the walk's order."""
        by_id, by_pid = self.named()
        at = {i for cid in cgroup_ids for i in by_id.get(cid, ())}
        at.update(i for pid in pids for i in by_pid.get(pid, ()))
        return [self.candidates[i].job for i in sorted(at)]


@dataclass(frozen=True)
class Detection:
    """What ``detect`` concluded from one snapshot."""

    low: bool
    shortfall_bytes: int
    free_bytes: int
    delta_bytes: int
    simulated: bool = False
    reason: str = ""
    # the pressure limit would have fired but dirty pages held it: why
    held: str = ""
    # the redline would have fired but the domain's statistics lag its
    # charge (MemorySnapshot.stat_lag_bytes): why
    lag_held: str = ""


@dataclass(frozen=True)
class KillDecision:
    """Whether to walk the ranking now, and why (not)."""

    act: bool
    reason: str


@dataclass(frozen=True)
class KillResult:
    """What happened when the killer acted on one candidate."""

    job: Job
    ok: bool
    dry_run: bool
    method: str                         # "cgroup.kill", "signal", "none"; "term" for the SIGTERM step
    signalled_pids: tuple[int, ...] = ()
    error: str = ""
    signal_to_empty_usec: int = 0
    signal_to_exit_usec: int = 0        # until the last signalled process exited (its pidfd polled)
    freed_bytes: int = 0
    left_pids: tuple[int, ...] = ()     # still in the job when the kill gave up (kill_timeout_ms)
    thawed: bool = False                # the job's v1 freezer cgroup, frozen by someone else, was thawed
    # signalled through their pidfds, alive outside the job when the kill gave up
    evaded_pids: tuple[int, ...] = ()
    still_populated: bool = False       # the kernel counted processes in the job when the kill gave up

    @property
    def emptied(self) -> bool:
        """Signalled by us, the job emptied and every process we signalled
        (and kept a pidfd of) died: ``signal_to_empty_usec`` holds. Never for
        a SIGTERM (method ``term``), which is not waited for."""
        return (self.ok and not self.dry_run and not self.left_pids and not self.evaded_pids
                and not self.still_populated and self.method != "term")


# -- the JSON records (--json-log): one type each, one serialiser, read back through the type ----------

class Result(str, enum.Enum):
    """How a decision ended."""

    HELD = "held"               # low, but within the post-kill delay
    RECOVERED = "recovered"     # free again at the re-check: no kill
    KILLED = "killed"
    DRY_RUN = "dry_run"
    NO_VICTIM = "no_victim"     # no candidate could be killed
    TERMED = "termed"           # the SIGTERM step: the top job was sent SIGTERM

    def __str__(self) -> str:
        return self.value


class Record:
    """What the three records share: ``to_dict()`` for the writer, and, for
    readers, mapping access by field name only. ``rec[key]`` for a field the
    type does not have is a KeyError, and so is ``get()`` of a name no record
    type has, also with a default: a reader that asks for a renamed field
    fails instead of silently counting nothing."""

    EVENT = ""

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    def _check(self, key: str) -> None:
        if key not in self.field_names():
            raise KeyError(f"a {self.EVENT!r} record has no field {key!r}")

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Like a dict's, for a field of any record type (readers filter mixed
        records by one type's field); a name no record has is a KeyError."""
        if key not in self.field_names():
            if key not in ALL_RECORD_FIELDS:
                self._check(key)
            return default
        value = getattr(self, key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.field_names() and getattr(self, key) is not None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (None left out), tuples as lists."""
        out: dict[str, Any] = {"ts_usec": getattr(self, "ts_usec"), "event": self.EVENT}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and f.name not in out:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class DecisionRecord(Record):
    """One walk, or a walk held back (README: "The log")."""

    EVENT = "oom_decision"
    domain: str
    decision: str                   # what made the domain low, "armed kill in the kernel", or
                                    # "free below term_redline" (the SIGTERM step)
    redline_bytes: int
    shortfall_bytes: int
    simulated: bool
    dry_run: bool
    snapshot: dict
    result: str = ""                # a Result
    woken_by: tuple = ()            # the first events, as dicts
    events: int = 0
    ranking: tuple = ()             # candidate dicts (log.candidate_record)
    attempts: tuple = ()            # attempt dicts (log.result_record)
    victim: dict | None = None
    freed_bytes: int | None = None
    free_at_recheck_bytes: int | None = None
    # the thrash detector's figures and limits when it made the domain low
    # (core/thrash.py): which signal crossed which limit
    thrash: dict | None = None
    timings_usec: dict = dataclasses.field(default_factory=dict)
    ts_usec: int = 0
    event: str = "oom_decision"


@dataclass(frozen=True)
class ArmedRecord(Record):
    """A job armed in the kernel."""

    EVENT = "armed"
    domain: str
    job: str
    cgroup_id: int
    free_bytes: int
    arm_line_bytes: int
    woken_by: tuple = ()
    timings_usec: dict = dataclasses.field(default_factory=dict)
    ts_usec: int = 0
    event: str = "armed"


@dataclass(frozen=True)
class KernelKillRecord(Record):
    """The kernel's own OOM killer chose a task of the domain."""

    EVENT = "kernel_oom_kill"
    domain: str
    pid: int
    cgroup_id: int
    detail: str
    ts_usec: int = 0
    event: str = "kernel_oom_kill"


RECORD_TYPES: dict[str, type[Record]] = {t.EVENT: t for t in (DecisionRecord, ArmedRecord, KernelKillRecord)}
ALL_RECORD_FIELDS = frozenset().union(*(t.field_names() for t in RECORD_TYPES.values()))


def parse_record(d: dict[str, Any]) -> Record:
    """A record as the daemon wrote it (one JSON line, loaded), back as its
    type. A field the type does not know, or one missing, is a ValueError:
    writer and readers share one schema."""
    if not isinstance(d, dict) or d.get("event") not in RECORD_TYPES:
        raise ValueError(f"not an oomkiller record: {str(d)[:80]}")
    cls = RECORD_TYPES[d["event"]]
    unknown = set(d) - cls.field_names()
    if unknown:
        raise ValueError(f"a {d['event']!r} record with unknown fields {sorted(unknown)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"a {d['event']!r} record that does not fit its type: {e}") from None


def labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    """Who a job is, from its ``labels``: ``pod default/web (uid 3f…),
    containers nginx,log``."""
    d = dict(labels)
    pod = d.get("pod", "")
    text = f"pod {pod} (uid {d.get('pod_uid', '?')})" if pod else f"pod uid {d.get('pod_uid', '?')}"
    if d.get("containers"):
        text += f", containers {d['containers']}"
    return text
