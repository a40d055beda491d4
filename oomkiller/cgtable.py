"""What a listing of jobs keeps between wakes, and how it knows it still holds.

Listing the jobs of a domain from scratch reads every cgroup of the domain's
tree and of each job's subtree: with a thousand jobs, a third of a second on
every wake. Most of it does not change while a cgroup exists: which cgroups
there are, and so which are jobs, their names, the cgroups below each job,
the v2 cgroup standing for a v1 job.

What a job holds (its processes, their ``oom_score_adj``, its charge) can
change at any time, but for most jobs, most of the time, it does not: a
listing reads in full only the jobs that changed (see ``Cgroupfs._job``).
A job is taken as it was read before when its processes (``cgroup.procs``
of its cgroups), their ``oom_score_adj`` and its memory usage (one small
file) are as they were, within ``REUSE_USAGE_SLACK``, and its full read is
younger than ``refresh_after``; its processes only while its charge, not
their own memory, scores it (``Job.committed_bytes``: a process moved in
brings memory charged elsewhere, and can give it back with this job's
usage unmoved). The rest of a read (``/proc`` status of each
process, ``memory.stat``, xattrs, the v2 counterpart) is what costs: in a
listing of a thousand idle jobs, about nine reads of every ten. What is
kept can be that old at most: its charge (``memory.stat`` parts that
move without the usage moving) and its processes' names and committed
memory, ``refresh_after`` old.
A walk reads again the jobs it may kill before it does (``Daemon._confirmed``).

A kept tree is checked again, without listing a folder, by one ``stat`` of
each of its cgroups: the kernel's cgroup filesystem (kernfs) gives a cgroup's
folder a link count of 2 plus its child cgroups and a new inode number to a
cgroup made again at the same path (inode numbers are never reused). So a
folder with the same inode and link count as when its children were listed,
whose listed children are all still there with their inodes, has exactly the
children it had. Each folder is stat'ed *before* it is listed, and a tree is
kept only if each count agrees with the children listed (a cgroup made or
removed during the walk, or a filesystem that counts links otherwise, is
never kept): a change the listing did not see always shows as a count or an
inode that differs. Anything in doubt is read again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

# Trees of cgroups below jobs and v2 counterparts kept, at most (one per job;
# each tree itself is bounded by the listing's budget, MAX_LISTING_CGROUPS).
MAX_TABLE_JOBS = 20_000
# Facts of jobs read alone (a walk's or an arming's reads, see
# ``Cgroupfs.job``) and not in the latest listing, kept at most: the oldest
# go first. A listing keeps only its own jobs' facts.
MAX_READ_ALONE = 256
# Listings of jobs kept (one per domain, rule and cgroups kept out).
MAX_TABLE_LISTINGS = 4
# A job's usage may move this much, and its full read be this old, for the
# job to be taken as read before (see the module's docstring). The usage
# file moves in steps (v1 charges per CPU in batches of 32 pages). A job
# with file cache beyond the slack (usage over its charge) could turn it
# into memory nobody can reclaim with its usage unmoved (at a limit of its
# own), so it is read in full more often, and so is a job with swap beyond
# the slack (counted in its charge, not its usage: at a limit of its own it
# swaps more with its usage unmoved); a job whose usage is all charge
# cannot grow its charge without its usage.
REUSE_USAGE_SLACK = 256 << 10
REUSE_MAX_AGE_S = 10.0
REUSE_MAX_AGE_PINNED_S = 60.0
# A v2 counterpart with more cgroups below it is not kept (it is found
# through the job's processes on every listing, as without a table).
MAX_V2_TREE = 256


def mark(path: str) -> tuple[int, int] | None:
    """(inode, link count) of a cgroup folder; None if it cannot be stat'ed."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    return st.st_ino, st.st_nlink


@dataclass(frozen=True)
class Tree:
    """A cgroup and every cgroup below it, as one walk found them, each with
    its mark (inode, link count) taken before its children were listed."""

    root: str
    inode: int
    nlink: int
    below: tuple[str, ...]                  # in ``walk_cgroups`` order
    below_marks: tuple[tuple[int, int], ...]

    def still(self, root_mark: tuple[int, int] | None = None) -> bool:
        """Whether the tree is still the same: one stat per cgroup."""
        if (root_mark or mark(self.root)) != (self.inode, self.nlink):
            return False
        for path, m in zip(self.below, self.below_marks):
            if mark(path) != m:
                return False
        return True


def survey(root: str, names_of, max_cgroups: int, max_depth: int) -> Tree | None:
    """The tree below ``root`` as ``walk_cgroups`` walks it (``names_of`` is
    its lister), or None if it cannot be kept: past ``max_cgroups`` or
    ``max_depth`` (the full walk says where it stopped), a folder that
    cannot be stat'ed, or a link count that disagrees with the children
    listed (a change during the walk, or a filesystem that is not kernfs)."""
    marks: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    stack = [(root, 0)]
    while stack:
        dirpath, depth = stack.pop()
        m = mark(dirpath)       # before the listing: a child made after it shows in the count
        if m is None:
            return None
        names = names_of(dirpath)
        if m[1] != len(names) + 2 or (names and depth >= max_depth):
            return None
        marks[dirpath] = m
        if len(order) + len(names) > max_cgroups:
            return None
        children = [os.path.join(dirpath, n) for n in names]
        order.extend(children)
        stack.extend((c, depth + 1) for c in reversed(children))
    rm = marks[root]
    return Tree(root, rm[0], rm[1], tuple(order), tuple(marks[p] for p in order))


