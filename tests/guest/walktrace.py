"""The daemon with its walks traced: ``python tests/guest/walktrace.py run ...``
runs ``oomkiller`` as usual, in this process (systemd's MainPID), with its
walk and listing steps timed and written to ``$OOMK_WALKTRACE`` (JSON
lines): each wake that walked (what ``walk_jobs`` found, how long each step
took), each listing (on the loop or in the listing thread) and each
snapshot. For measure_walk.py's ``--trace``; nothing in the daemon changes
but the time the tracing itself takes.

With ``OOMK_WALKTRACE_EARLY=1`` (measure_walk.py's ``--early-listing``), an
experiment: the core's needs ask for the next background listing once the
latest is as old as ``LISTING_REUSE_USEC`` less twice the time the latest
took, so that it lands before the one in hand is too old for a walk (the
daemon asks once it is ``LISTING_REUSE_USEC`` old)."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from oomkiller import cgroupfs, daemon, domain, procfs  # noqa: E402
from oomkiller.cli import main  # noqa: E402

OUT = open(os.environ.get("OOMK_WALKTRACE", "/run/oomkiller/walktrace.jsonl"), "a", buffering=1)
LOCK = threading.Lock()


def now_us() -> int:
    return time.monotonic_ns() // 1000


def emit(**kw) -> None:
    kw["thread"] = threading.current_thread().name
    with LOCK:
        OUT.write(json.dumps(kw) + "\n")


def timed(cls, name, what, extra=None):
    real = getattr(cls, name)

    def wrapper(self, *a, **kw):
        t0 = now_us()
        out = real(self, *a, **kw)
        row = {"what": what, "at": t0, "usec": now_us() - t0}
        if extra is not None:
            row.update(extra(self, out))
        emit(**row)
        return out
    setattr(cls, name, wrapper)


def walk_extra(d, out):
    listed = d._listed
    return {"listing_age": d._walk_listing_age, "walk_listings": dict(d.walk_listings),
            "listed_at": listed[0] if listed else None, "jobs": len(out),
            "lister_busy": d.lister.busy if d.lister else None}


timed(daemon.Daemon, "walk_jobs", "walk_jobs", walk_extra)
timed(daemon.Daemon, "_listed_instead", "listed_on_loop")
timed(daemon.Daemon, "_confirmed", "confirmed", lambda d, out: {"ok": out is not None})
timed(daemon.Daemon, "_usable", "usable", lambda d, out: {"ok": out, "jobs_changed": d._jobs_changed,
                                                         "age": d.now_usec() - d._listed[0] if d._listed else None})
timed(daemon.Daemon, "core_jobs", "core_jobs", lambda d, out: {"pending": not isinstance(out, list)})
# The parts of a wake on the loop, summed per wake (usec, calls) and written
# with its row: kept in memory, so that timing them costs a clock read each.
PARTS: dict = {}
MAIN = threading.main_thread()


def part(owner, name, key):
    real = getattr(owner, name)

    def wrapper(*a, **kw):
        if threading.current_thread() is not MAIN:
            return real(*a, **kw)
        t0 = time.monotonic_ns()
        try:
            return real(*a, **kw)
        finally:
            p = PARTS.setdefault(key, [0, 0])
            p[0] += (time.monotonic_ns() - t0) // 1000
            p[1] += 1
    setattr(owner, name, wrapper)


for _cls, _name in ((cgroupfs.Cgroupfs, "usage"), (cgroupfs.Cgroupfs, "_charge"), (cgroupfs.Cgroupfs, "_v2"),
                    (cgroupfs.Cgroupfs, "_below"), (cgroupfs.Cgroupfs, "trusted_xattrs"),
                    (cgroupfs.Cgroupfs, "oom_group"), (cgroupfs.Cgroupfs, "recheck_empty"),
                    (procfs.Procfs, "proc"), (procfs.Procfs, "oom_score_adj"),
                    (daemon.Daemon, "_record"), (daemon.Daemon, "_grown"), (daemon.report, "lowmem_lines"),
                    (daemon.report, "candidate_record")):
    part(_cls, _name, _name)
part(daemon, "rank", "rank_in_walk")           # the walk's own rankings (_confirmed)
part(daemon.core, "rank", "rank_in_core")      # the core's (core.step)
part(cgroupfs, "read_pids", "read_pids")   # cgroup.procs: in _job, recheck_empty, the listing check
timed(daemon.Daemon, "wake", "wake", lambda d, out: {"walked": out is not None, "parts": dict(PARTS)})
_timed_wake = daemon.Daemon.wake


def wake_parts(self, *a, **kw):
    PARTS.clear()
    return _timed_wake(self, *a, **kw)


daemon.Daemon.wake = wake_parts
timed(cgroupfs.Cgroupfs, "jobs", "listing", lambda fs, out: {"jobs": len(out)})
timed(cgroupfs.Cgroupfs, "job", "job_read")
timed(domain.Domain, "snapshot", "snapshot")

if os.environ.get("OOMK_WALKTRACE_EARLY") == "1":
    _core_jobs = daemon.Daemon.core_jobs

    def core_jobs(self, *a, **kw):
        self._adopt()
        listed = self._listed
        if self.lister is not None and listed is not None and not self.lister.busy:
            if self.now_usec() - listed[0] >= daemon.LISTING_REUSE_USEC - 2 * self._listing_usec:
                self.lister.request()
                emit(what="early_request", at=now_us(), usec=0, age=self.now_usec() - listed[0])
        return _core_jobs(self, *a, **kw)
    daemon.Daemon.core_jobs = core_jobs

_wait = daemon.Lister.wait


def wait(self, timeout_s):
    t0 = now_us()
    out = _wait(self, timeout_s)
    emit(what="lister_wait", at=t0, usec=now_us() - t0, ok=out)
    return out


daemon.Lister.wait = wait

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
