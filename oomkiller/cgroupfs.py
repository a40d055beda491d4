"""cgroup trees: where memory is accounted, which cgroups are jobs, who is in them.

Three layouts are handled:

* pure v2 (production hosts): one tree at the root, memory controller in it;
* hybrid (this project's machines): v1 controllers under ``<root>/<ctrl>`` and
  cgroup2 without controllers at ``<root>/unified``; memory lives in v1;
* legacy: v1 only.

A job is always a cgroup of the tree that accounts memory. On hybrid hosts its
processes may also share a v2 cgroup; that one gives the job a v2 id (what BPF
sees) and a ``cgroup.kill``.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import cgtable
from .files import Vanished, read_int, read_keyed, read_pids, read_text, vanishing
from .model import Job
from .procfs import Procfs, boot_ticks
from .report import printable
from .core import jobrule
from .core.rank import glob_match, pod_qos, xattr_set
from .pods import Pods

# v1 reports "no limit" as the largest page-aligned long.
V1_UNLIMITED = 1 << 62

XATTRS = ("user.oomd_omit", "user.oomd_avoid", "user.oomd_prefer")

# Bounds on the walk of a job's subtree. Whoever owns a cgroup can make
# cgroups in it as deep and as many as they like (cgroup.max.depth and
# cgroup.max.descendants are unlimited by default); past these the walk stops
# descending, keeps what it read, and the job's reasons say so.
MAX_DEPTH = 64
MAX_CGROUPS = 10_000
# The cgroups below jobs one listing reads, at most, all jobs together: their
# owners make them, and each job's own bound (MAX_CGROUPS) times thousands of
# jobs would be minutes. Past it, a job is its own cgroup: its charge is
# hierarchical, and cgroup.kill takes its whole subtree.
MAX_LISTING_CGROUPS = 20_000
# The domain's walk for jobs visits only the cgroups above them.
MAX_DOMAIN_CGROUPS = 100_000
# A cgroup this close to PATH_MAX (4096) may have children no path can name
# (their owner can make them with mkdirat): it is a job, whole, and what is
# below it is read as far as paths go, its kill by cgroup.kill reaching all.
PATH_ROOM = 4096 - 256 - 64
# A user's service manager (user@UID.service) is walked for jobs with a
# budget of its own: its user makes the cgroups in it, and must not use up
# the domain's walk or make thousands of jobs. Past it, the user's manager
# is taken whole as one job, and says why.
MAX_USER_CGROUPS = 2_000

# Reads of a subtree that looked empty, at most, before it is taken as
# empty: cgroup.procs files are read one after another, so a process its
# owner moves between two cgroups of the job can be in none of the reads.
MEMBER_READS = 5
# Where the kernel gives no atomic answer to believe (a v1 job with no v2
# cgroup, or one whose v2 cgroup reads unpopulated: its processes may be in
# another v2 cgroup of their owner's at that instant) and the job holds
# anonymous memory, which a process of it most likely owns: read this many
# times before calling it empty. A mover missed by 40% of
# reads is missed by all of them once in 10^6 listings.
MEMBER_READS_SUSPECT = 16
# ... and of a job that is one cgroup with none below it and little charged
# (see recheck_empty).
LEAF_READS = 2
ANON_SUSPECT_BYTES = 1 << 20

# An unexpected error reading one job is logged at most this often.
ERROR_LOG_INTERVAL_S = 60.0

log = logging.getLogger("oomkiller")


@dataclass(frozen=True)
class Layout:
    root: str
    unified_root: str | None     # where cgroup2 is mounted
    memory_root: str | None      # the tree that accounts memory
    memory_v1: bool

    @property
    def jobs_root(self) -> str:
        return self.memory_root or self.unified_root or self.root


def detect_layout(root: str = "/sys/fs/cgroup") -> Layout:
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        ctrls = read_text(os.path.join(root, "cgroup.controllers")).split()
        return Layout(root, root, root if "memory" in ctrls else None, False)
    unified = os.path.join(root, "unified")
    memory = os.path.join(root, "memory")
    return Layout(root,
                  unified if os.path.exists(os.path.join(unified, "cgroup.controllers")) else None,
                  memory if os.path.exists(os.path.join(memory, "memory.limit_in_bytes")) else None,
                  True)


def own_cgroup_paths(pid: int | str, layout: Layout, procfs: Procfs | None = None) -> tuple[str, str]:
    """(memory path, v2 path) of a process, relative to each tree's root."""
    groups = (procfs or Procfs()).cgroups(pid)  # type: ignore[arg-type]
    v2 = groups.get("", "/")
    mem = groups.get("memory", v2) if layout.memory_v1 else v2
    return mem.rstrip("/"), v2.rstrip("/")


# The subgroup crun makes in a container's systemd scope on cgroup v2 (its
# run.oci.systemd.subgroup annotation, "container" unless set).
CRUN_SUBGROUP = "container"