@dataclass
class Facts:
    """What does not change while a job's cgroup exists (the same path and
    inode): its name in the domain and the cgroups below it; and its v2
    counterpart on hybrid hosts, which is checked against the job's
    processes on every listing (``Cgroupfs.job``)."""

    inode: int
    domain_path: str
    name: str
    tree: Tree | None = None
    v2: Tree | None = None          # the v2 counterpart and its subtree
    last: Read | None = None        # its latest full read


@dataclass(frozen=True)
class Read:
    """A job as read in full, and what says it has not changed since."""

    job: object                     # the Job
    pids: tuple[int, ...]           # sorted, of the job's cgroups and those below
    adjs: tuple[int, ...]           # each one's oom_score_adj
    usage: int                      # memory.current (v2), memory.usage_in_bytes (v1)
    at: float                       # time.monotonic() of the read


def refresh_after(inode: int, pinned: bool = False) -> float:
    """How old a job's full read may be before it is read in full again:
    between half of REUSE_MAX_AGE_S (REUSE_MAX_AGE_PINNED_S if its usage
    was all charge) and all of it, by its cgroup's inode, so that jobs read
    in full together (the first listing) are not all read in full again
    together."""
    return (REUSE_MAX_AGE_PINNED_S if pinned else REUSE_MAX_AGE_S) * (32 + inode % 32) / 64


@dataclass(frozen=True)
class Entry:
    """One job of a kept listing, with how its rule depends on what the
    walk read that can change without a cgroup being made or removed
    (``memory.oom.group``, whether it holds processes of its own)."""

    path: str
    rule: str
    oom_read: bool = False      # memory.oom.group was read to decide it
    by_oom: bool = False        # a job because memory.oom.group is set
    # "" the rule does not depend on its own processes; "content" a leaf
    # whose rule names whether it holds processes; "required" a job only
    # while it holds processes of its own
    own: str = ""

    def rule_now(self, oom_group: bool, own_procs: bool) -> str | None:
        """Its rule given ``memory.oom.group`` and its own processes read
        now; None if it would not be this job any more (walk again)."""
        if self.by_oom:
            return self.rule if oom_group else None
        if self.oom_read and oom_group:
            return "memory.oom.group"
        if self.own == "required" and not own_procs:
            return None
        if self.own == "content":
            return "cgroup with processes" if own_procs else "empty leaf cgroup"
        return self.rule


@dataclass
class Listing:
    """The jobs one walk of a domain found, and what to check again before
    they are taken as still the jobs: the mark of every cgroup the walk
    looked at (its link count too where the cgroups below it counted), and
    for the cgroups it went into, what it read of them that decided so."""

    entries: list[Entry] = field(default_factory=list)
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)
    # path -> (memory.oom.group as read or None if not read, has processes of its own or None)
    probes: dict[str, tuple[bool | None, bool | None]] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)       # folders whose children the walk listed
    counted: set[str] = field(default_factory=set)      # cgroups whose having children decided
    keepable: bool = True

    def note(self, path: str) -> bool:
        """Mark a cgroup the walk looks at, before it reads it; False if it
        cannot be stat'ed (the listing is then not kept)."""
        m = mark(path)
        if m is None:
            self.keepable = False
            return False
        self.marks[path] = m
        return True

    def counts_agree(self) -> bool:
        """Each folder whose children the walk listed has as many as its
        link count said when it was marked (see the module's docstring)."""
        children: dict[str, int] = {}
        for path in self.marks:
            parent = os.path.dirname(path)
            children[parent] = children.get(parent, 0) + 1
        for path in self.listed:
            m = self.marks.get(path)
            if m is None or m[1] != children.get(path, 0) + 2:
                return False
        return True

    def still(self, stats: dict[str, tuple[int, int]], oom_group, own_procs) -> bool:
        """Whether the walk would find the same jobs now: every cgroup it
        looked at has its mark (one stat each, kept in ``stats`` for the
        reads that follow), and each cgroup it went into reads as it did.
        ``oom_group`` and ``own_procs`` read a cgroup (``Cgroupfs``'s)."""
        for path, (inode, nlink) in self.marks.items():
            m = mark(path)
            if m is None or m[0] != inode or (m[1] != nlink and (path in self.listed or path in self.counted)):
                return False
            stats[path] = m
        try:
            for path, (oom, own) in self.probes.items():
                if oom is not None and oom_group(path) != oom:
                    return False
                if own is not None and own_procs(path) != own:
                    return False
        except Exception:   # noqa: BLE001 - in doubt, the walk is done again, and says what failed
            return False
        return True
