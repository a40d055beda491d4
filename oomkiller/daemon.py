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
from .domain import Domain
from .footprint import status_bytes
from .killer import Killer
from .model import PressureEvent, Ranking
from .procfs import Procfs
from .rank import Policy, rank

log = logging.getLogger("oomkiller")

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
        self.sources = list(sources or [])
        self.unavailable = dict(unavailable or {})
        # the pre-armed kill: an object with arm(cgroup_id), disarm() and armed
        self.arm = arm
        self.armed_job = ""
        # state the seed's `k oom info` shows
        self.running = config.autostart
        self.printing = config.print_
        self.simulate_lowmem = False
        self.kills = 0
        self.armed_kills = 0
        self.kernel_kills_seen = 0
        self.wakes = 0
        self.prev_free: int | None = None
        self.last_kill_usec: int | None = None
        self.last_snapshot = None
        self._history: collections.deque = collections.deque()
        self._quit = False
        self.control: ControlServer | None = None

    def now_usec(self) -> int:
        return self.clock() // 1000

    # -- one wake of the core ----------------------------------------------------
    def wake(self, events: list[PressureEvent]) -> dict[str, Any] | None:
        """Snapshot, detect, and if low, rank, re-check and kill. Returns the
        decision record when a walk happened (or was held back)."""
        t0 = self.now_usec()
        self.wakes += 1
        snap = self.domain.snapshot(t0)
        self.last_snapshot = snap
        redline = self.config.redline.resolve_bytes(snap.total_bytes)
        det = detect(snap, redline, self.prev_free, self.simulate_lowmem, pressure_ref=self._pressure_ref(snap),
                     pressure_limit_permyriad=self.config.pressure_limit_permyriad)
        self.prev_free = snap.free_bytes
        line = oomlog.free_line(snap, det.delta_bytes)
        log.log(logging.INFO if self.printing else logging.DEBUG, line)
        armed_hits = set()
        for ev in events:
            if ev.kind == "kernel_oom_victim":
                if not self.domain.holds(ev.pid, ev.cgroup_id):
                    log.debug("OOM: the kernel OOM killer chose pid %d outside the domain", ev.pid)
                    continue
                self.kernel_kills_seen += 1
                log.warning("OOM: the kernel OOM killer chose pid %d first (%s): a race lost", ev.pid, ev.detail)
                self._emit({"event": "kernel_oom_kill", "pid": ev.pid, "cgroup_id": ev.cgroup_id,
                            "detail": ev.detail, "domain": snap.domain})
            elif ev.kind == "armed_kill":
                self.armed_kills += 1
                armed_hits.add(ev.cgroup_id)
        if armed_hits:
            return self._finish_armed_kill(armed_hits, events, snap, redline, t0)
        if not det.low:
            self._update_arm(snap, redline)
            return None
        self.simulate_lowmem = False
        t_detect = self.now_usec()
        dec = decide(det, t_detect, self.last_kill_usec, self.config.post_kill_delay_ms * 1000)
        record = self._record(events, snap, redline, det.shortfall_bytes, det.simulated, dec.reason)
        if not dec.act:
            log.debug("OOM: holding back: %s", dec.reason)
            record.update(result="held", timings_usec={"snapshot": t_detect - t0})
            return record

        jobs = self.cgroupfs.jobs(self.domain.path, self.config.jobs)
        ranking = rank(jobs, self.policy, snap.total_bytes)
        t_rank = self.now_usec()
        for line in oomlog.lowmem_lines(det.shortfall_bytes, (p for j in jobs for p in j.procs)):
            log.info(line)
        record["ranking"] = [oomlog.candidate_record(c) for c in ranking.candidates[:16]]

        # Re-check just before acting: ranking took time and the pressure may be gone.
        again = self.domain.snapshot(self.now_usec())
        if det.reason == "free below redline" and again.free_bytes >= redline:
            log.info("OOM: %s free again: no kill", oomlog.format_mib(again.free_bytes))
            record.update(result="recovered", free_at_recheck_bytes=again.free_bytes,
                          timings_usec={"snapshot": t_detect - t0, "rank": t_rank - t_detect})
            self._emit(record)
            return record
        self._arm_top(ranking)
        return self._kill(ranking, record, again, events, t0, t_detect, t_rank)

    def _kill(self, ranking: Ranking, record: dict[str, Any], before: Any, events: list[PressureEvent],
              t0: int, t_detect: int, t_rank: int) -> dict[str, Any]:
        t_act = self.now_usec()
        attempts = self.killer.walk(ranking)
        t_done = self.now_usec()
        after = self.domain.snapshot(t_done)
        attempts = [(c, dataclasses.replace(r, freed_bytes=max(0, before.used_bytes - after.used_bytes)))
                    if r.ok and not r.dry_run else (c, r) for c, r in attempts]
        for line in oomlog.walk_lines(ranking, attempts):
            log.info(line)
        victim = next(((c, r) for c, r in attempts if r.ok), None)
        first_event_usec = min((e.timestamp_usec for e in events if e.timestamp_usec), default=t0)
        if victim:
            c, r = victim
            if not r.dry_run:
                self.kills += 1
                self.last_kill_usec = t_done
                if self.arm and self.arm.armed == c.job.v2_id:
                    self._disarm()
            log.info(oomlog.outcome_line(c, r, t_done - first_event_usec))
            record["victim"] = oomlog.candidate_record(c)
            record["freed_bytes"] = r.freed_bytes
        record.update(
            result="killed" if victim and not victim[1].dry_run else "dry_run" if victim else "no_victim",
            attempts=[oomlog.result_record(r) for _, r in attempts],
            timings_usec={"event_to_wake": t0 - first_event_usec, "snapshot": t_detect - t0,
                          "rank": t_rank - t_detect, "recheck": t_act - t_rank, "kill": t_done - t_act,
                          "event_to_decision": t_act - first_event_usec, "total": t_done - t0})
        self._emit(record)
        return record

    def _record(self, events: list[PressureEvent], snap: Any, redline: int, shortfall: int, simulated: bool,
                reason: str) -> dict[str, Any]:
        return {"event": "oom_decision", "domain": snap.domain,
                "woken_by": [dataclasses.asdict(e) for e in events[:8]], "events": len(events),
                "snapshot": dataclasses.asdict(snap), "redline_bytes": redline,
                "shortfall_bytes": shortfall, "simulated": simulated,
                "decision": reason, "dry_run": self.config.dry_run}

    def _finish_armed_kill(self, cgroup_ids: set[int], events: list[PressureEvent], snap: Any,
                           redline: int, t0: int) -> dict[str, Any]:
        """The kernel killed a task of the armed job at its failed reclaim:
        kill the rest of that job now, whatever the numbers say."""
        t_detect = self.now_usec()
        jobs = [j for j in self.cgroupfs.jobs(self.domain.path, self.config.jobs) if j.v2_id in cgroup_ids]
        ranking = rank(jobs, self.policy, snap.total_bytes)
        t_rank = self.now_usec()
        shortfall = max(0, redline - snap.free_bytes)
        self._disarm()
        log.info("OOM: armed job killed in the kernel at its reclaim: finishing it")
        for line in oomlog.lowmem_lines(shortfall, (p for j in jobs for p in j.procs)):
            log.info(line)
        record = self._record(events, snap, redline, shortfall, False, "armed kill in the kernel")
        record["ranking"] = [oomlog.candidate_record(c) for c in ranking.candidates]
        if not ranking.killable():
            # The task the kernel killed was the job's last: it is empty already.
            record.update(result="killed", attempts=[], victim={"cgroup_ids": sorted(cgroup_ids)},
                          timings_usec={"snapshot": t_detect - t0, "rank": t_rank - t_detect})
            self.kills += 1
            self.last_kill_usec = t_rank
            log.info("OOM: armed job is already empty")
            self._emit(record)
            return record
        return self._kill(ranking, record, snap, events, t0, t_detect, t_rank)

    # -- the pre-armed kill ----------------------------------------------------------
    def _update_arm(self, snap: Any, redline: int) -> None:
        """Keep the top victim armed while free memory is between the redline
        and the arm line; disarm above it."""
        if not self.arm:
            return
        arm_line = max(redline, self.config.arm_redline.resolve_bytes(snap.total_bytes))
        if snap.free_bytes >= arm_line:
            if self.arm.armed:
                self._disarm()
            return
        ranking = rank(self.cgroupfs.jobs(self.domain.path, self.config.jobs), self.policy, snap.total_bytes)
        self._arm_top(ranking)

    def _arm_top(self, ranking: Ranking) -> None:
        if not self.arm or self.config.dry_run:
            return
        top = next((c for c in ranking.killable() if c.job.v2_id), None)
        if top is None:
            self._disarm()
            return
        if self.arm.armed != top.job.v2_id:
            self.arm.arm(top.job.v2_id)
            self.armed_job = top.job.name
            log.info("OOM: armed job %d '%s' (cgroup id %d) in the kernel", top.job.inode, top.job.name,
                     top.job.v2_id)

    def _disarm(self) -> None:
        if self.arm and self.arm.armed:
            self.arm.disarm()
            log.info("OOM: disarmed '%s'", self.armed_job)
        self.armed_job = ""

    def _pressure_ref(self, snap: Any) -> Any:
        """The newest earlier snapshot at least a pressure span old (or the
        oldest kept, while the daemon is younger than that)."""
        hist = self._history
        hist.append(snap)
        while len(hist) >= 2 and snap.taken_usec - hist[1].taken_usec >= PRESSURE_SPAN_USEC:
            hist.popleft()
        return hist[0]

    def _emit(self, record: dict[str, Any]) -> None:
        if self.json_out:
            record = {"ts_usec": self.now_usec(), **record}
            self.json_out.write(oomlog.json_line(record) + "\n")
            self.json_out.flush()

    # -- control -----------------------------------------------------------------
    def info(self) -> tuple[str, dict[str, Any]]:
        red = self.config.redline
        total = self.last_snapshot.total_bytes if self.last_snapshot else self.domain.snapshot(self.now_usec()).total_bytes
        red_b = red.resolve_bytes(total)
        sources = {"timer": {"state": "live", "sleep_ms": self.config.sleep_ms}}
        sources.update({s.name: {"state": "live", **s.stats()} for s in self.sources})
        if self.arm:
            sources["prearm"] = {"state": "live", "armed": self.armed_job or "-", "kills": self.armed_kills}
        sources.update({name: {"state": "unavailable", "why": why} for name, why in self.unavailable.items()})
        data = {"running": self.running, "printing": self.printing, "simulating_lowmem": self.simulate_lowmem,
                "sleep_ms": self.config.sleep_ms, "redline": str(red), "redline_bytes": red_b,
                "domain": self.domain.name, "domain_path": self.domain.path, "dry_run": self.config.dry_run,
                "kills": self.kills, "armed_kills": self.armed_kills, "kernel_kills_seen": self.kernel_kills_seen,
                "wakes": self.wakes, "sources": sources, "pid": self.self_pid,
                "memory": {k.lower() + "_bytes": v for k, v in status_bytes().items()},
                "pressure_file": self.domain.pressure_path}
        red_txt = f"{red} = {oomlog.format_size(red_b)}" if red.permyriad else oomlog.format_size(red_b)
        lines = ["OOM info:",
                 f"  running: {str(self.running).lower()}",
                 f"  printing: {str(self.printing).lower()}",
                 f"  simulating lowmem: {str(self.simulate_lowmem).lower()}",
                 f"  sleep duration: {self.config.sleep_ms}ms",
                 f"  redline: {red_txt} ({red_b} bytes)",
                 f"  domain: {self.domain.name} ({self.domain.path})",
                 f"  dry run: {str(self.config.dry_run).lower()}",
                 "  own memory: " + ", ".join(f"{k} {oomlog.format_size(v)}" for k, v in status_bytes().items()),
                 f"  kills: {self.kills} (in the kernel, armed: {self.armed_kills}; "
                 f"by the kernel's own OOM killer: {self.kernel_kills_seen})",
                 "  sources:"]
        for name, s in sources.items():
            extra = ", ".join(f"{k}={v}" for k, v in s.items()
                              if k not in ("state", "source", "live") and not isinstance(v, (list, dict)))
            lines.append(f"    {name}: {s['state']}" + (f" ({extra})" if extra else ""))
        return "\n".join(lines), data

    def handle(self, cmd: str) -> tuple[bool, str, dict[str, Any]]:
        if cmd == "info":
            text, data = self.info()
            return True, text, data
        if cmd == "rank":
            snap = self.domain.snapshot(self.now_usec())
            ranking = rank(self.cgroupfs.jobs(self.domain.path, self.config.jobs), self.policy, snap.total_bytes)
            return True, format_ranking(ranking), {"ranking": [oomlog.candidate_record(c) for c in ranking.candidates]}
        if cmd == "start":
            self.running = True
        elif cmd == "stop":
            self.running = False
            self._disarm()
        elif cmd == "print":
            self.printing = not self.printing
        elif cmd == "lowmem":
            self.simulate_lowmem = True
        return True, f"OOM: {cmd}: done", {"running": self.running, "printing": self.printing,
                                           "simulating_lowmem": self.simulate_lowmem}

    # -- the loop -----------------------------------------------------------------
    def run(self) -> None:
        """Wait on the control socket, every source's fds and the timer
        deadline together (one epoll); wake the core on anything."""
        ep = select.epoll()
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.control = ControlServer(self.config.control_socket, self.handle)
        ep.register(rfd, select.EPOLLIN)
        ep.register(self.control.fileno(), select.EPOLLIN)
        by_fd: dict[int, Source] = {}
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
                for fd, _mask in ready:
                    if fd == rfd:
                        _drain_pipe(rfd)
                    elif fd == self.control.fileno():
                        cmd = self.control.accept_one()
                        if cmd == "lowmem" and self.running:
                            events.append(PressureEvent("control", "lowmem", timestamp_usec=self.now_usec()))
                    elif fd in by_fd:
                        events.extend(by_fd[fd].drain(fd))
                now = self.now_usec()
                if now >= deadline:
                    events.append(PressureEvent("timer", "tick", timestamp_usec=now))
                    deadline = now + self.config.sleep_ms * 1000
                if events and self.running and not self._quit:
                    try:
                        self.wake(events)
                    except OSError as e:
                        # A domain or job read that failed (a cgroup removed
                        # under us): log it, keep watching.
                        log.error("OOM: wake failed: %s", e)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            ep.close()
            os.close(rfd)
            os.close(wfd)
            self.control.close()
            self._disarm()
            for src in self.sources:
                src.close()
            log.info("OOM: oomkiller stopped after %d kills", self.kills)

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


def setup_logging(verbose: bool = False, stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("oomkiller")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