class Cgroupfs:
    """One cgroup hierarchy; ``root`` is ``/sys/fs/cgroup`` except in tests."""

    def __init__(self, root: str = "/sys/fs/cgroup", procfs: Procfs | None = None) -> None:
        self.root = root
        self.layout = detect_layout(root)
        self.procfs = procfs or Procfs()
        self._warned: dict[str, float] = {}
        # The job table (see cgtable): listings of jobs and the facts of
        # each job kept between listings, checked again on every one.
        self._listings: dict[tuple, cgtable.Listing] = {}
        self._facts: dict[str, cgtable.Facts] = {}
        # the jobs of the latest listing, and those read alone since (oldest first)
        self._listed: frozenset[str] = frozenset()
        self._alone: dict[str, None] = {}
        # listings of jobs taken from the table, and walked afresh
        self.table_counts = {"kept": 0, "walked": 0}
        # jobs of listings read in full, and taken as read before (unchanged)
        self.job_reads = {"read": 0, "reused": 0}
        # what the container runtimes say of a pod's containers
        self.pods = Pods("/")
        # called before each job a listing reads (the lister's pause for the loop)
        self.between_jobs: Callable[[], None] | None = None

    # -- paths ------------------------------------------------------------
    def resolve(self, spec: str) -> str:
        """A domain spec to an absolute cgroup folder of the memory tree:
        ``host``, ``parent`` (the cgroup above the daemon's own), or a path.

        In a container with a cgroup namespace of its own, the tree mounted
        at the root is the namespace's: its top is a cgroup like any other
        (the pod's, when the runtime roots the namespace there) and may be a
        domain; only the hierarchy's real root is refused."""
        base = self.layout.jobs_root
        if spec == "host":
            return base
        if spec == "parent":
            return self._parent()
        path = spec if os.path.isabs(spec) and os.path.isdir(spec) else os.path.join(base, spec.lstrip("/"))
        path = os.path.normpath(path)
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "cgroup.procs")):
            raise FileNotFoundError(f"{spec}: not a cgroup folder")
        if path == os.path.normpath(base) and self.is_real_root(path):
            raise FileNotFoundError(f"{spec}: the root cgroup: use 'host'")
        return path

    def _parent(self) -> str:
        """The cgroup above the daemon's container's: its pod, for a sidecar.

        The container's cgroup is the daemon's own, except under crun with
        the systemd driver on cgroup v2 (podman; CRI-O where crun is the
        runtime): crun puts a container's processes in a ``container``
        subgroup of the container's scope (``libpod-<id>.scope/container``,
        ``crio-<id>.scope/container``), so the scope is the container's
        cgroup and the pod is above it."""
        base = os.path.normpath(self.layout.jobs_root)
        own = self.own_path()
        if os.path.basename(own) == CRUN_SUBGROUP and os.path.basename(os.path.dirname(own)).endswith(".scope"):
            own = os.path.dirname(own)
        if own == base:
            if self.is_real_root(base):
                raise FileNotFoundError("parent: oomkiller's own cgroup is the root cgroup: use 'host'")
            raise FileNotFoundError(
                "parent: oomkiller's own cgroup is the top of the cgroup tree it sees (a container whose "
                "cgroup namespace starts at its own cgroup): the pod's cgroup is out of sight; mount the "
                "host's cgroup tree there (read-only will do), or give the pod's cgroup folder")
        path = os.path.dirname(own)
        if path == base and self.is_real_root(path):
            raise FileNotFoundError("parent: the cgroup above oomkiller's own is the root cgroup: use 'host'")
        return path

    def own_path(self) -> str:
        """The daemon's own cgroup folder in the memory tree.

        ``/proc/self/cgroup`` gives it relative to the daemon's cgroup
        namespace, which is the tree mounted at the root when a container
        runtime mounts the namespace's view. When the tree mounted is
        another's (the host's tree in a container with a namespace of its
        own, as Kubernetes gives every container), that path means nothing
        in it, and the cgroup that lists the daemon's pid is looked for
        instead (once, at start; at most ``MAX_CGROUPS`` read). Raises
        FileNotFoundError if none lists it."""
        base = os.path.normpath(self.layout.jobs_root)
        me = os.getpid()
        mem, _ = own_cgroup_paths(me, self.layout, self.procfs)
        own = os.path.normpath(os.path.join(base, mem.lstrip("/")))
        if _lists(own, me):
            return own
        for path in walk_cgroups(base):
            if _lists(path, me):
                return os.path.normpath(path)
        raise FileNotFoundError(f"oomkiller's own cgroup {mem or '/'} (from /proc/self/cgroup) is not in the "
                                f"tree at {base}, and no cgroup there lists its pid {me}")

    @staticmethod
    def is_real_root(path: str) -> bool:
        """Whether a cgroup folder is its hierarchy's root, not only the top
        of a cgroup namespace's view: the kernel gives the root alone no
        ``cgroup.type`` (v2) and alone a ``release_agent`` (v1)."""
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            return not os.path.exists(os.path.join(path, "cgroup.type"))
        return os.path.exists(os.path.join(path, "release_agent"))

    def relative(self, path: str) -> str:
        """A cgroup path as ``/proc/PID/cgroup`` shows it."""
        rel = os.path.relpath(path, self.layout.jobs_root)
        return "/" if rel == "." else "/" + rel

    # -- membership ----------------------------------------------------------
    def subtree_pids(self, path: str) -> list[int]:
        """Every process of the cgroup and its descendants.

        Raises FileNotFoundError (``Vanished``) if the cgroup itself is
        gone; descendants that vanish while being read are skipped.
        """
        pids = read_pids(os.path.join(path, "cgroup.procs"))
        for _, inner in _descendants(path, []):
            pids.extend(inner)
        return sorted(set(pids))

    def subtree_pids_within(self, path: str, max_cgroups: int, max_pids: int) -> list[int] | None:
        """Every process of the cgroup and its descendants, in no order
        and perhaps twice; None unless all of them were read within the
        bounds: no more than ``max_cgroups`` cgroups below, or
        ``max_pids`` processes, or ``MAX_DEPTH`` levels, and every cgroup
        readable. Raises FileNotFoundError (``Vanished``) if the cgroup
        itself is gone; descendants that vanish while being read are
        skipped."""
        pids = read_pids(os.path.join(path, "cgroup.procs"))
        cut: list[str] = []
        for _, inner in _descendants(path, cut, max_cgroups):
            pids.extend(inner)
            if len(pids) > max_pids:
                return None
        return None if cut or len(pids) > max_pids else pids

    def events_populated(self, v2_path: str) -> bool | None:
        """``populated`` of a v2 cgroup's ``cgroup.events``: whether any
        process is in its subtree, from the kernel's own count, in one read
        (hierarchical and atomic, unlike pid lists read one cgroup after
        another). None if it cannot be read (v1, or gone)."""
        try:
            return read_keyed(os.path.join(v2_path, "cgroup.events")).get("populated") == 1
        except (OSError, ValueError):
            return None

    def v2_mirror(self, path: str) -> str | None:
        """The v2 cgroup at the job's path: itself on pure v2; on hybrid
        hosts the one at the longest tail of its v1 path (systemd mirrors
        the trees), if any. Only a hint of membership there: it may hold
        others too (``v2_of`` checks that)."""
        if not self.layout.memory_v1:
            return path
        if not self.layout.unified_root:
            return None
        rel = self.relative(path).strip("/").split("/")
        for k in range(len(rel)):
            cand = os.path.join(self.layout.unified_root, "/".join(rel[k:]))
            if rel[k:] and os.path.isfile(os.path.join(cand, "cgroup.events")):
                return cand
        return None

    def recheck_empty(self, path: str, v2_path: str = "", leaf: bool = False) -> tuple[list[int], bool]:
        """(pids, populated) of a subtree whose read came back empty.

        Its pid lists are read one cgroup after another, so a process moved
        between two of its cgroups while they are read is in none: an empty
        read is not an empty job. Where the kernel gives the one atomic
        answer (``cgroup.events`` of the job's v2 cgroup: the job itself on
        pure v2, ``v2_path`` or its mirror on hybrid hosts), populated is
        that; it is only believed to say "empty" on pure v2, where that
        cgroup is the job. The subtree is also read again, up to
        ``MEMBER_READS`` times in all (``MEMBER_READS_SUSPECT`` with no atomic
        answer believed and anonymous memory charged), until two reads in a row list the
        same processes (two empty reads do not count as agreeing: each is
        as likely to have missed the mover as the first): the pids are all
        any read saw, and a read that saw one means populated. Raises
        ``Vanished`` if the cgroup itself is gone.

        A ``leaf`` (no cgroup below it when the listing looked) that holds
        under ``ANON_SUSPECT_BYTES`` is read once more, not up to
        ``MEMBER_READS`` times, if it has no cgroup below it when stat'ed
        right before that read and right after it (a kernfs directory's
        links are 2 and one per child): with one ``cgroup.procs`` there is
        no other cgroup of the job for a process to be moved to between
        two reads. Empty leaves are what a domain collects (the cgroups of
        exited jobs), and their reads made a listing of twenty of them take
        20 ms on the loop. A leaf charged with anonymous memory is read as
        many times as any job: its process may be one moved back and forth
        between it and a sibling job."""
        v2 = v2_path or self.v2_mirror(path)
        events = self.events_populated(v2) if v2 else None
        if events is False and not self.layout.memory_v1:
            return [], False
        suspect = not events and self._charged(path) and self.anon_bytes(path) >= ANON_SUSPECT_BYTES
        seen: set[int] = set()
        if leaf and not suspect and self._still_leaf(path):
            for _ in range(LEAF_READS - 1):
                seen.update(self.subtree_pids(path))
            if seen or self._still_leaf(path):
                return sorted(seen), bool(seen) or bool(events)
        reads = MEMBER_READS_SUSPECT if suspect else MEMBER_READS
        prev: list[int] = []
        for _ in range(reads - 1):
            pids = self.subtree_pids(path)
            seen.update(pids)
            if pids and pids == prev:
                break
            prev = pids
        return sorted(seen), bool(seen) or bool(events)

    def _still_leaf(self, path: str) -> bool:
        """No cgroup below ``path`` now (its links). Raises ``Vanished``
        if it is gone."""
        with vanishing(path):
            return os.stat(path).st_nlink == 2

    def _charged(self, path: str) -> bool:
        """Whether the cgroup's usage (one small read) could hold
        ``ANON_SUSPECT_BYTES`` of anonymous memory: if not, its
        ``memory.stat`` is not read. True if it cannot be read."""
        try:
            return self.usage(path) >= ANON_SUSPECT_BYTES
        except (OSError, ValueError):
            return True

    def anon_bytes(self, path: str) -> int:
        """Anonymous memory charged to the subtree (0 if unknown)."""
        try:
            stat = read_keyed(os.path.join(path, "memory.stat"))
        except OSError:
            return 0
        return stat.get("total_rss", 0) if self.layout.memory_v1 else stat.get("anon", 0)

    def xattrs(self, path: str) -> tuple[tuple[str, str], ...]:
        """The systemd-oomd xattrs set on a cgroup, trusted or not."""
        # One listxattr, then a get only of those set: most cgroups have none.
        try:
            names = os.listxattr(path)
        except OSError:
            # xattrs unsupported on this cgroupfs, or the cgroup is gone
            # (it has none then; its other reads tell it is gone)
            return ()
        out = []
        for name in XATTRS:
            if name in names:
                try:
                    out.append((name, os.getxattr(path, name).decode(errors="replace")))
                except OSError:
                    pass    # removed since
        return tuple(out)

    def owner_uid(self, path: str) -> int:
        """Who owns a cgroup's folder; raises ``Vanished`` if it is gone."""
        with vanishing(path):
            return os.stat(path).st_uid

    def trusted_xattrs(self, path: str, name: str = "", counted: tuple[str, ...] = XATTRS,
                       uid: int | None = None) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        """(xattrs to honour, why others were not) of a cgroup.

        As systemd-oomd does, xattrs count only on a cgroup owned by root:
        a delegated subtree (``user@UID.service``) belongs to its user, who
        could otherwise make their own cgroups unkillable. Each xattr of
        ``counted`` (those that would matter here) that is set and ignored
        is named, with ``name`` (the cgroup) if given, so the ranking can
        say so. ``uid`` is the owner if it was already read. Raises
        ``Vanished`` if the cgroup is gone."""
        xattrs = self.xattrs(path)
        if not any(xattr_set(v) for _, v in xattrs):
            return xattrs, ()
        if uid is None:
            uid = self.owner_uid(path)
        if uid == 0:
            return xattrs, ()
        of = f" of '{name}'" if name else ""
        return (), tuple(f"{k}{of} ignored: cgroup owned by uid {uid}"
                         for k, v in xattrs if k in counted and xattr_set(v))

    def oom_group(self, path: str) -> bool:
        try:
            return read_text(os.path.join(path, "memory.oom.group")).strip() == "1"
        except Vanished:
            return False        # v1 has none; or the cgroup is gone, which its other reads will tell

    def only_holds(self, path: str, pids: list[int] | set[int]) -> bool:
        """Whether every process in the cgroup's subtree is one of ``pids``."""
        try:
            return set(self.subtree_pids(path)) <= set(pids)
        except OSError:
            return False

    def v2_of(self, path: str, pids: list[int]) -> str | None:
        """The v2 cgroup that stands for a memory cgroup holding ``pids``:
        itself on pure v2. On hybrid hosts, the v2 cgroup at the longest tail
        of its v1 path (systemd mirrors the two trees), else the deepest one
        its processes share; either only if it holds none but them, since
        what is done to it (cgroup.kill, the armed kill) hits all it holds.
        None if there is none, or only the root, which stands for the host."""
        if not self.layout.memory_v1:
            return path
        if not self.layout.unified_root or not pids:
            return None
        v2_paths = [p for p in (self.procfs.cgroups(pid).get("") for pid in pids) if p is not None]
        if not v2_paths:
            return None
        rel = self.relative(path).strip("/").split("/")
        for k in range(len(rel)):
            tail = "/".join(rel[k:])
            cand = os.path.join(self.layout.unified_root, tail)
            if tail and os.path.isdir(cand) and all((p.rstrip("/") + "/").startswith(f"/{tail}/") for p in v2_paths):
                return cand if self.only_holds(cand, pids) else None
        common = os.path.commonprefix([p.strip("/").split("/") for p in v2_paths])
        if not common or common == [""]:
            return None
        cand = os.path.join(self.layout.unified_root, *common)
        return cand if self.only_holds(cand, pids) else None

    def v2_counterpart(self, path: str) -> str | None:
        """The v2 cgroup standing for a memory cgroup (see ``v2_of``)."""
        try:
            return self.v2_of(path, self.subtree_pids(path))
        except OSError:
            return None

    # -- jobs -------------------------------------------------------------
    def job_paths(self, domain_path: str, jobs: tuple[str, ...],
                  keep_out: tuple[str, ...] = (), rec: cgtable.Listing | None = None) -> list[tuple[str, str]]:
        """The domain's job cgroups, each with what made it a job, by the
        rule in ``core.jobrule``: ``jobs`` holds globs and, by default, the
        word ``auto``. ``keep_out`` holds the cgroups of PID 1 and of
        oomkiller itself: a cgroup holding one of them below it is never a
        job, its children are looked at instead. ``rec``, if given, is
        filled with what the walk saw, to keep it (see ``cgtable.Listing``)."""
        rec = rec if rec is not None else cgtable.Listing()
        entry: dict[str, cgtable.Entry] = {}
        keep_out = tuple(os.path.normpath(k) for k in keep_out)
        globs, auto = jobrule.globs_of(jobs)
        found: list[tuple[str, str]] = []
        in_user = [False]

        def user_manager(full: str) -> bool:
            """Walk a user's manager with its own budget (not nested: a
            user may name a cgroup of theirs user@N.service too)."""
            start, cut = len(found), []
            in_user[0] = True
            try:
                for _ in walk_cgroups(full, descend, cut, max_cgroups=MAX_USER_CGROUPS, listed=rec.listed):
                    pass
            finally:
                in_user[0] = False
            if cut:
                rec.keepable = False
                del found[start:]
                found.append((full, f"user manager taken whole: {'; '.join(cut)}"))
                self._warn(full, f"{os.path.relpath(full, domain_path)}: {'; '.join(cut)}: "
                                 "its jobs are taken as one")
            return False

        whole: dict[str, str] = {}

        def descend(full: str) -> bool:
            rec.note(full)      # before it is read: a change after shows when the walk is checked
            try:
                return visit(full)
            except OSError as e:
                rec.keepable = False
                # Not gone (that is Vanished, handled where read) but not
                # readable either: its owner shaped it so. With the rule of
                # names, its parent is a job, whole, so that nothing below
                # is in no job; with globs alone, it is passed over.
                parent = os.path.dirname(full)
                why = f"a cgroup below cannot be read ({e.strerror}): taken whole"
                if not auto:
                    self._warn(full, f"{report_name(full, domain_path)}: cannot be read for jobs ({e.strerror})")
                elif parent != domain_path:
                    whole.setdefault(parent, why)
                else:
                    found.append((full, why))
                return False

        def visit(full: str) -> bool:
            name = os.path.relpath(full, domain_path)
            if auto and (name.count("/") + 1 >= MAX_DEPTH - 1 or len(os.fsencode(full)) >= PATH_ROOM):
                # Deeper than the walk goes, or a path too long to name what
                # is below: a job, whole, or what is below would be in none.
                found.append((full, "cgroup at the walk's depth or path limit: taken whole"))
                entry[full] = cgtable.Entry(full, found[-1][1])
                return False
            holds_kept = any(k.startswith(full + "/") for k in keep_out)
            oom = None
            if not holds_kept:
                g = next((g for g in globs if glob_match(name, g)), None)
                if g is not None:
                    found.append((full, f"glob '{g}'"))
                    entry[full] = cgtable.Entry(full, found[-1][1])
                    return False
                oom = self.oom_group(full)
                if oom:
                    found.append((full, "memory.oom.group"))
                    entry[full] = cgtable.Entry(full, found[-1][1], oom_read=True, by_oom=True)
                    return False
            if not auto:
                rec.probes[full] = (oom, None)
                return True
            verdict, why = jobrule.by_name(name)
            # Only a user's manager where systemd puts it gets a budget of its
            # own: user-N.slice/user@N.service.
            manager = (why == jobrule.USER_MANAGER and not in_user[0]
                       and os.path.basename(os.path.dirname(full)) == "user-" + name.rsplit("@", 1)[-1][:-len(".service")] + ".slice")
            if holds_kept:
                return user_manager(full) if manager else True
            own, own_kind = None, ""
            if verdict is not jobrule.Verdict.JOB:
                try:
                    own = bool(read_pids(os.path.join(full, "cgroup.procs")))
                except Vanished:
                    rec.keepable = False
                    return False
                except OSError:
                    rec.keepable = False
                    own = False     # a threaded cgroup: its processes show above it
                if verdict is jobrule.Verdict.CONTENT:
                    children = bool(subcgroups(full))
                    # having children decides: the count of its mark must say the same
                    rec.counted.add(full)
                    if full in rec.marks and (rec.marks[full][1] > 2) != children:
                        rec.keepable = False
                    verdict, why = jobrule.by_content(own, children)
                    own_kind = "required" if children else "content"
                elif own:
                    # A slice holds no process under systemd; one that does
                    # (its owner put them there) is a job, or they would be
                    # in none.
                    verdict, why = jobrule.Verdict.JOB, f"{why} with processes of its own"
                    own_kind = "required"
                elif manager:
                    rec.probes[full] = (oom, own)
                    return user_manager(full)
            if verdict is jobrule.Verdict.JOB:
                found.append((full, why))
                entry[full] = cgtable.Entry(full, why, oom_read=oom is not None, own=own_kind)
                return False
            rec.probes[full] = (oom, own)
            return True
        cut: list[str] = []
        rec.note(domain_path)
        for _ in walk_cgroups(domain_path, descend, cut, max_cgroups=MAX_DOMAIN_CGROUPS, listed=rec.listed):
            pass
        if cut:
            rec.keepable = False
            self._warn("domain", "the walk for jobs: " + "; ".join(cut))
        if whole:
            rec.keepable = False
        for top in sorted(whole, key=len):
            if any(top.startswith(t + "/") for t in whole if t != top) or any(
                    top.startswith(p + "/") for p, _ in found):
                continue    # inside another job taken whole
            found = [(p, w) for p, w in found if p != top and not p.startswith(top + "/")] + [(top, whole[top])]
        found.sort()
        if rec.keepable:
            rec.entries = [entry[p] for p, _ in found if p in entry]
            rec.keepable = len(rec.entries) == len(found)
        return found

    def _warn(self, key: str, text: str) -> None:
        """Log ``text`` at most once a minute per ``key`` (a job, or the
        domain's walk): a wake comes every few milliseconds."""
        now = time.monotonic()
        last = self._warned.get(key)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            return
        self._warned[key] = now
        log.warning("OOM: %s", text)

    def keep_out(self, pids: tuple[int, ...]) -> tuple[str, ...]:
        """Absolute memory-tree cgroup folders of some processes (the
        daemon's own found as ``own_path`` finds it)."""
        out = []
        for pid in pids:
            if pid == os.getpid():
                try:
                    out.append(self.own_path())
                    continue
                except FileNotFoundError:
                    pass
            groups = self.procfs.cgroups(pid)
            rel = groups.get("memory" if self.layout.memory_v1 else "")
            if rel:
                out.append(os.path.join(self.layout.jobs_root, rel.strip("/")))
        return tuple(out)

    def charged_bytes(self, path: str) -> int:
        return self.charge(path)[0]

    def charge(self, path: str) -> tuple[int, int]:
        """(charged bytes, refaulted file pages), from one read of
        ``memory.stat``. The bytes: what the job's cgroup holds that reclaim cannot drop, from the
        kernel's own accounting (summing processes would count shared memory
        once per process that maps it): everything charged to it (anon,
        shmem, and kernel memory such as pipe and socket buffers and page
        tables, which a process can fill without one anonymous page) less the
        file cache the kernel can give back, the rule the domain's free
        memory follows; plus swap. Without a usage figure: anon + shmem.
        The pages: ``workingset_refault_file`` of the subtree (file pages
        read back soon after their eviction: the job suffers thrashing), -1
        if the kernel does not say."""
        return self._charge(path)[:2]

    def _charge(self, path: str) -> tuple[int, int, int | None]:
        """``charge``, and the usage it read (None if it read none)."""
        try:
            stat = read_keyed(os.path.join(path, "memory.stat"))
        except OSError:
            return 0, -1, None
        swap = 0
        if self.layout.memory_v1:
            # v1 keeps subtree totals under total_*; total_rss is anonymous memory (THP included)
            stat = {k[len("total_"):]: v for k, v in stat.items() if k.startswith("total_")} or stat
            anon, swap = stat.get("rss", 0), stat.get("swap", 0)
        else:
            anon = stat.get("anon", 0)
            stat = {"dirty": stat.get("file_dirty", 0), "writeback": stat.get("file_writeback", 0), **stat}
            try:
                swap = read_int(os.path.join(path, "memory.swap.current")) or 0
            except OSError:
                pass
        pinned = anon + stat.get("shmem", 0)
        try:
            usage = read_int(self._usage_file(path)) or 0
            read = True
        except OSError:
            usage, read = 0, False
        refaults = stat.get("workingset_refault_file", stat.get("workingset_refault", -1))
        return max(pinned, usage - min(reclaimable_bytes(stat), usage)) + swap, refaults, usage if read else None

    def _usage_file(self, path: str) -> str:
        return os.path.join(path, "memory.usage_in_bytes" if self.layout.memory_v1 else "memory.current")

    def usage(self, path: str) -> int:
        """A cgroup's memory usage: one small read. Raises ``Vanished`` if
        it is gone, OSError or ValueError if it cannot be read."""
        return read_int(self._usage_file(path)) or 0

    def job(self, path: str, domain_path: str, rule: str = "", budget: list[int] | None = None) -> Job:
        """Read one job; raises ``Vanished`` (a FileNotFoundError) if its
        cgroup is gone. Descendants and processes that vanish while being
        read are left out.

        One walk of the subtree gathers its processes, its descendants and
        their xattrs: with a thousand jobs, every extra walk is felt. The
        cgroups below the job and its v2 counterpart are kept between
        listings (see ``cgtable``); its processes, their v2 cgroup and its
        charge are read every time."""
        try:
            job = self._job(path, domain_path, rule, budget)
        finally:
            self._read_alone(path)
        assert job is not None      # only a kept listing's entry can turn it down
        return job

    def _read_alone(self, path: str) -> None:
        """Bound the facts kept of jobs read alone that no listing holds
        (cgtable.MAX_READ_ALONE): the loop may not list for long, and those
        jobs may be gone."""
        if path in self._listed:
            return
        alone = self._alone
        alone.pop(path, None)
        alone[path] = None
        while len(alone) > cgtable.MAX_READ_ALONE:
            old = next(iter(alone))
            alone.pop(old, None)
            self._facts.pop(old, None)

    def _job(self, path: str, domain_path: str, rule: str, budget: list[int] | None,
             entry: cgtable.Entry | None = None, mark: tuple[int, int] | None = None,
             reuse: bool = False) -> Job | None:
        """``job``; with the ``entry`` of a kept listing, its rule is found
        from what is read now, and None is returned if it would not be a
        job any more. ``mark`` is the cgroup's (inode, link count) if the
        listing's check stat'ed it. With ``reuse``, what did not change
        since the job's last full read is taken from it (see ``cgtable``):
        its processes' ``/proc`` reads while they are the same processes
        with the same ``oom_score_adj``, its charge while its usage is the
        same; and the job read before itself, the very object, if nothing
        read differs from it."""
        listed_ticks = boot_ticks()
        if mark is None:
            with vanishing(path):
                st = os.stat(path)
            mark = (st.st_ino, st.st_nlink)
        facts = self._facts.get(path)
        if facts is None or facts.inode != mark[0] or facts.domain_path != domain_path:
            # a cgroup not seen before, or made again at the same path: a new one
            facts = cgtable.Facts(mark[0], domain_path, _relative_name(path, domain_path))
            if path in self._facts or len(self._facts) < cgtable.MAX_TABLE_JOBS:
                self._facts[path] = facts
        last = facts.last if reuse else None
        # all charge: no cache beyond the slack that could turn into charge,
        # nor swap (counted in the charge, not the usage) that could grow
        if last is not None and time.monotonic() - last.at >= cgtable.refresh_after(
                facts.inode, abs(last.usage - last.job.charged_bytes) <= cgtable.REUSE_USAGE_SLACK):
            last = None
        pids = read_pids(os.path.join(path, "cgroup.procs"))
        own = bool(pids)
        inner = []
        user_inner = []
        ignored: list[str] = []
        notes: list[str] = []
        room = MAX_CGROUPS if budget is None else min(MAX_CGROUPS, budget[0])
        if room <= 0:
            notes.append(f"its subtree is not read: this listing read {MAX_LISTING_CGROUPS} cgroups below jobs "
                         "already (its charge and cgroup.kill still cover it)")
        read = 0
        for full, inner_pids in (self._below(path, facts, mark, notes, room) if room > 0 else ()):
            read += 1
            rel = _relative_name(full, domain_path)
            try:
                # The owner chose a name below the job, and could set xattrs
                # there: only those of cgroups owned by root can protect it
                # (see rank.classify).
                uid = self.owner_uid(full)
                # below the job only user.oomd_omit counts (see rank.classify)
                xattrs, why = self.trusted_xattrs(full, rel, ("user.oomd_omit",), uid)
            except Vanished:
                continue    # removed while we walked
            if uid == 0:
                inner.append((rel, xattrs))
            else:
                user_inner.append((rel, uid))
            ignored += why
            pids.extend(inner_pids)
        if budget is not None:
            budget[0] -= read
        # Populated with no process listed: they moved between its cgroups
        # while being read (see recheck_empty). Listed processes that are
        # gone by the time /proc is read are gone, not moving.
        unseen = False
        if not pids and room <= 0:
            # not read: the kernel's own count says whether anything is in it
            v2m = path if not self.layout.memory_v1 else self.v2_mirror(path)
            unseen = bool(v2m and self.events_populated(v2m))
        elif not pids:
            # a leaf, as the listing saw it: nothing below when stat'ed (a
            # kernfs directory's links are 2 and one per child) nor walked
            # (recheck_empty stats it again)
            pids, populated = self.recheck_empty(path, leaf=read == 0 and mark[1] == 2)
            unseen = populated and not pids
        key = tuple(sorted(set(pids)))
        procs = adjs = None
        reused = False      # anything taken from the last full read
        # Its processes are taken as read only while they do not score it
        # (by more than the usage's slack: the score is as close as the
        # charge's): a process moved in scores the job by its own memory,
        # charged elsewhere, which it can give back with this job's usage
        # unmoved.
        if (last is not None and key and key == last.pids
                and last.job.committed_bytes - last.job.charged_bytes <= cgtable.REUSE_USAGE_SLACK):
            adjs = tuple(map(self.procfs.oom_score_adj, key))
            if adjs == last.adjs:
                procs, listed_ticks, reused = last.job.procs, last.job.listed_ticks, True
        if procs is None:
            procs = tuple(p for p in map(self.procfs.proc, key) if p is not None)
            adjs = tuple(p.oom_score_adj for p in procs) if len(procs) == len(key) else None
        v2, v2_id = self._v2(path, facts, [p.pid for p in procs])
        xattrs, why = self.trusted_xattrs(path)
        oom_group = self.oom_group(path)
        if entry is not None:
            rule = entry.rule_now(oom_group, own)
            if rule is None:
                return None
        usage = None
        if last is not None:
            try:
                usage = read_int(self._usage_file(path)) or 0
            except (OSError, ValueError):
                pass
        if usage is not None and abs(usage - last.usage) <= cgtable.REUSE_USAGE_SLACK:
            charged, refaults, usage = last.job.charged_bytes, last.job.refault_file_pages, last.usage
            reused = True
        else:
            charged, refaults, usage = self._charge(path)
        # a pod of the kubelet's, at the domain's top (as rank.pod_qos): who it is
        labels = self.pods.describe(facts.name, [n for n, _ in inner]) if pod_qos(facts.name) else ()
        job = Job(name=facts.name, path=path, inode=mark[0], labels=labels,
                  procs=procs, descendants=len(inner) + len(user_inner), xattrs=xattrs,
                  oom_group=oom_group, v2_id=v2_id, v2_path=v2 or "",
                  charged_bytes=charged, refault_file_pages=refaults, inner=tuple(inner),
                  ignored_xattrs=(*why, *ignored), user_inner=tuple(user_inner), notes=tuple(notes),
                  populated=unseen or bool(procs), rule=rule, listed_ticks=listed_ticks,
                  usage_bytes=-1 if usage is None else usage)
        if last is not None and job == last.job:
            self.job_reads["reused"] += 1
            return last.job         # the same object: its ranking is kept too (rank._latest)
        self.job_reads["read"] += 1
        # What the next listing may take from this read: only from a read
        # whole (every process listed read, nothing left out, a usage read),
        # dated by its oldest part.
        if adjs is None or None in adjs or notes or usage is None or not key:
            facts.last = None
        else:
            facts.last = cgtable.Read(job, key, adjs, usage, last.at if reused else time.monotonic())
        return job

    def _below(self, path: str, facts: cgtable.Facts, mark: tuple[int, int], notes: list[str],
               room: int) -> Iterator[tuple[str, list[int]]]:
        """``_descendants`` of a job, walking its subtree only if the one
        kept in ``facts`` is not still the same (see ``cgtable.Tree``)."""
        tree = facts.tree
        if tree is None or not tree.still(mark):
            tree = facts.tree = cgtable.survey(path, subcgroups, room, MAX_DEPTH)
        if tree is None or len(tree.below) > room:
            facts.tree = None       # kept trees fit the listing's budget, all together
            return _descendants(path, notes, room)
        return _descendants(path, notes, room, tree.below)

    def _v2(self, path: str, facts: cgtable.Facts, pids: list[int]) -> tuple[str | None, int]:
        """(v2 counterpart, its inode) of a job holding ``pids`` (see
        ``v2_of``). On hybrid hosts the one found before is taken again
        only if it still holds every one of them and no other process: one
        read of its ``cgroup.procs`` (and of those below it), where
        ``v2_of`` reads ``/proc/PID/cgroup`` of each process too."""
        kept = facts.v2 if self.layout.memory_v1 and pids else None
        if kept is not None and kept.still():
            held: list[int] | None = []
            for d in (kept.root, *kept.below):
                try:
                    held.extend(read_pids(os.path.join(d, "cgroup.procs")))  # type: ignore[union-attr]
                except OSError:
                    held = None
                    break
            if held is not None and set(held) == set(pids):
                return kept.root, kept.inode
        v2 = self.v2_of(path, pids)
        v2_id = 0
        if v2:
            try:
                with vanishing(v2):
                    v2_id = os.stat(v2).st_ino
            except Vanished:
                v2 = None
        if self.layout.memory_v1 and pids:
            facts.v2 = cgtable.survey(v2, subcgroups, cgtable.MAX_V2_TREE, MAX_DEPTH) if v2 else None
            if facts.v2 is not None and facts.v2.inode != v2_id:
                facts.v2 = None     # made again between the two stats: found again next time
        return v2, v2_id

    def jobs(self, domain_path: str, jobs: tuple[str, ...], keep_out: tuple[str, ...] = (),
             kept: list | None = None, reuse: bool = True) -> list[Job]:
        """Every job of the domain (see ``job_paths`` and ``job``). A job's
        cgroup is its owner's to shape: an error reading one job that is not
        its being gone is logged (at most once a minute) and that job kept
        with what could be read of it, or left out if nothing could, so
        that the others are still listed and a kill can still happen.

        The walk for jobs is kept between calls, and taken again only if
        every cgroup it looked at is still there, the same, with the same
        children, and reads the same where that decided (see
        ``cgtable.Listing``); else, and whenever a kept job's read says it
        would not be a job any more, the domain is walked again.

        ``kept`` gets the listing kept for this one (none if it could not
        be kept), for ``listing_unchanged``. Without ``reuse``, every job is
        read in full (see ``_job``)."""
        key = (domain_path, tuple(jobs), tuple(keep_out))
        listing = self._listings.pop(key, None)
        if listing is not None:
            marks: dict[str, tuple[int, int]] = {}
            if listing.still(marks, self.oom_group, self._own_procs):
                out = self._read_jobs(domain_path, [(e.path, e.rule, e) for e in listing.entries], marks, reuse)
                if out is not None:
                    self._listings[key] = listing
                    self.table_counts["kept"] += 1
                    if kept is not None:
                        kept.append(listing)
                    return out
        rec = cgtable.Listing()
        found = self.job_paths(domain_path, jobs, keep_out, rec)
        if rec.keepable and rec.counts_agree():
            while len(self._listings) >= cgtable.MAX_TABLE_LISTINGS:
                self._listings.pop(next(iter(self._listings)))
            self._listings[key] = rec
            if kept is not None:
                kept.append(rec)
        self.table_counts["walked"] += 1
        out = self._read_jobs(domain_path, [(p, r, None) for p, r in found], {}, reuse)
        assert out is not None      # no entry: nothing to turn down
        return out

    def listing_unchanged(self, listing: object) -> bool:
        """Whether the walk for jobs would find the same jobs as the
        ``jobs()`` that kept ``listing`` (its ``kept``; this Cgroupfs's or
        another's): that listing is still true (one stat of each cgroup
        it looked at, and the reads that decided rules). False if there is
        none (a listing that could not be kept). Not the latest listing
        kept here: another ``jobs()`` since (the control thread's
        ``rank``) may hold jobs the caller's listing lacks."""
        return isinstance(listing, cgtable.Listing) and listing.still({}, self.oom_group, self._own_procs)

    def _read_jobs(self, domain_path: str, found: list[tuple[str, str, cgtable.Entry | None]],
                   marks: dict[str, tuple[int, int]], reuse: bool = True) -> list[Job] | None:
        """The jobs at ``found`` read (see ``jobs``); None if the entry of a
        kept listing turns out not to be that job any more."""
        out = []
        budget = [MAX_LISTING_CGROUPS]
        between = self.between_jobs
        for path, rule, entry in found:
            if between is not None:
                between()
            try:
                job = self._job(path, domain_path, rule, budget, entry, marks.get(path), reuse)
                if job is None:
                    return None
                out.append(job)
            except Vanished:
                continue    # removed between the walk and the read: not a job any more
            except Exception as e:     # noqa: BLE001 - one job must not stop the listing
                why = f"{type(e).__name__}: {e}"
                self._warn(path, f"job {report_name(path, domain_path)}: cannot be read in full "
                                 f"({printable(why)}); listed with what could be read")
                job = self._partial_job(path, domain_path, why, rule)
                if job is not None:
                    out.append(job)
        listed = frozenset(p for p, _, _ in found)
        self._listed = listed
        if len(self._facts) > len(found):
            # only the jobs of the latest listing are kept (and a job read alone since)
            self._facts = {p: f for p, f in self._facts.items() if p in listed}
        self._alone = {p: None for p in self._alone if p in self._facts and p not in listed}
        return out

    def _own_procs(self, path: str) -> bool:
        """Whether a cgroup holds processes of its own."""
        return bool(read_pids(os.path.join(path, "cgroup.procs")))

    def _partial_job(self, path: str, domain_path: str, why: str, rule: str = "") -> Job | None:
        """What can be read of a job whose full read failed: its cgroup, its
        own processes and its charge, without its subtree. None if even that
        fails."""
        try:
            with vanishing(path):
                inode = os.stat(path).st_ino
            listed_ticks = boot_ticks()
            pids = read_pids(os.path.join(path, "cgroup.procs"))
            procs = tuple(p for p in map(self.procfs.proc, sorted(set(pids))) if p is not None)
            v2 = path if not self.layout.memory_v1 else self.v2_mirror(path)
            return Job(name=os.path.relpath(path, domain_path), path=path, inode=inode, procs=procs,
                       listed_ticks=listed_ticks,
                       charged_bytes=self.charged_bytes(path),
                       notes=(f"read in part: {why}; its subtree is not known",), rule=rule,
                       populated=bool(procs) or bool(v2 and self.events_populated(v2)))
        except Exception:   # noqa: BLE001
            return None

    # -- memory -------------------------------------------------------------
    def memory(self, path: str, read: Callable[[str], str] | None = None) -> tuple[int | None, int, dict[str, int]]:
        """(limit or None, usage, stat) of a memory cgroup, hierarchically.
        Raises ``Vanished`` if the cgroup is gone. ``read`` reads its files
        instead of ``read_text`` (the domain's, held open: ``HeldFiles``)."""
        if self.layout.memory_v1:
            stat = read_keyed(os.path.join(path, "memory.stat"), read)
            usage = read_int(os.path.join(path, "memory.usage_in_bytes"), read) or 0
            limit = stat.get("hierarchical_memory_limit")
            if limit is None:
                limit = read_int(os.path.join(path, "memory.limit_in_bytes"), read)
            if limit is not None and limit >= V1_UNLIMITED:
                limit = None
            memsw = stat.get("hierarchical_memsw_limit")
            # v1 keeps subtree totals under total_*; use those names unprefixed.
            stat = {k[len("total_"):]: v for k, v in stat.items() if k.startswith("total_")} or stat
            if memsw is not None:
                stat["memsw_limit"] = memsw     # kept for swap(): memory + swap, with swap accounting
            return limit, usage, stat
        stat = read_keyed(os.path.join(path, "memory.stat"), read)
        usage = read_int(os.path.join(path, "memory.current"), read) or 0
        limit = None
        p = path
        while True:     # the tightest memory.max on the way up is what binds
            try:
                m = read_int(os.path.join(p, "memory.max"), read)
            except Vanished:
                if p == path:
                    raise       # the cgroup itself is gone since its memory.stat was read
                break           # the root has none
            if m is not None:
                limit = m if limit is None else min(limit, m)
            if os.path.normpath(p) == os.path.normpath(self.layout.jobs_root):
                break
            p = os.path.dirname(p)
        return limit, usage, {"dirty": stat.get("file_dirty", 0), "writeback": stat.get("file_writeback", 0), **stat}


    def swap(self, path: str, stat: dict[str, int], limit: int | None) -> tuple[int | None, int] | None:
        """(the swap a memory cgroup may use, None if no limit of its own
        binds it; the swap it uses now), from ``memory()``'s ``stat`` and
        ``limit``. None if this kernel does not account swap per cgroup
        (v1 without ``swapaccount``, v2 without ``memory.swap.max``): the
        host's swap is all there is to go by.

        v2: the tightest ``memory.swap.max`` on the way up, and
        ``memory.swap.current``. v1: the memory+swap limit less the memory
        limit, and ``total_swap``. Raises ``Vanished`` if the cgroup is gone."""
        if self.layout.memory_v1:
            memsw = stat.get("memsw_limit")
            if memsw is None or "swap" not in stat:
                return None
            cap = None if memsw >= V1_UNLIMITED or limit is None else max(0, memsw - limit)
            return cap, stat["swap"]
        try:
            used = read_int(os.path.join(path, "memory.swap.current")) or 0
        except Vanished:
            if not os.path.isdir(path):
                raise
            return None     # no swap accounting on this kernel
        cap = None
        p = path
        while True:     # as memory.max: the tightest on the way up binds
            try:
                m = read_int(os.path.join(p, "memory.swap.max"))
            except Vanished:
                break
            if m is not None:
                cap = m if cap is None else min(cap, m)
            if os.path.normpath(p) == os.path.normpath(self.layout.jobs_root):
                break
            p = os.path.dirname(p)
        return cap, used


