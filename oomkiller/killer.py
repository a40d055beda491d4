"""Killing a job: every process of a cgroup subtree, forks included.

* ``cgroup.kill`` where the job has a cgroup that holds its processes and no
  one else's (v2; on hybrid hosts a v1 job whose processes share a v2 cgroup
  of their own): atomic and fork-proof, written before anything else; then
  the sweep below waits for the subtree to empty.
* Otherwise signals alone, in the sweep: read the subtree's pids, open a pidfd
  for each, read the subtree again. A pid still listed after its pidfd was
  opened is the process that pidfd refers to (a live pid is unique; had the
  pidfd's process died in between, ``pidfd_send_signal`` fails with ESRCH),
  so SIGKILL goes through that pidfd. That read is also the next round's
  list, so a round costs one read of the subtree whatever its size, and
  membership never depends on ``/proc/PID/cgroup``, whose paths are relative
  to the reader's cgroup namespace. Rounds repeat until the subtree holds no
  one but the spared, or ``kill_timeout_ms`` has passed.

A process its owner moves out of the job mid-kill (into another cgroup
they hold) is still the job's: every pidfd confirmed, by a second listing
or by a start before the read that listed its pid (for the processes as
ranked: the same pid and start time, from before the ranking's listing),
gets SIGKILL through the pidfd wherever the process went, also beside
``cgroup.kill``, which only hits what the cgroup holds at the write. The
kill is done once the job is empty and every process signalled through a
kept pidfd has exited; one alive outside the job at the deadline is an
evasion (``KillResult.evaded_pids``), and the job is not emptied. A job
that reads empty with anonymous memory charged is read again, up to
``MOVER_LOOK_MS`` per walk (``_look_for_movers``).

Nothing is ever frozen here. A job someone else froze with the v1 freezer
is thawed once our SIGKILLs are pending (``_thaw_v1_freezer``): v1 frozen
tasks act on SIGKILL only once thawed; and so is any v1 freezer cgroup
found frozen holding a process we signalled (``_thaw_where_frozen``). A SIGKILLed process cannot fork any
more (a fatal signal pending aborts ``fork``), so each round leaves only the children forked since the
previous read, and a fork bomb runs out of forkers. Freezing first bought
nothing over that and cost a failure mode: v1 frozen tasks act on SIGKILL
only once thawed, so a crash between freeze and thaw left the job frozen for
good, and no restart could tell that freeze from someone else's. Measured on
this project's machines (2 cores, Linux 6.18, hybrid cgroups), a v1-only job
with no freezer, signal to empty (``tests/kernel/measure_forkbomb.py``):

* 500 Python processes all forking in a loop on one core (``pids.max``
  500): 147 to 289 ms. With ``process_mrelease`` on the killing thread, as
  before, 11.6 to 19.1 s: every kill only ended when the bomb stopped
  itself, 20 s after it started; the sweep alone is not the cause (this
  sweep with the call inline stalls the same way).
* a respawning bomb, each parent forking a replacement the moment a child
  dies (``pids.max`` 1000): 727 dash processes in 60 to 96 ms, 511 Python
  ones in 79 to 154 ms; killed children first, so that every parent
  respawns, 168 to 682 ms and 563 to 1129 ms.

All far inside the 5 s default of ``kill_timeout_ms``.

Processes with ``oom_score_adj=-1000`` are spared as the kernel's
``memory.oom.group`` spares them: a job holding one when ranked is killed by
signals, not ``cgroup.kill``, and is done when only those are left. Kernel
threads, PID 1 and oomkiller itself are never signalled; each pid's
``oom_score_adj`` and flags are read after its pidfd is open, and a spared
verdict only stands if the pidfd's process was still alive after the read.

Each victim's memory is handed to ``process_mrelease`` (Linux 5.15+) on a
thread of its own (``Releaser``): the call reaps a whole address space and
can block for long behind the victim's mmap lock. The thread gets a dup of
the pidfd through a bounded queue (``MRELEASE_QUEUE``); a request that finds
the queue full is dropped and counted (the victim's memory then comes back
with its exit). The kill itself never waits on it, and the deadline is
checked before every pidfd, every signal and every wait, so a kill ends at
most one read of the subtree and one signal past ``kill_timeout_ms``
(measured: 30 ms asked, 31 to 42 ms taken, with a fork bomb on the CPUs).

A result is ``ok`` only when oomkiller signalled at least one process
itself. For ``cgroup.kill`` that is a listed pid whose pidfd, opened and
polled just before the write, showed it still alive (``_alive_before_kill``):
the write succeeds on a cgroup someone else has just emptied. So a job that
empties before our first signal (the kernel's OOM killer took it, it exited)
is reported as such, ``ok`` False, and the walk goes on as after any failed
attempt. Exits are timed through
the pidfds. Choosing is the ranker's; dry-run lives here.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import select
import signal
import threading
import time
from typing import Callable

from .cgroupfs import ANON_SUSPECT_BYTES, Cgroupfs
from .core.rank import OOM_SCORE_ADJ_MIN
from .files import GONE_ERRNOS
from .model import Candidate, Job, KillResult, Ranking
from .output import start_thread
from .procfs import PF_KTHREAD, boot_ticks as _boot_tick, start_ticks as _start_tick
from .report import printable

log = logging.getLogger("oomkiller")

SYS_PROCESS_MRELEASE = 448      # x86_64 and the generic syscall table

# How long to wait for exits between rounds when the last one found no one
# new: exits take well under a millisecond each, so sweeping faster is waste.
SWEEP_PAUSE_MS = 1

# How long a kill looks for the processes of a job that reads empty but
# still has anonymous memory charged (``_Kill._look_for_movers``).
MOVER_LOOK_MS = 50

# Pidfds kept open per kill to time exits and to know a listed pid is still
# the process already signalled. Beyond this the pidfd is closed right after
# its signal: a job of thousands of processes must not run the daemon out of
# file descriptors.
MAX_TRACKED_PIDFDS = 256

# A signalled pid whose pidfd was not kept is signalled again, if still
# listed, after this long: it is most likely the same process on its way
# out, but it may be a new one that reused the pid.
RESIGNAL_USEC = 20_000

# A cgroup.kill that cannot be written for these is not a failed kill: the
# sweep's signals do the job (a read-only cgroup mount, as a container
# runtime gives a container that is not privileged).
NOT_WRITABLE_ERRNOS = frozenset((errno.EROFS, errno.EACCES, errno.EPERM))

# How often a kill looks, at most, for v1 freezer cgroups that hold processes
# it signalled (``_Kill._thaw_where_frozen``).
THAW_LOOK_USEC = 50_000

# process_mrelease requests waiting for the releasing thread; more are dropped.
MRELEASE_QUEUE = 64


EMPTIED_BEFORE_SIGNAL = "emptied before our signal"
VANISHED_BEFORE_SIGNAL = "cgroup vanished before our signal"
VANISHED_BEFORE_KILL = "cgroup vanished before the kill"
# Someone else ended the job between the ranking and our kill.
GONE_BEFORE_SIGNAL = (EMPTIED_BEFORE_SIGNAL, VANISHED_BEFORE_SIGNAL, VANISHED_BEFORE_KILL)


class Releaser:
    """``process_mrelease`` on a thread of its own, fed by a bounded queue.

    ``submit`` never blocks: it queues a dup of the pidfd (the thread closes
    it) or, with the queue full, drops the request and counts it. ctypes
    releases the GIL around the syscall, so the killing thread runs on while
    the reaping thread sits in the kernel."""

    def __init__(self, depth: int = MRELEASE_QUEUE,
                 syscall: Callable[[int], int] | None = None) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = syscall or self._mrelease
        self._q: queue.Queue[int] = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        self.available = True       # False once the kernel said ENOSYS
        self.queued = self.dropped = 0          # written by the submitting thread
        self.released = self.failed = 0         # written by the releasing thread

    def _mrelease(self, pidfd: int) -> int:
        """The syscall; 0 or an errno."""
        if self._libc.syscall(SYS_PROCESS_MRELEASE, pidfd, 0) == 0:
            return 0
        return ctypes.get_errno()

    def submit(self, pidfd: int) -> bool:
        if not self.available:
            return False
        try:
            fd = os.dup(pidfd)
        except OSError:
            self.dropped += 1
            return False
        try:
            self._q.put_nowait(fd)
        except queue.Full:
            os.close(fd)
            self.dropped += 1
            return False
        self.queued += 1
        if self._thread is None:
            self._thread = start_thread(self._run, "oomkiller-mrelease")
        return True

    def _run(self) -> None:
        while True:
            fd = self._q.get()
            try:
                err = self._syscall(fd) if self.available else 0
            except Exception:       # never let the thread die: the queue would fill for good
                err = -1
            finally:
                os.close(fd)
                self._q.task_done()
            if err == errno.ENOSYS:
                self.available = False
            elif err:
                self.failed += 1
            else:
                self.released += 1

    def idle(self) -> bool:
        return self._q.unfinished_tasks == 0

    def stats(self) -> dict[str, int | bool]:
        return {"available": self.available, "queued": self.queued, "released": self.released,
                "failed": self.failed, "dropped": self.dropped, "pending": self._q.unfinished_tasks}


class Killer:
    def __init__(self, cgroupfs: Cgroupfs, *, dry_run: bool, self_pid: int,
                 timeout_usec: int, clock: Callable[[], int] = time.monotonic_ns,
                 releaser: Releaser | None = None) -> None:
        self.cg = cgroupfs
        self.dry_run = dry_run
        self.self_pid = self_pid
        self.timeout_usec = timeout_usec
        self.clock = clock
        self.releaser = releaser or Releaser()
        # Called with the job just before its first signal (after the
        # checks that may refuse it); it must not block (marks.CgroupMarks.before).
        self.before_signal: Callable[[Job], None] | None = None
        # The first cgroup.kill that could not be written, and why ("" if none).
        self.kill_file_refused = ""
        # What is left of MOVER_LOOK_MS for the kills of this walk (or kill).
        self.look_left_usec = MOVER_LOOK_MS * 1000

    @property
    def mrelease_ok(self) -> bool:
        return self.releaser.available

    def now_usec(self) -> int:
        return self.clock() // 1000

    # -- the walk -------------------------------------------------------------
    def walk(self, ranking: Ranking, still_short: Callable[[], bool] | None = None, past_gone: bool = True
             ) -> list[tuple[Candidate, KillResult]]:
        """Kill the first candidate that can be killed; return every attempt.

        After an attempt that killed nothing (the job emptied or vanished
        before our signal: maybe the kernel's OOM killer got there first,
        and its memory is back), ``still_short()`` is asked before the next
        candidate, and the walk ends if memory is no longer short. With
        ``past_gone`` false the walk also ends after a job that was gone
        before our signal: with nothing to re-check, the shortage may have
        gone with it."""
        attempts = []
        self.look_left_usec = MOVER_LOOK_MS * 1000      # shared by the walk's attempts
        for c in ranking.walk():
            if attempts and still_short is not None and not still_short():
                break
            if attempts and not past_gone and attempts[-1][1].error in GONE_BEFORE_SIGNAL:
                break
            res = self.kill(c, walking=True)
            attempts.append((c, res))
            if res.ok:
                break
        return attempts

    def kill(self, c: Candidate, walking: bool = False) -> KillResult:
        """Kill one job; ``walking`` when part of ``walk``, whose attempts
        share one ``MOVER_LOOK_MS``."""
        if not walking:
            self.look_left_usec = MOVER_LOOK_MS * 1000
        job = c.job
        if self.dry_run:
            return KillResult(job, ok=True, dry_run=True, method="none",
                              signalled_pids=tuple(p.pid for p in job.procs))
        try:
            return _Kill(self, c).run()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV):
                return KillResult(job, False, False, "none", error=VANISHED_BEFORE_KILL)
            return KillResult(job, False, False, "none", error=f"kill failed: {e}")

    def term(self, c: Candidate) -> KillResult:
        """The SIGTERM step: SIGTERM, once, to every process of the job's
        subtree but the spared (as for a kill), each through a pidfd whose
        pid the subtree listed after it was opened. No waiting: the job has
        ``term_grace_ms`` to exit, and the core looks again. ``ok`` when at
        least one process was signalled; method ``term``."""
        job = c.job
        if self.dry_run:
            return KillResult(job, ok=True, dry_run=True, method="term",
                              signalled_pids=tuple(p.pid for p in job.procs))
        try:
            return self._term(c)
        except OSError as e:
            if e.errno in GONE_ERRNOS:
                return KillResult(job, False, False, "none", error=VANISHED_BEFORE_SIGNAL)
            return KillResult(job, False, False, "none", error=f"SIGTERM failed: {e}")

    def _term(self, c: Candidate) -> KillResult:
        job = c.job
        if os.stat(job.path).st_ino != job.inode:
            return KillResult(job, False, False, "none", error="cgroup was replaced since it was ranked")
        listed = self.cg.subtree_pids(job.path)
        if 1 in listed or self.self_pid in listed:
            return KillResult(job, False, False, "none", error="holds PID 1 or oomkiller: refused")
        deadline = self.now_usec() + self.timeout_usec
        proc_root = self.cg.procfs.root
        signalled: list[int] = []
        todo = [p for p in listed if p != 1 and p != self.self_pid]
        # In batches, so that a job of thousands holds few descriptors.
        while todo and self.now_usec() < deadline:
            batch, todo = todo[:MAX_TRACKED_PIDFDS], todo[MAX_TRACKED_PIDFDS:]
            opened: dict[int, int] = {}
            for pid in batch:
                try:
                    opened[pid] = os.pidfd_open(pid)
                except OSError:
                    continue        # exited, or out of descriptors: it gets no SIGTERM
            try:
                still = set(self.cg.subtree_pids(job.path))
                for pid, fd in opened.items():
                    # A pid listed after its pidfd was opened is that process.
                    if pid not in still or _spared(proc_root, pid) is not False:
                        continue
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGTERM)
                    except OSError:
                        continue    # ESRCH: it died in between
                    signalled.append(pid)
            finally:
                for fd in opened.values():
                    os.close(fd)
        if not signalled:
            return KillResult(job, False, False, "none",
                              error=EMPTIED_BEFORE_SIGNAL if not listed else "no process could be sent SIGTERM")
        return KillResult(job, True, False, "term", tuple(sorted(signalled)))

    def process_mrelease(self, pidfd: int) -> None:
        """Ask for the victim's memory back now; never waits (see ``Releaser``)."""
        self.releaser.submit(pidfd)


