"""What is a job: the rule that turns a domain's cgroup tree into the jobs
the ranker orders and the killer kills whole.

The domain's tree is read from the top. At each cgroup, in this order:

1. it holds the cgroup of PID 1 or of oomkiller below it: not a job, its
   children are looked at (so the unit running oomkiller is never inside a
   job, and neither is init);
2. it matches one of the ``jobs`` globs, or has ``memory.oom.group`` set (the
   kernel kills it as one unit too): a job;
3. with ``auto`` in ``jobs`` (the default), its name decides where it says
   enough (``by_name``):

   * a Kubernetes pod (``kubepods-…-pod<uid>.slice`` with the systemd cgroup
     driver, ``kubepods/…/pod<uid>`` with cgroupfs): a job;
   * any other slice (``*.slice``): never a job, its children are looked at;
   * a user's service manager (``user@UID.service``): not a job, its
     children are (the desktop's apps live in its ``app.slice``);
   * any other systemd unit (``*.service``, ``*.scope``, ``*.socket``,
     ``*.mount``, ``*.swap``), an LXC container (``lxc.payload.*``): a job;

   and otherwise (hosts without systemd) what it holds decides: a cgroup
   with processes of its own is a job with its whole subtree, one with only
   child cgroups is looked into, an empty leaf is a job (with nothing to
   kill until a process arrives);
4. without ``auto``: not a job, its children are looked at.

The shallowest cgroup that is a job is the job: nothing below a job is
looked at for jobs. Everything here is a pure function of names; the walk
that reads the tree is ``Cgroupfs.job_paths``.
"""
from __future__ import annotations

import enum
import re

AUTO = "auto"       # the word in ``jobs`` that turns the rule of names on

USER_MANAGER = "user manager"
UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap")

# kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice (uid's "-" as "_")
_SYSTEMD_POD = re.compile(r"kubepods(?:-[a-z]+)*-pod[0-9a-f_]+\.slice", re.ASCII)
# kubepods/burstable/pod<uid>, kubepods/pod<uid>
_CGROUPFS_POD = re.compile(r"pod[0-9a-f][0-9a-f-]+", re.ASCII)
_USER_MANAGER = re.compile(r"user@\d+\.service", re.ASCII)


class Verdict(enum.Enum):
    JOB = "job"
    DESCEND = "descend"     # not a job: look at its children
    CONTENT = "content"     # the name says nothing: what the cgroup holds decides


def by_name(rel: str) -> tuple[Verdict, str]:
    """What the name of a cgroup (its path relative to the domain) says it
    is, and why in a few words."""
    parts = rel.strip("/").split("/")
    base = parts[-1]
    in_kubepods = any(p == "kubepods" or p.startswith("kubepods.") or p.startswith("kubepods-")
                      for p in parts[:-1])
    if _SYSTEMD_POD.fullmatch(base):
        return Verdict.JOB, "Kubernetes pod"
    if in_kubepods and _CGROUPFS_POD.fullmatch(base):
        return Verdict.JOB, "Kubernetes pod"
    if base.endswith(".slice"):
        return Verdict.DESCEND, "slice"
    if _USER_MANAGER.fullmatch(base):
        return Verdict.DESCEND, USER_MANAGER
    if base.endswith(UNIT_SUFFIXES):
        return Verdict.JOB, "systemd unit"
    if base.startswith("lxc.payload."):
        return Verdict.JOB, "LXC container"
    return Verdict.CONTENT, ""


def by_content(has_own_procs: bool, has_children: bool) -> tuple[Verdict, str]:
    """Where the name says nothing: a cgroup with processes of its own is a
    job; one with only child cgroups is looked into; an empty leaf is a job."""
    if has_own_procs:
        return Verdict.JOB, "cgroup with processes"
    if has_children:
        return Verdict.DESCEND, "holds cgroups"
    return Verdict.JOB, "empty leaf cgroup"


def globs_of(jobs: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """The globs of a ``jobs`` setting, and whether ``auto`` is among them."""
    return tuple(g for g in jobs if g != AUTO), AUTO in jobs