def reclaimable_bytes(stat: dict[str, int]) -> int:
    """File cache the kernel can give back: all of inactive_file and half of
    active_file (the active half is the working set, which would only be read
    back in). Dirty and writeback pages count: reclaim writes them and frees
    them, as the kernel's MemAvailable counts them, and no kill frees them (a
    killed writer's dirty cache stays charged to its cgroup until written).
    A v1 memcg fills with dirty pages under a build-like load (240 of 256 MiB
    here; its writes are throttled only against the host's dirty limits), and
    counting them as pinned put free memory at 0.2% for over a second: the
    redline killed the writer, freed 4 MiB, and a second later the service."""
    return stat.get("inactive_file", 0) + stat.get("active_file", 0) // 2


# The part of a memory cgroup's charge its memory.stat may leave out for good
# (per-CPU batches not yet summed, charges the statistics do not name): at
# least this, or a 64th of the cgroup's limit.
STAT_LAG_SLACK_BYTES = 16 << 20
V2_KERNEL_KEYS = ("slab", "kernel_stack", "pagetables", "sec_pagetables", "percpu", "vmalloc")


def stat_lag_bytes(usage: int, stat: dict[str, int], limit: int) -> int:
    """The charge (``usage``) of a memory cgroup that its ``stat`` (as
    ``memory()`` returns it) does not account for yet, beyond the slack; 0
    if none, or if the statistics cannot tell. The kernel sums the
    per-cgroup statistics late: on this 6.18 host a domain's
    ``memory.stat`` showed no cache at all for up to 2 s while
    ``memory.usage_in_bytes`` showed a stream's 255 MiB of it, so that
    free memory looked gone. Anonymous memory, page cache (shmem in it) and,
    on v2, kernel memory and sockets count; v1 names no kernel memory, so
    a v1 cgroup's large slab counts as lag (the core holds the redline for
    the lag only so long: STAT_LAG_HOLD_USEC, core/state.py)."""
    if "anon" in stat and "file" in stat:
        kernel = stat["kernel"] if "kernel" in stat else sum(stat.get(k, 0) for k in V2_KERNEL_KEYS)
        known = stat["anon"] + stat["file"] + kernel + stat.get("sock", 0) + stat.get("zswap", 0)
    elif "rss" in stat and "cache" in stat:
        known = stat["rss"] + stat["cache"]
    else:
        return 0
    lag = usage - known
    return lag if lag > stat_lag_slack_bytes(limit) else 0


