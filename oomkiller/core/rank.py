"""The ranker (the seed's OOM-ranker): the ordered walk a kill would take.

Order: importance class first (prefer, normal, avoid; protect is never
killed), then a score, largest first. The class comes from, in this order:

1. holding PID 1 or oomkiller itself, or a protected cgroup below it (by
   glob or ``user.oomd_omit``) owned by root: protect, always. Whoever owns
   a cgroup below the job chose its name, and could otherwise make their
   whole job unkillable with a ``mkdir``; a protect glob matching such a
   cgroup is named in the reasons;
2. the config's globs (protect, then avoid, then prefer; first match wins):
   the operator said so explicitly;
3. the cgroup's systemd-oomd xattrs: ``user.oomd_omit`` (protect),
   ``user.oomd_avoid``, ``user.oomd_prefer``; only those of cgroups owned
   by root reach the ranker (see ``Cgroupfs.trusted_xattrs``), and the
   ignored ones are named in the reasons;
4. a Kubernetes pod's QoS class, from where the kubelet put its cgroup, in
   the kubelet's own eviction order: BestEffort (prefer), Burstable
   (normal), Guaranteed (avoid);
5. otherwise normal.

The score is the job's committed memory (what its cgroup is charged, kernel
memory included, less the file cache the kernel can give back, plus swap:
``Cgroupfs.charged_bytes``; it counts shared memory once), plus the kernel's own ``oom_score_adj`` bias taken from the job's
highest adjustment among killable processes: ``adj * domain_total / 1000``, as
``oom_badness()`` does, so existing per-process settings keep meaning what
they mean to the kernel. A job with ``memory.oom.group`` set is kept whole
(see cgroupfs) and says so in its reasons.

A job is skipped when it has no killable process: it is empty, or every process
has ``oom_score_adj=-1000``, is a kernel thread or a zombie.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable, Sequence

from ..model import BETWEEN_EVERY, Candidate, Importance, Job, Proc, Ranking, labels_text

OOM_SCORE_ADJ_MIN = -1000
# A user may make thousands of cgroups matching a protect glob: name a few.
IGNORED_BELOW_SHOWN = 3
OOM_SCORE_ADJ_MAX = 1000

_XATTR_CLASS = (
    ("user.oomd_omit", Importance.PROTECT),
    ("user.oomd_avoid", Importance.AVOID),
    ("user.oomd_prefer", Importance.PREFER),
)


# The kubelet's cgroup layout, from the top of the domain (the host's, where
# only root makes cgroups: a user naming a cgroup of theirs like a pod must not
# move their job to another class): systemd driver
# (kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice,
# kubepods.slice/kubepods-pod<uid>.slice for Guaranteed) and cgroupfs driver
# (kubepods/burstable/pod<uid>, kubepods/pod<uid>).
_POD_QOS = (
    (re.compile(r"kubepods\.slice/kubepods-besteffort\.slice/kubepods-besteffort-pod[^/]*\.slice"
                r"|kubepods/besteffort/pod[^/]*"), "BestEffort", Importance.PREFER),
    (re.compile(r"kubepods\.slice/kubepods-burstable\.slice/kubepods-burstable-pod[^/]*\.slice"
                r"|kubepods/burstable/pod[^/]*"), "Burstable", Importance.NORMAL),
    (re.compile(r"kubepods\.slice/kubepods-pod[^/]*\.slice|kubepods/pod[^/]*"), "Guaranteed", Importance.AVOID),
)


def pod_qos(name: str) -> tuple[str, Importance] | None:
    """A pod job's QoS class and the importance it gives, by its cgroup's path."""
    for pattern, qos, imp in _POD_QOS:
        if pattern.fullmatch(name):
            return qos, imp
    return None


def glob_match(name: str, pattern: str) -> bool:
    """Match a job name against a glob the way pathlib does, right-anchored:
    ``*.service`` matches a service at any depth; a leading ``/`` anchors the
    pattern at the domain (``/system.slice/*``)."""
    return PurePosixPath("/" + name).match(pattern)


def xattr_set(value: str) -> bool:
    """Whether an oomd xattr's value turns it on (systemd writes "1")."""
    return value.strip() not in ("", "0")


@dataclass(frozen=True)
class Policy:
    protect: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    self_pid: int = 0


def killable_proc(p: Proc, self_pid: int) -> bool:
    return (p.pid != 1 and p.pid != self_pid and not p.kernel_thread
            and p.oom_score_adj > OOM_SCORE_ADJ_MIN and p.state not in ("Z", "X"))


def classify(job: Job, policy: Policy) -> tuple[Importance, str]:
    pids = {p.pid for p in job.procs}
    if 1 in pids:
        return Importance.PROTECT, "holds PID 1"
    if policy.self_pid and policy.self_pid in pids:
        return Importance.PROTECT, "holds oomkiller itself"
    # Killing a job kills its whole subtree: a protected cgroup inside it
    # protects the job, if root made it (``job.inner`` holds only those).
    for name, xattrs in job.inner:
        if any(glob_match(name, g) for g in policy.protect):
            return Importance.PROTECT, f"holds protected '{name}'"
        if xattr_set(dict(xattrs).get("user.oomd_omit", "")):
            return Importance.PROTECT, f"holds protected '{name}' (xattr user.oomd_omit)"
    for globs, imp in ((policy.protect, Importance.PROTECT), (policy.avoid, Importance.AVOID),
                       (policy.prefer, Importance.PREFER)):
        for g in globs:
            if glob_match(job.name, g):
                return imp, f"{imp.name.lower()}: glob '{g}'"
    xattrs = dict(job.xattrs)
    for name, imp in _XATTR_CLASS:
        if xattr_set(xattrs.get(name, "")):
            return imp, f"{imp.name.lower()}: xattr {name}"
    qos = pod_qos(job.name)
    if qos is not None:
        return qos[1], f"{qos[1].name.lower()}: Kubernetes QoS {qos[0]}"
    return Importance.NORMAL, "normal"


def ignored_below(job: Job, policy: Policy) -> list[str]:
    """The protect globs that match a cgroup below the job that is not owned
    by root, and so do not protect it; the first few, then how many more."""
    out = []
    for name, uid in job.user_inner:
        g = next((g for g in policy.protect if glob_match(name, g)), None)
        if g is not None:
            out.append(f"protect glob '{g}' ignored below: cgroup '{name}' owned by uid {uid}")
    if len(out) > IGNORED_BELOW_SHOWN:
        out[IGNORED_BELOW_SHOWN:] = [f"and {len(out) - IGNORED_BELOW_SHOWN} more cgroups below matching "
                                     "a protect glob, not owned by root"]
    return out


def score(job: Job, killable: list[Proc], total_bytes: int) -> tuple[int, list[str]]:
    committed = job.committed_bytes
    reasons = [f"committed {committed} bytes in {len(job.procs)} procs"]
    s = committed
    if killable:
        adj = max(p.oom_score_adj for p in killable)
        if adj:
            bias = adj * total_bytes // OOM_SCORE_ADJ_MAX
            s += bias
            reasons.append(f"oom_score_adj {adj:+d}: {bias:+d} bytes")
    if job.oom_group:
        reasons.append("memory.oom.group: killed as one unit")
    return max(s, 0), reasons


def candidate(job: Job, policy: Policy, total_bytes: int) -> Candidate:
    """One job's place in the walk: its class, score and reasons."""
    imp, why = classify(job, policy)
    killable = [p for p in job.procs if killable_proc(p, policy.self_pid)]
    s, reasons = score(job, killable, total_bytes)
    # Populated with no process listed: they moved between the job's
    # cgroups while being read. Empty it is not; its charge scores it.
    moving = not job.procs and job.populated
    ok = imp is not Importance.PROTECT and (bool(killable) or moving)
    if moving:
        reasons.append("processes moved while being read: populated, scored by its charge")
    elif imp is not Importance.PROTECT and not killable:
        reasons.append("empty" if not job.procs else "no killable process")
    rule = (f"job: {job.rule}",) if job.rule else ()
    who = (labels_text(job.labels),) if job.labels else ()
    return Candidate(job=job, importance=imp, score_bytes=s, killable=ok,
                     reasons=(why, *who, *ignored_below(job, policy), *job.ignored_xattrs, *job.notes,
                              *reasons, *rule))


def _key(c: Candidate) -> tuple:
    """A candidate's place: class, then score, largest first. Equal scores
    (a bias clamped at 0: the kubelet gives every Guaranteed pod
    oom_score_adj -997) fall back on the charge, then the name (unique in a
    listing)."""
    return (c.importance, -c.score_bytes, -c.job.committed_bytes, c.job.name)


def _for(ranking: Ranking | None, policy: Policy, total_bytes: int) -> bool:
    """Whether ``ranking`` was made for this policy and domain total."""
    made = ranking.made_for if ranking is not None else None
    return made is not None and made[1] == total_bytes and (made[0] is policy or made[0] == policy)


def rank(jobs: Iterable[Job] | Ranking, policy: Policy, total_bytes: int, prior: Ranking | None = None,
         between: Callable[[], None] | None = None) -> Ranking:
    """Order every job; skipped ones stay in the list, marked not killable.

    A ranking made for the same policy and total is its own answer. The
    candidates of ``prior`` (the ranking of an earlier listing) are taken
    for the very jobs it ranked: a listing gives back the same object for a
    job that did not change (see ``Cgroupfs._job``), so only the jobs read
    again are classified and scored again. ``between`` is called every
    BETWEEN_EVERY jobs (the lister's thread gives the loop its turn)."""
    if isinstance(jobs, Ranking):
        if _for(jobs, policy, total_bytes):
            return jobs
        jobs = jobs.jobs()
    seen = _by_job(prior) if _for(prior, policy, total_bytes) else {}
    keyed = []
    for i, job in enumerate(jobs):
        if between is not None and i % BETWEEN_EVERY == 0:
            between()
        hit = seen.get(id(job))
        if hit is None or hit[1].job is not job:
            c = candidate(job, policy, total_bytes)
            hit = (_key(c), c)
        keyed.append(hit)
    keyed.sort(key=_first)
    return Ranking(tuple(c for _, c in keyed), tuple(k for k, _ in keyed), (policy, total_bytes))


def rerank(ranking: Ranking, replaced: Sequence[tuple[Job, Job | None]], policy: Policy,
           total_bytes: int) -> Ranking:
    """``ranking`` with each (old, new) job's old read replaced by the new
    one, or dropped when new is None: only those are placed again (a binary
    search each), the other candidates stay as they are. A ranking made for
    another policy or total is ranked again whole."""
    if not _for(ranking, policy, total_bytes):
        jobs = {id(j): j for j in ranking.jobs()}
        for old, new in replaced:
            if new is None:
                jobs.pop(id(old), None)
            else:
                jobs[id(old)] = new
        return rank(list(jobs.values()), policy, total_bytes)
    cands, keys = list(ranking.candidates), list(ranking.keys)
    for old, new in replaced:
        at = _place(cands, keys, old, policy, total_bytes)
        if at is not None:
            del cands[at], keys[at]
        if new is not None:
            c = candidate(new, policy, total_bytes)
            k = _key(c)
            at = bisect.bisect_left(keys, k)
            cands.insert(at, c)
            keys.insert(at, k)
    return Ranking(tuple(cands), tuple(keys), (policy, total_bytes))


def _place(cands: list[Candidate], keys: list[tuple], job: Job, policy: Policy, total_bytes: int) -> int | None:
    """Where ``job`` is in the walk: found by its key (its candidate made
    again the same way), else looked for one by one; None if not there."""
    k = _key(candidate(job, policy, total_bytes))
    at = bisect.bisect_left(keys, k)
    while at < len(keys) and keys[at] == k:
        if cands[at].job is job:
            return at
        at += 1
    return next((i for i, c in enumerate(cands) if c.job is job), None)


def _first(kc: tuple) -> tuple:
    return kc[0]


def _by_job(ranking: Ranking) -> dict[int, tuple[tuple, Candidate]]:
    return {id(c.job): (k, c) for k, c in zip(ranking.keys, ranking.candidates)}