class _Kill:
    """One kill of one job."""

    def __init__(self, killer: Killer, c: Candidate) -> None:
        self.k = killer
        self.cg = killer.cg
        self.job = c.job
        self.proc_root = self.cg.procfs.root
        self.spared_at_rank = {p.pid for p in c.job.procs if p.oom_score_adj <= OOM_SCORE_ADJ_MIN}
        self.exempt: set[int] = set()           # spared, as found during the kill
        self.signalled: set[int] = set()        # pids we killed, by pidfd or cgroup.kill
        self.hit_at: dict[int, int] = {}        # pid -> when we last signalled it through a pidfd
        self.tracked: dict[int, int] = {}       # pid -> pidfd, open until it polls readable (exit)
        self.fd_pid: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self.poller = select.poll()
        self.wrote_kill = False
        self.populated_at_write = False     # cgroup.kill's cgroup was populated just before our write
        self.unseen_left = False            # the deadline came with the job populated, no pid listed
        self.thaw_checked = False
        self.thawed = False
        self.thaw_looked_usec = -THAW_LOOK_USEC
        self.start = 0
        self.deadline = 0

    def run(self) -> KillResult:
        job = self.job
        if os.stat(job.path).st_ino != job.inode:
            return KillResult(job, False, False, "none", error="cgroup was replaced since it was ranked")
        listed_tick = _boot_tick()
        pids = self.cg.subtree_pids(job.path)
        populated = bool(pids)
        if not pids:
            # Maybe only moving between the job's cgroups while they were read.
            pids, populated = self.cg.recheck_empty(job.path, job.v2_path)
        if 1 in pids or self.k.self_pid in pids:
            return KillResult(job, False, False, "none", error="holds PID 1 or oomkiller: refused")
        # The job's processes as ranked that live on outside it: moved out
        # since (into another cgroup their owner holds), they are still the
        # job that was chosen.
        away = self._ranked_away(pids)
        if not populated and not away:
            pids = self._look_for_movers()
            populated = bool(pids)
            if 1 in pids or self.k.self_pid in pids:
                return KillResult(job, False, False, "none", error="holds PID 1 or oomkiller: refused")
        if not populated and not away:
            return KillResult(job, False, False, "none", error=EMPTIED_BEFORE_SIGNAL)
        if pids and not set(pids) - self.spared_at_rank and not away:
            return KillResult(job, False, False, "none", error="no killable process when the kill began")

        try:
            if self.k.before_signal is not None:
                self.k.before_signal(job)
        except BaseException:
            for fd in away.values():
                os.close(fd)
            raise
        self.start = self.k.now_usec()
        self.deadline = self.start + self.k.timeout_usec
        method = "signal"
        alive_after: set[int] = set()
        try:
            for pid, fd in away.items():
                self._hit(pid, fd)
            kill_file = None if self.spared_at_rank else self._kill_file(pids)
            if kill_file:
                alive, moved = self._alive_before_kill(pids, listed_tick) if pids else ({}, {})
                # No pid was listed alive to prove the write kills anyone
                # (they moved between the job's cgroups while read): the
                # kernel's count, just before it, is the proof.
                self.populated_at_write = (not alive and
                                           bool(self.cg.events_populated(os.path.dirname(kill_file))))
                try:
                    _write(kill_file, "1")
                    self.wrote_kill = True
                    method = "cgroup.kill"
                except OSError as e:
                    for fd in (*alive.values(), *moved.values()):
                        os.close(fd)
                    if e.errno not in GONE_ERRNOS and e.errno not in NOT_WRITABLE_ERRNOS:
                        # Turned down otherwise (EOPNOTSUPP: its owner made
                        # it threaded since it was checked): the chosen job
                        # is killed all the same, by signals.
                        log.debug("OOM: cannot write %s (%s): killing by signals", kill_file,
                                  e.strerror or e)
                    # The v2 cgroup went away, or its cgroup.kill may not be
                    # written (a container's cgroup tree mounted read-only):
                    # signals alone will do.
                    if e.errno in NOT_WRITABLE_ERRNOS and not self.k.kill_file_refused:
                        self.k.kill_file_refused = f"{kill_file}: {e.strerror}"
                        log.warning("OOM: cannot write %s (%s): killing by signals "
                                    "(a read-only cgroup mount?)", kill_file, e.strerror)
                else:
                    # cgroup.kill kills what the cgroup holds at the write:
                    # one that left it since it was listed (into another
                    # cgroup its owner holds) is not hit. So each process
                    # confirmed alive in the job also gets SIGKILL through
                    # its pidfd, which reaches it wherever it is; ours are
                    # only those still alive then (writing cgroup.kill to a
                    # cgroup someone else just emptied succeeds and kills no
                    # one). Others listed (past MAX_TRACKED_PIDFDS) get
                    # their SIGKILL by pidfd in the sweep.
                    for pid, fd in alive.items():
                        try:
                            signal.pidfd_send_signal(fd, signal.SIGKILL)
                        except OSError:
                            pass        # ESRCH: dead already, by the write or on its own
                        self._killed(pid, fd)
                    for pid, fd in moved.items():
                        self._hit(pid, fd)
            remaining = self._sweep(pids, listed_tick)
            took = self.k.now_usec() - self.start
            self._wait_exits(0)
            alive_after = set(self.tracked)
        finally:
            for fd in self.tracked.values():
                os.close(fd)
            self.tracked.clear()
        signalled = tuple(sorted(self.signalled))
        # Signalled through its pidfd, still alive at the end, and not in the
        # job: it left it (for a cgroup its owner holds) and outlived our
        # SIGKILL until the deadline. The job is not done while it lives.
        evaded = tuple(sorted(alive_after - set(remaining or ())))
        evasion = f"; {len(evaded)} evaded: alive outside the job: {list(evaded[:8])}" if evaded else ""
        # cgroup.kill written to a job populated right before the write and
        # emptied after it: ours, though no pid of it could be listed.
        ours = bool(signalled) or (self.wrote_kill and self.populated_at_write and not remaining
                                   and not self.unseen_left)
        exit_usec = max(self.exits.values(), default=self.start) - self.start
        if self.unseen_left and not remaining:
            return KillResult(job, ours, False, method if ours else "none", signalled,
                              f"still populated after {took // 1000} ms, its processes moving "
                              "between its cgroups faster than they could be listed" + evasion,
                              evaded_pids=evaded, still_populated=True, thawed=self.thawed)
        if remaining:
            # Signalled, maybe given back by process_mrelease, but not emptied:
            # no signal_to_empty_usec, and the pids left say so.
            return KillResult(job, ours, False, method if ours else "none", signalled,
                              f"{len(remaining)} procs left after {took // 1000} ms: {remaining[:8]}" + evasion,
                              left_pids=tuple(remaining), evaded_pids=evaded, thawed=self.thawed)
        if evaded:
            # The job emptied, but not by the death of all we signalled.
            return KillResult(job, True, False, method, signalled,
                              f"{len(evaded)} evaded after {took // 1000} ms: alive outside the job: "
                              f"{list(evaded[:8])}", evaded_pids=evaded, thawed=self.thawed)
        if not ours:
            # Someone else's doing (the kernel's OOM killer, an exit): not a kill of ours.
            why = (VANISHED_BEFORE_SIGNAL if remaining is None else
                   "only spared processes left" if self.exempt else EMPTIED_BEFORE_SIGNAL)
            return KillResult(job, False, False, "none", (), why)
        if remaining is None:
            return KillResult(job, True, False, method, signalled, "cgroup vanished during the kill (empty)",
                              signal_to_empty_usec=took, signal_to_exit_usec=exit_usec, thawed=self.thawed)
        return KillResult(job, True, False, method, signalled, signal_to_empty_usec=took,
                          signal_to_exit_usec=exit_usec, thawed=self.thawed)

    def _look_for_movers(self) -> list[int]:
        """The pids of a job that read empty, and whose re-reads found it
        unpopulated, but that still has anonymous memory charged: a process
        that owns it may be moving between the job's cgroups and others of
        its owner's, out of the job at every read so far (migrations take
        milliseconds and come in bursts). Read again, ``MOVER_LOOK_MS`` at
        most over the whole walk (a user who leaves charges in many jobs
        does not hold it up for each), until one is seen or the charge is gone
        (its process died: the kernel's OOM killer took the job, it exited,
        or our SIGKILL got it); [] if none was seen."""
        start = self.k.now_usec()
        end = start + self.k.look_left_usec
        if self.deadline:
            end = min(end, self.deadline)
        try:
            while self.k.now_usec() < end and self.cg.anon_bytes(self.job.path) >= ANON_SUSPECT_BYTES:
                pids = self.cg.subtree_pids(self.job.path)
                if pids:
                    return pids
                self._wait_exits(SWEEP_PAUSE_MS)
            return []
        finally:
            self.k.look_left_usec = max(0, self.k.look_left_usec - (self.k.now_usec() - start))

    def _ranked_away(self, listed: list[int]) -> dict[int, int]:
        """Pidfds of the job's processes as ranked that are not in
        ``listed`` but alive: opened, then confirmed by the start time of
        the pid's holder, which with the pid is a process's identity
        (``Proc.start_ticks``). Only processes that started before the
        ranking listed the job count: one younger may have taken the pid
        of a listed process that died before /proc was read. Those ranked
        and dead cost one failed ``pidfd_open`` each."""
        out: dict[int, int] = {}
        listed_set = set(listed)
        for p in self.job.procs:
            if p.pid in listed_set or p.pid in (1, self.k.self_pid) or p.kernel_thread:
                continue
            if not 0 < p.start_ticks < self.job.listed_ticks:
                # Started after the job's processes were listed (or not
                # known when): maybe not the process listed but one that
                # took its pid before /proc was read for the ranking.
                continue
            try:
                fd = os.pidfd_open(p.pid)
            except OSError:
                continue        # gone (ESRCH), or out of descriptors: the sweep still has the job
            if _start_tick(self.proc_root, p.pid) == p.start_ticks:
                out[p.pid] = fd
            else:
                os.close(fd)    # gone, and the pid someone else's
        return out

    def _kill_file(self, pids: list[int]) -> str | None:
        """``cgroup.kill`` to write, if the job has one that holds only its own."""
        if not self.cg.layout.memory_v1:
            f = os.path.join(self.job.path, "cgroup.kill")
            return f if os.path.exists(f) else None
        if not self.job.v2_path:
            return None
        f = os.path.join(self.job.v2_path, "cgroup.kill")
        # Checked again now: what is written there kills all the v2 cgroup
        # holds. With no pid listed (they moved while read), the job's as
        # ranked are what it may hold.
        known = pids or [p.pid for p in self.job.procs]
        if os.path.exists(f) and self.cg.only_holds(self.job.v2_path, known):
            return f
        return None

    # -- the sweep ----------------------------------------------------------------
    def _sweep(self, listed: list[int], listed_tick: int) -> list[int] | None:
        """Rounds of: open pidfds for the listed, read the subtree again,
        signal those confirmed (``_confirmed``). Returns the pids left at the
        deadline, [] once only the spared are left and every process
        signalled through a pidfd we keep has exited, None if the cgroup
        vanished."""
        while True:
            opened = self._open(listed)
            read_tick = _boot_tick()
            try:
                listed = self.cg.subtree_pids(self.job.path)
            except OSError as e:
                for fd in opened.values():
                    os.close(fd)
                # systemd removes a transient scope as soon as it empties:
                # gone after the signal means done.
                if e.errno in GONE_ERRNOS:
                    self._drain_exits()
                    return None
                raise
            still = set(listed)
            fresh = 0
            for pid, fd in opened.items():
                # Past the deadline the rest is only closed: a fork bomb can
                # starve this thread of CPU, and the timeout must hold.
                if self.k.now_usec() < self.deadline and self._confirmed(pid, still, listed_tick):
                    fresh += self._hit(pid, fd)
                else:
                    os.close(fd)        # whoever has the pid now may not be the one listed
            listed_tick = read_tick
            if not self.thaw_checked and (self.signalled or self.wrote_kill):
                # Our SIGKILLs are pending: let a v1 freeze someone else made end.
                self.thaw_checked = True
                self.thawed = self._thaw_v1_freezer()
            now = self.k.now_usec()
            if self.signalled and now - self.thaw_looked_usec >= THAW_LOOK_USEC:
                # ... also where the processes signalled are, which need not
                # be the job's own freezer cgroup: their owner may have put
                # them in a frozen one of theirs, before or after our signal.
                self.thaw_looked_usec = now
                self.thawed |= self._thaw_where_frozen([*listed, *self.tracked])
            left = [p for p in listed if p not in self.exempt]
            if not listed:
                # Empty as read is not empty: a process moved between the
                # job's cgroups while they were read is in none of them.
                try:
                    listed, populated = self.cg.recheck_empty(self.job.path, self.job.v2_path)
                except OSError as e:
                    if e.errno in GONE_ERRNOS:
                        self._drain_exits()
                        return None     # removed as it emptied (a transient unit): done
                    raise
                if not populated and not listed:
                    listed = self._look_for_movers()
                left = [p for p in listed if p not in self.exempt]
                if populated and not listed:
                    if self.k.now_usec() >= self.deadline:
                        self.unseen_left = True
                        return []
                    self._wait_exits(0)
                    continue
            now = self.k.now_usec()
            if not left:
                # Empty, but a process signalled through its pidfd may have
                # left the job for another cgroup before it died: done only
                # once each has exited (its pidfd polls readable), within
                # the deadline; who is alive then has evaded.
                self._wait_exits(0)
                if not self.tracked or now >= self.deadline:
                    return []
                self._wait_exits(min(SWEEP_PAUSE_MS, (self.deadline - now) // 1000))
                continue
            if now >= self.deadline:
                return left
            self._wait_exits(0 if fresh else min(SWEEP_PAUSE_MS, (self.deadline - now) // 1000))

    def _drain_exits(self) -> None:
        """The job's cgroup is gone: wait, within the deadline, for those
        signalled through a pidfd we keep to exit."""
        while self.tracked:
            now = self.k.now_usec()
            if now >= self.deadline:
                return
            self._wait_exits(max(1, (self.deadline - now) // 1000))

    def _confirmed(self, pid: int, still: set[int], listed_tick: int) -> bool:
        """Whether a pidfd opened for a listed pid is the process that was
        listed: the pid is listed again after it was opened (a live pid is
        unique; had the listed process died in between, the pidfd's process
        is dead too and a signal through it fails with ESRCH), or the
        process holding the pid now started before the read that listed it
        (it held the pid then, so it is the one listed; what it is doing
        outside the job now is leaving it). A pid gone from the job whose
        holder is younger than the listing, or gone, is not confirmed."""
        if pid in still:
            return True
        start = _start_tick(self.proc_root, pid)
        return start is not None and start < listed_tick

    def _thaw_v1_freezer(self) -> bool:
        """Thaw the job's own v1 freezer cgroup (at the job's relative path
        in the freezer tree) if someone froze it; True if it was thawed.

        v1 frozen tasks act on SIGKILL only once thawed, so a job frozen by
        someone else would otherwise sit out the whole ``kill_timeout_ms``
        and be chosen again at the next walk. Called only once our SIGKILLs
        are pending, so a thawed task dies before it runs a line of its
        own. Nothing is ever frozen here. v2's ``cgroup.freeze`` lets SIGKILL
        through, so it needs nothing."""
        layout = self.cg.layout
        if not layout.memory_v1 or not layout.memory_root:
            return False
        rel = os.path.relpath(self.job.path, layout.memory_root)
        if rel == "." or rel.startswith(".."):
            return False
        state_file = os.path.join(layout.root, "freezer", rel, "freezer.state")
        try:
            if _read(state_file).strip() not in (b"FROZEN", b"FREEZING"):
                return False
            _write(state_file, "THAWED")
        except OSError:
            return False        # no freezer cgroup of its own, or gone: nothing to thaw
        return True

    def _thaw_where_frozen(self, pids: list[int]) -> bool:
        """Thaw the v1 freezer cgroups, frozen or freezing, that hold any of
        ``pids`` (the signalled still listed or alive); True if one was.

        A v1 freezer cgroup is anyone's who was given one: its owner may move
        their own processes into it (a v1 move asks only that the process
        be theirs) and freeze it. The process stays in its memory cgroup,
        in the job, with our SIGKILL pending and its memory held, until it
        is thawed: the whole ``kill_timeout_ms`` and the kills after it, a
        ``remaining`` the walk takes for a kill. The kernel's OOM killer
        thaws its victims too. Only once our SIGKILLs are pending; at most
        ``MAX_TRACKED_PIDFDS`` pids' ``/proc/PID/cgroup`` read per look."""
        layout = self.cg.layout
        base = os.path.join(layout.root, "freezer")
        if not layout.memory_v1 or not pids:
            return False
        looked: set[str] = set()
        thawed = False
        for pid in pids[:MAX_TRACKED_PIDFDS]:
            if pid not in self.signalled:
                continue
            rel = self.cg.procfs.cgroups(pid).get("freezer", "")
            if rel in ("", "/") or rel in looked or "/.." in rel:
                continue
            looked.add(rel)
            state_file = os.path.join(base, rel.lstrip("/"), "freezer.state")
            try:
                if _read(state_file).strip() not in (b"FROZEN", b"FREEZING"):
                    continue
                _write(state_file, "THAWED")
            except OSError:
                continue        # gone, or no such hierarchy here
            thawed = True
            log.warning("OOM: thawed the v1 freezer cgroup %s: it held pid %d of job '%s', killed",
                        printable(rel), pid, printable(self.job.name))
        return thawed

    def _open(self, listed: list[int]) -> dict[int, int]:
        """Pidfds for the listed pids that may need a signal."""
        out: dict[int, int] = {}
        now = self.k.now_usec()
        for pid in listed:
            if pid in self.exempt or pid == 1 or pid == self.k.self_pid or pid in self.tracked:
                continue        # a tracked pid is the signalled process until its pidfd polls readable
            last = self.hit_at.get(pid)
            if last is not None and now - last < RESIGNAL_USEC:
                continue
            if self.k.now_usec() >= self.deadline:
                break
            try:
                out[pid] = os.pidfd_open(pid)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    break       # out of descriptors: the rest in the next round
                continue        # exited (ESRCH), or a leader gone with threads left (EINVAL)
        return out

    def _hit(self, pid: int, fd: int) -> int:
        """SIGKILL through a pidfd whose pid was listed after it was opened,
        unless the process is to be spared. 1 if it was not signalled before."""
        spared = _spared(self.proc_root, pid)
        if spared is None:
            os.close(fd)
            return 0
        if spared:
            # What was read is the pidfd's process's only if it still lives.
            try:
                signal.pidfd_send_signal(fd, 0)
            except OSError:
                pass
            else:
                self.exempt.add(pid)
            os.close(fd)
            return 0
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            os.close(fd)        # ESRCH: it died in between
            return 0
        new = pid not in self.signalled
        self._killed(pid, fd)
        return int(new)

    def _killed(self, pid: int, fd: int) -> None:
        """Note a SIGKILL of ours through (or, for cgroup.kill, beside) a
        pidfd: count the pid, ask process_mrelease the first time, and keep
        the pidfd to time the exit while there is room."""
        self.signalled.add(pid)
        if pid not in self.hit_at:
            self.k.process_mrelease(fd)
        self.hit_at[pid] = self.k.now_usec()
        if len(self.tracked) < MAX_TRACKED_PIDFDS:
            self.tracked[pid] = fd
            self.fd_pid[fd] = pid
            self.poller.register(fd, select.POLLIN)
        else:
            os.close(fd)

    def _alive_before_kill(self, pids: list[int], listed_tick: int) -> tuple[dict[int, int], dict[int, int]]:
        """Pidfds, just before cgroup.kill is written, for the listed pids
        (up to ``MAX_TRACKED_PIDFDS``) whose process is still alive: opened,
        confirmed by one more read of the subtree (``_confirmed``), then
        polled (a pidfd polls readable once its process has exited). Two
        maps, pid to pidfd: those still in the job, which the write kills,
        and those that left it since the first read (the write misses them;
        they are signalled through their pidfd). The pidfds go on to time
        their exits."""
        opened = self._open(pids[:MAX_TRACKED_PIDFDS])
        try:
            listed = set(self.cg.subtree_pids(self.job.path))
        except OSError:
            for fd in opened.values():
                os.close(fd)
            raise
        alive: dict[int, int] = {}
        moved: dict[int, int] = {}
        fd_pid: dict[int, int] = {}
        poller = select.poll()
        for pid, fd in opened.items():
            if pid in listed or self._confirmed(pid, listed, listed_tick):
                (alive if pid in listed else moved)[pid] = fd
                fd_pid[fd] = pid
                poller.register(fd, select.POLLIN)
            else:
                os.close(fd)
        for fd, _ in poller.poll(0):
            pid = fd_pid[fd]
            alive.pop(pid, None)
            moved.pop(pid, None)
            os.close(fd)
        return alive, moved

    def _wait_exits(self, timeout_ms: int) -> None:
        """Wait for victims to exit: a pidfd polls readable once its process
        has. Its pid may be reused from then on, so it is tracked no more."""
        for fd, _ in self.poller.poll(max(0, timeout_ms)):
            self.poller.unregister(fd)
            pid = self.fd_pid.pop(fd)
            del self.tracked[pid]
            os.close(fd)
            self.exits[pid] = self.k.now_usec()


def _spared(proc_root: str, pid: int) -> bool | None:
    """Whether a process is never to be signalled (a kernel thread, or
    ``oom_score_adj`` -1000); None if it is gone."""
    try:
        stat = _read(f"{proc_root}/{pid}/stat")
        adj = int(_read(f"{proc_root}/{pid}/oom_score_adj") or b"0")
        flags = int(stat[stat.rindex(b")") + 2:].split()[6])
    except (OSError, ValueError, IndexError):
        return None
    return bool(flags & PF_KTHREAD) or adj <= OOM_SCORE_ADJ_MIN


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