def stat_lag_slack_bytes(limit: int) -> int:
    """What a memory cgroup's statistics may leave out of its charge for
    good, or miscount, without it being a lag (STAT_LAG_SLACK_BYTES)."""
    return max(STAT_LAG_SLACK_BYTES, limit // 64)


def stat_anon_bytes(stat: dict[str, int]) -> int:
    """The anonymous memory a memory cgroup's ``stat`` names (v2 ``anon``,
    v1 ``rss``; neither counts shmem), -1 if it names none."""
    return stat.get("anon", stat.get("rss", -1))


def _relative_name(path: str, domain_path: str) -> str:
    """``os.path.relpath(path, domain_path)``, without its cost where the
    path is plainly below (the walks join names to the domain's path)."""
    if path.startswith(domain_path + "/") and os.path.isabs(domain_path) and domain_path != "/" \
            and os.path.normpath(domain_path) == domain_path and "/." not in path and "//" not in path:
        return path[len(domain_path) + 1:]
    return os.path.relpath(path, domain_path)


def report_name(path: str, domain_path: str) -> str:
    """A cgroup's name as a log line shows it: its owner chose it, and it may
    hold newlines or terminal escapes."""
    return printable(os.path.relpath(path, domain_path))


def subcgroups(path: str) -> list[str]:
    """The names of a cgroup's children, sorted; none if it is gone or
    cannot be read. A symlink is not followed (cgroupfs makes none)."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _lists(path: str, pid: int) -> bool:
    """Whether a cgroup's own ``cgroup.procs`` lists a pid (False if it
    cannot be read)."""
    try:
        return pid in read_pids(os.path.join(path, "cgroup.procs"))
    except OSError:
        return False


def walk_cgroups(root: str, descend: Callable[[str], bool] | None = None, cut: list[str] | None = None,
                 max_depth: int = MAX_DEPTH, max_cgroups: int = MAX_CGROUPS,
                 listed: set[str] | None = None) -> Iterator[str]:
    """Every cgroup below ``root``, each folder's children in sorted order,
    depth first; into those for which ``descend`` (if given) is true.

    A loop with a stack of its own, not recursion: a subtree can be deeper
    than Python's recursion limit. Cgroups deeper than ``max_depth`` below
    ``root``, and any past the first ``max_cgroups``, are not read; why is
    added to ``cut`` (once each). ``listed``, if given, gets every folder
    whose children were listed."""
    stack = [(root, 0)]
    seen = 0
    while stack:
        dirpath, depth = stack.pop()
        names = subcgroups(dirpath)
        if listed is not None:
            listed.add(dirpath)
        if names and depth >= max_depth:
            if cut is not None and not any(c.startswith("subtree deeper") for c in cut):
                cut.append(f"subtree deeper than {max_depth} levels: not read below that")
            continue
        children = []
        for name in names:
            if seen >= max_cgroups:
                if cut is not None:
                    cut.append(f"subtree of more than {max_cgroups} cgroups: only the first {max_cgroups} read")
                return
            seen += 1
            full = os.path.join(dirpath, name)
            yield full
            if descend is None or descend(full):
                children.append(full)
        stack.extend((c, depth + 1) for c in reversed(children))


def _descendants(path: str, cut: list[str], max_cgroups: int = MAX_CGROUPS,
                 below: tuple[str, ...] | None = None) -> Iterator[tuple[str, list[int]]]:
    """Every cgroup below ``path`` with its own processes, passing over those
    that vanish while the subtree is walked; within the bounds of
    ``walk_cgroups``, noting in ``cut`` where it stopped short. A threaded
    cgroup has no ``cgroup.procs`` to read (EOPNOTSUPP): its processes show
    in its domain cgroup above. ``below``, if given, are the cgroups below
    ``path`` as a walk found them (``cgtable.Tree``): no folder is listed."""
    for full in (walk_cgroups(path, cut=cut, max_cgroups=max_cgroups) if below is None else below):
        try:
            pids = read_pids(os.path.join(full, "cgroup.procs"))
        except Vanished:
            continue
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                # Its owner made it unreadable (a path past PATH_MAX, say):
                # its processes are not listed; the kernel's own count
                # (cgroup.events) still tells the job is populated.
                note = f"a cgroup below cannot be read ({e.strerror}): its processes are not listed"
                if note not in cut:
                    cut.append(note)
                continue
            pids = []
        yield full, pids
