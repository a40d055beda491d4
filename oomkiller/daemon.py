"""The daemon: one event loop around the pure core.

Sources (the redline timer, the control socket, and any pluggable source with
``fds()`` / ``drain()``) only wake the core. Every wake takes a fresh snapshot
of the domain; when it is below the redline (or a lowmem was asked for), the
core lists the jobs, ranks them, re-checks the domain, and the killer walks
the ranking. Each decision is logged as the seed's lines and one JSON record.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import signal
import sys
import time
from typing import Any, Callable, Protocol, TextIO

from . import log as oomlog
from .cgroupfs import Cgroupfs
from .config import Config
from .control import ControlServer
from .decide import decide
from .detect import detect
from .domain import Domain, DomainGone
from .footprint import status_bytes
from .killer import Killer
from .model import PressureEvent, Ranking
from .output import LineWriter, QueueLogHandler
from .procfs import Procfs
from .rank import Policy, rank

log = logging.getLogger("oomkiller")

# PSI triggers on jobs: on the biggest this many, refreshed at most this
# often, and only on a timer tick while the domain is above the arm line.
# Making a trigger costs the kernel a poll thread and often over 10 ms: never
# while a job races to the limit (see _refresh_job_triggers).
JOB_PSI_TRIGGERS = 32
JOB_PSI_REFRESH_USEC = 10_000_000

# The adaptive timer (config adaptive_sleep) never wakes sooner than this.
MIN_TICK_USEC = 10_000

# Below the arm line, the ranking that chooses whom to arm is redone at most
# this often (and at once after a kill): the timer may wake every 10 ms there,
# and listing a thousand jobs takes hundreds of ms.
ARM_RERANK_USEC = 250_000

# The same failure is logged at most this often (with a count of repeats).
FAILURE_LOG_USEC = 60_000_000

# The stall share is measured over at least this long (see detect.py).
PRESSURE_SPAN_USEC = 2_000_000


class Source(Protocol):
    """What the loop needs of an event source besides the timer."""

    name: str

    def fds(self) -> list[int]: ...
    def drain(self, fd: int | None = None) -> list[PressureEvent]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Daemon:
    def __init__(self, config: Config, *, procfs: Procfs | None = None, cgroupfs: Cgroupfs | None = None,
                 json_out: TextIO | None = None, sources: list[Source] | None = None,
                 unavailable: dict[str, str] | None = None, arm: Any = None,
                 log_writer: LineWriter | None = None, control: ControlServer | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self.procfs = procfs or Procfs(config.proc_root)
        self.cgroupfs = cgroupfs or Cgroupfs(config.cgroup_root, self.procfs)
        self.domain = Domain(config.domain, self.procfs, self.cgroupfs)
        self.clock = clock
        self.self_pid = os.getpid()
        self.policy = Policy(config.protect, config.avoid, config.prefer, self.self_pid)
        self.killer = Killer(self.cgroupfs, dry_run=config.dry_run, self_pid=self.self_pid,
                             timeout_usec=config.kill_timeout_ms * 1000, clock=clock)
        self.json_out = json_out
        self.log_writer = log_writer
        self.sources = list(sources or [])
        self.unavailable = dict(unavailable or {})
        # the pre-armed kill: an object with arm(cgroup_id), disarm() and armed
        self.arm = arm
        self.armed_job = None
        # state the seed's `k oom info` shows
        self.running = config.autostart
        self.printing = config.print_
        self.simulate_lowmem = False
        self.kills = 0
        self.armed_kills = 0
        self.kernel_kills_seen = 0
        self.wakes = 0
        self.prev_free: int | None = None
        self.last_walk_usec: int | None = None
        # pids we killed lately: the kernel's mark_victim of one of them is not a kill of its own
        self.our_victims: collections.deque = collections.deque(maxlen=4096)
        # PID 1's and our own cgroups are never inside a job (see Cgroupfs.job_paths)
        self.keep_out = self.cgroupfs.keep_out((1, self.self_pid))
        self.last_snapshot = None
        self._history: collections.deque = collections.deque()
        self._quit = False
        self._failures: dict[tuple[str, str, str], list[int]] = {}
        # why the domain's cgroup is gone, while it is (see _domain_gone)
        self.domain_gone: str | None = None
        self.control = control
        # The control thread sets flags and writes here; the loop does the rest.
        self._nudge_r, self._nudge_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep: Any = None
        self._by_fd: dict[int, Source] = {}
        self._triggers_refreshed_usec = 0
        self._armed_ranked_usec = 0

    def now_usec(self) -> int:
        return self.clock() // 1000

    # -- one wake of the core ----------------------------------------------------
    def jobs(self) -> list:
        return self.cgroupfs.jobs(self.domain.path, self.config.jobs, self.keep_out)

    def _refresh_job_triggers(self, events: list[PressureEvent], snap: Any) -> None:
        """Keep PSI triggers on the biggest jobs' memory.pressure (a trigger
        costs the kernel a poll worker, so not on a thousand of them).

        Only on a timer tick, at most every JOB_PSI_REFRESH_USEC, and only
        while free memory is above the arm line: writing a new trigger took
        10-19 ms here, long enough for a fast hog to go from the arm line to
        the kernel's OOM killer had it run before the arming."""
        psi = next((s for s in self.sources if hasattr(s, "track")), None)
        if psi is None or self._ep is None or not any(e.source == "timer" for e in events):
            return
        if self._triggers_refreshed_usec and snap.taken_usec - self._triggers_refreshed_usec < JOB_PSI_REFRESH_USEC:
            return
        if snap.free_bytes < self.config.arm_line_bytes(snap.total_bytes):
            return
        self._triggers_refreshed_usec = snap.taken_usec
        biggest = sorted(self.jobs(), key=lambda j: -j.committed_bytes)[:JOB_PSI_TRIGGERS]
        paths = {os.path.join(j.v2_path, "memory.pressure") for j in biggest if j.v2_path}
        added, dropped = psi.track(paths)
        for fd in dropped:
            self._ep.unregister(fd)
            self._by_fd.pop(fd, None)
        psi.release(dropped)                # closing a trigger waits on RCU: not here
        for fd in added:
            self._ep.register(fd, psi.poll_events)
            self._by_fd[fd] = psi

    def wake(self, events: list[PressureEvent]) -> dict[str, Any] | None:
        """Snapshot, detect, and if low, rank, re-check and kill. Returns the
        decision record when a walk happened (or was held back)."""
        t0 = self.now_usec()
        self.wakes += 1
        if self.domain_gone is not None:
            if not self.domain.exists():
                return None
            self._domain_back()
        snap = self.domain.snapshot(t0)
        self.last_snapshot = snap
        redline = self.config.redline.resolve_bytes(snap.total_bytes)
        det = detect(snap, redline, self.prev_free, self.simulate_lowmem, pressure_ref=self._pressure_ref(snap),
                     pressure_limit_permyriad=self.config.pressure_limit_permyriad)
        self.prev_free = snap.free_bytes
        log.log(logging.INFO if self.printing else logging.DEBUG, oomlog.free_line(snap, det.delta_bytes))
        armed_hit = False
        for ev in events:
            if ev.kind == "armed_kill":
                self.armed_kills += 1
                self.our_victims.append(ev.pid)
                armed_hit = True
        for ev in events:
            if ev.kind == "kernel_oom_victim":
                self._kernel_victim(ev, snap)
        if armed_hit:
            return self._finish_armed_kill(events, snap, redline, t0)
        if not det.low:
            self._update_arm(snap, redline, events, t0)
            self._refresh_job_triggers(events, snap)
            return None
        self.simulate_lowmem = False
        t_detect = self.now_usec()
        dec = decide(det, t_detect, self.last_walk_usec, self.config.post_kill_delay_ms * 1000)
        record = self._record(events, snap, redline, det.shortfall_bytes, det.simulated, dec.reason)
        if not dec.act:
            log.debug("OOM: holding back: %s", dec.reason)
            record.update(result="held", timings_usec={"snapshot": t_detect - t0})
            return record

        jobs = self.jobs()
        ranking = rank(jobs, self.policy, snap.total_bytes)
        t_rank = self.now_usec()
        lines = oomlog.lowmem_lines(det.shortfall_bytes, (p for j in jobs for p in j.procs))
        record["ranking"] = [oomlog.candidate_record(c) for c in ranking.candidates[:16]]

        # Re-check just before acting: ranking took time and the pressure may be gone.
        again = self.domain.snapshot(self.now_usec())
        if det.reason == "free below redline" and again.free_bytes >= redline:
            self._log(lines + [f"OOM: {oomlog.format_mib(again.free_bytes)} free again: no kill"])
            record.update(result="recovered", free_at_recheck_bytes=again.free_bytes,
                          timings_usec={"snapshot": t_detect - t0, "rank": t_rank - t_detect})
            self._emit(record)
            return record
        return self._kill(ranking, lines, record, again, events, t0, t_detect, t_rank)

    def _kill(self, ranking: Ranking, lines: list[str], record: dict[str, Any], before: Any,
              events: list[PressureEvent], t0: int, t_detect: int, t_rank: int) -> dict[str, Any]:
        t_act = self.now_usec()
        attempts = self.killer.walk(ranking)
        t_done = self.now_usec()
        # Logging waits until the kill is done: the journal may block under
        # the very pressure being relieved.
        try:
            after = self.domain.snapshot(t_done)
        except DomainGone:
            after = before      # gone with the job: the kill stands, freed unknown
        attempts = [(c, dataclasses.replace(r, freed_bytes=max(0, before.used_bytes - after.used_bytes)))
                    if r.ok and not r.dry_run else (c, r) for c, r in attempts]
        lines += oomlog.walk_lines(ranking, attempts)
        victim = next(((c, r) for c, r in attempts if r.ok), None)
        first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
        # Hold the next walk for the post-kill delay, also when nothing could be
        # killed: walking again on every wake would only flood the log.
        self.last_walk_usec = t_done
        if victim:
            c, r = victim
            if not r.dry_run:
                self.kills += 1
                self.our_victims.extend(r.signalled_pids)
                self._history.clear()       # stall figures from before the kill are stale
                self._armed_ranked_usec = 0     # choose the next one to arm at once
                if self.armed_job and self.armed_job.path == c.job.path:
                    self._disarm()
            lines.append(oomlog.outcome_line(c, r, t_done - first_event_usec))
            record["victim"] = oomlog.candidate_record(c)
            record["freed_bytes"] = r.freed_bytes
        self._log(lines)
        record.update(
            result="killed" if victim and not victim[1].dry_run else "dry_run" if victim else "no_victim",
            attempts=[oomlog.result_record(r) for _, r in attempts],
            timings_usec={"event_to_wake": t0 - first_event_usec, "snapshot": t_detect - t0,
                          "rank": t_rank - t_detect, "recheck": t_act - t_rank, "kill": t_done - t_act,
                          "event_to_decision": t_act - first_event_usec, "total": t_done - t0})
        self._emit(record)
        return record

    def _log(self, lines: list[str]) -> None:
        for line in lines:
            log.info(line)

    def _kernel_victim(self, ev: PressureEvent, snap: Any) -> None:
        if ev.pid in self.our_victims:
            # A victim of ours, dying, that failed one more allocation on its
            # way out: the kernel marks it so it may use reserves. It killed
            # no one (its oom_kill counters do not move).
            log.debug("OOM: the kernel marked our dying victim pid %d", ev.pid)
            return
        try:
            ours = self.domain.holds(ev.pid, ev.cgroup_id)
        except OSError:
            ours = False
        if not ours:
            log.debug("OOM: the kernel OOM killer chose pid %d outside the domain", ev.pid)
            return
        self.kernel_kills_seen += 1
        if self.domain.is_host:
            log.warning("OOM: the kernel OOM killer chose pid %d (%s)", ev.pid, ev.detail)
        else:
            log.warning("OOM: the kernel OOM killer chose pid %d first (%s): a race lost", ev.pid, ev.detail)
        self._emit({"event": "kernel_oom_kill", "pid": ev.pid, "cgroup_id": ev.cgroup_id,
                    "detail": ev.detail, "domain": snap.domain})

    def _record(self, events: list[PressureEvent], snap: Any, redline: int, shortfall: int, simulated: bool,
                reason: str) -> dict[str, Any]:
        return {"event": "oom_decision", "domain": snap.domain,
                "woken_by": [dataclasses.asdict(e) for e in events[:8]], "events": len(events),
                "snapshot": dataclasses.asdict(snap), "redline_bytes": redline,
                "shortfall_bytes": shortfall, "simulated": simulated,
                "decision": reason, "dry_run": self.config.dry_run}

    def _finish_armed_kill(self, events: list[PressureEvent], snap: Any, redline: int, t0: int) -> dict[str, Any]:
        """The kernel killed a task of the armed job at its failed reclaim:
        kill the rest of that job now, whatever the numbers say."""
        t_detect = self.now_usec()
        armed = self.armed_job
        self._disarm()
        self._armed_ranked_usec = 0
        jobs = []
        if armed is not None:
            try:
                jobs = [self.cgroupfs.job(armed.path, self.domain.path)]
            except OSError:
                jobs = []       # the job is gone with its last task
        ranking = rank(jobs, self.policy, snap.total_bytes)
        t_rank = self.now_usec()
        shortfall = max(0, redline - snap.free_bytes)
        lines = ["OOM: armed job killed in the kernel at its failed reclaim: finishing it"]
        lines += oomlog.lowmem_lines(shortfall, (p for j in jobs for p in j.procs))
        record = self._record(events, snap, redline, shortfall, False, "armed kill in the kernel")
        record["ranking"] = [oomlog.candidate_record(c) for c in ranking.candidates]
        if not ranking.killable():
            # The task the kernel killed was the job's last: it is empty already.
            name = armed.name if armed else "?"
            self._log(lines + [f"OOM: armed job '{name}' is already empty"])
            record.update(result="killed", attempts=[], victim={"job": name},
                          timings_usec={"snapshot": t_detect - t0, "rank": t_rank - t_detect})
            self.kills += 1
            self.last_walk_usec = t_rank
            self._history.clear()
            self._emit(record)
            return record
        return self._kill(ranking, lines, record, snap, events, t0, t_detect, t_rank)

    def next_tick_usec(self) -> int:
        """How long the timer sleeps from now: sleep_ms, or while free
        memory falls, half the time to the next line (the arm line while above
        it, then the redline) at the rate seen over the snapshots of the last
        PRESSURE_SPAN_USEC, not under MIN_TICK_USEC. The seed's loop samples
        at a fixed period; a leak crossing the line just after a tick would go
        unseen for a whole period."""
        sleep = self.config.sleep_ms * 1000
        if not self.config.adaptive_sleep or len(self._history) < 2 or not self.running:
            return sleep
        # The oldest kept snapshot, not the one before last: a leak that
        # grows in steps looks steady between two close ticks.
        ref, last = self._history[0], self._history[-1]
        dt = last.taken_usec - ref.taken_usec
        fall = ref.free_bytes - last.free_bytes
        if dt <= 0 or fall <= 0:
            return sleep
        redline = self.config.redline.resolve_bytes(last.total_bytes)
        line = redline
        if self.arm is not None:
            arm_line = self.config.arm_line_bytes(last.total_bytes)
            if last.free_bytes > arm_line:
                line = arm_line
        headroom = last.free_bytes - line
        if headroom <= 0:
            return sleep        # below the redline: the walk and its hold decide
        return max(MIN_TICK_USEC, min(sleep, headroom * dt // fall // 2))

    # -- the pre-armed kill ----------------------------------------------------------
    def _update_arm(self, snap: Any, redline: int, events: list[PressureEvent], t0: int) -> None:
        """Keep the top victim armed while free memory is between the redline
        and the arm line; disarm above it. Unlike a kill from here, arming is
        not held by the post-kill delay: the last victim's cgroup was empty
        before its kill returned, so its memory is back, and the armed kill
        needs the kernel's own proof (failed reclaims) before it fires."""
        if not self.arm:
            return
        arm_line = self.config.arm_line_bytes(snap.total_bytes)
        if snap.free_bytes >= arm_line or self.config.dry_run:
            self._disarm()
            self._armed_ranked_usec = 0
            return
        if self._armed_ranked_usec and snap.taken_usec - self._armed_ranked_usec < ARM_RERANK_USEC:
            return
        self._armed_ranked_usec = snap.taken_usec
        ranking = rank(self.jobs(), self.policy, snap.total_bytes)
        top = next(iter(ranking.killable()), None)
        if top is None or not top.job.v2_path:
            # The core chooses who: if the top victim cannot be armed, no one is.
            self._disarm()
            return
        if self.arm.armed != top.job.v2_id:
            try:
                self.arm.arm(top.job.v2_path, top.job.v2_id)
            except (OSError, ValueError) as e:
                log.warning("OOM: cannot arm '%s': %s", top.job.name, e)
                return
            self.armed_job = top.job
            t_armed = self.now_usec()
            log.info("OOM: armed job %d '%s' (cgroup id %d) in the kernel", top.job.inode, top.job.name,
                     top.job.v2_id)
            first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
            self._emit({"event": "armed", "domain": snap.domain, "job": top.job.name, "cgroup_id": top.job.v2_id,
                        "free_bytes": snap.free_bytes, "arm_line_bytes": arm_line,
                        "woken_by": [dataclasses.asdict(e) for e in events[:8]],
                        "timings_usec": {"event_to_wake": t0 - first_event_usec, "wake_to_armed": t_armed - t0}})

    def _disarm(self) -> None:
        if self.arm and self.arm.armed:
            self.arm.disarm()
            log.info("OOM: disarmed '%s'", self.armed_job.name if self.armed_job else "?")
        self.armed_job = None

    def _pressure_ref(self, snap: Any) -> Any:
        """The newest earlier snapshot at least a pressure span old (or the
        oldest kept, while the daemon is younger than that)."""
        hist = self._history
        hist.append(snap)
        while len(hist) >= 2 and snap.taken_usec - hist[1].taken_usec >= PRESSURE_SPAN_USEC:
            hist.popleft()
        return hist[0]

    def _emit(self, record: dict[str, Any]) -> None:
        """One JSON line; the daemon's writer queues it and never blocks."""
        if self.json_out:
            record = {"ts_usec": self.now_usec(), **record}
            self.json_out.write(oomlog.json_line(record) + "\n")
            self.json_out.flush()

    # -- control -----------------------------------------------------------------
    def info(self) -> tuple[str, dict[str, Any]]:
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
                                 "kills": self.armed_kills}
        sources.update({name: {"state": "unavailable", "why": why} for name, why in dict(self.unavailable).items()})
        output = {name: w.stats() for name, w in (("records", self.json_out), ("log", self.log_writer))
                  if hasattr(w, "stats")}
        if self.control is not None:
            output["control"] = self.control.stats()
        data = {"running": self.running, "printing": self.printing, "simulating_lowmem": self.simulate_lowmem,
                "sleep_ms": self.config.sleep_ms, "redline": str(red), "redline_bytes": red_b,
                "domain": self.domain.name, "domain_path": self.domain.path, "dry_run": self.config.dry_run,
                "domain_state": "live" if self.domain_gone is None else f"gone: {self.domain_gone}",
                "kills": self.kills, "armed_kills": self.armed_kills, "kernel_kills_seen": self.kernel_kills_seen,
                "wakes": self.wakes, "sources": sources, "pid": self.self_pid,
                "memory": {k.lower() + "_bytes": v for k, v in status_bytes().items()},
                "pressure_file": self.domain.pressure_path, "output": output}
        red_txt = f"{red} = {oomlog.format_size(red_b)}" if red.permyriad else oomlog.format_size(red_b)
        lines = ["OOM info:",
                 f"  running: {str(self.running).lower()}",
                 f"  printing: {str(self.printing).lower()}",
                 f"  simulating lowmem: {str(self.simulate_lowmem).lower()}",
                 f"  sleep duration: {self.config.sleep_ms}ms",
                 f"  redline: {red_txt} ({red_b} bytes)",
                 f"  domain: {self.domain.name} ({self.domain.path})"
                 + ("" if self.domain_gone is None else f", GONE: {self.domain_gone}"),
                 f"  dry run: {str(self.config.dry_run).lower()}",
                 "  own memory: " + ", ".join(f"{k} {oomlog.format_size(v)}" for k, v in status_bytes().items()),
                 f"  kills: {self.kills} (in the kernel, armed: {self.armed_kills}; "
                 f"by the kernel's own OOM killer: {self.kernel_kills_seen})",
                 "  sources:"]
        for name, s in sources.items():
            extra = ", ".join(f"{k}={v}" for k, v in s.items()
                              if k not in ("state", "source", "live") and not isinstance(v, (list, dict)))
            lines.append(f"    {name}: {s['state']}" + (f" ({extra})" if extra else ""))
        lines.append("  output:")
        for name, o in output.items():
            lines.append(f"    {name}: " + ", ".join(f"{k}={v}" for k, v in o.items()))
        return "\n".join(lines), data

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
            ranking = rank(self.jobs(), self.policy, snap.total_bytes)
            return True, format_ranking(ranking), {"ranking": [oomlog.candidate_record(c) for c in ranking.candidates]}
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
        if self.control is None:
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
        log.info("OOM: oomkiller %s watching %s, redline %s, sleep %d ms, sources %s%s", _version(),
                 self.domain.name, self.config.redline, self.config.sleep_ms,
                 ",".join(["timer", *(s.name for s in self.sources), *(["prearm"] if self.arm else [])]),
                 ", dry run" if self.config.dry_run else "")
        deadline = self.now_usec()
        try:
            while not self._quit:
                timeout = max(0.0, (deadline - self.now_usec()) / 1e6)
                ready = ep.poll(timeout)
                events: list[PressureEvent] = []
                for fd, mask in ready:
                    if fd == rfd:
                        _drain_pipe(rfd)
                    elif fd == self._nudge_r:
                        _drain_pipe(fd)
                        if not self.running:
                            self._disarm()
                        elif self.simulate_lowmem:
                            events.append(PressureEvent("control", "lowmem", timestamp_usec=self.now_usec()))
                    elif fd in by_fd:
                        events.extend(self._drain(ep, by_fd, fd, mask))
                now = self.now_usec()
                if now >= deadline:
                    events.append(PressureEvent("timer", "tick", timestamp_usec=now))
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
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            ep.close()
            self._ep = None
            os.close(rfd)
            os.close(wfd)
            self.control.close()
            self.control = None
            self._disarm()
            for src in self.sources:
                src.close()
            log.info("OOM: oomkiller stopped after %d kills", self.kills)

    def _drain(self, ep: Any, by_fd: dict[int, Source], fd: int, mask: int) -> list[PressureEvent]:
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
            self._disarm()
        self.domain_gone = str(e)

    def _domain_back(self) -> None:
        """A cgroup is at the domain's path again: a new one, so nothing
        learned from the old one holds. Triggers and thresholds that were on
        the old one's files stay gone (``info`` lists them); the redline
        timer, the host's PSI trigger and eBPF watch the new one."""
        log.warning("OOM: domain %s is back: watching it again", self.domain.path)
        self.domain_gone = None
        self.prev_free = None
        self.last_snapshot = None
        self._history.clear()
        self._armed_ranked_usec = 0
        self._triggers_refreshed_usec = 0
        self.domain.find_pressure()

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


def format_ranking(ranking: Ranking) -> str:
    lines = []
    for i, c in enumerate(ranking.candidates, 1):
        tag = "kill" if c.killable else "skip"
        lines.append(f"{i:3d}. ({tag}) job {c.job.inode:6d} '{c.job.name}' {c.importance.name.lower()} "
                     f"score {oomlog.format_size(c.score_bytes)}: {'; '.join(c.reasons)}")
    return "\n".join(lines) if lines else "no jobs in the domain"


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _version() -> str:
    from . import __version__
    return __version__


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> LineWriter | None:
    """Log lines to ``stream``, or by default to stderr through a writer
    thread and a bounded queue (a stalled journal must not stall a kill)."""
    writer = None
    if stream is None:
        writer = LineWriter("log", fd=sys.stderr.fileno())
        handler: logging.Handler = QueueLogHandler(writer)
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("oomkiller")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    return writer
