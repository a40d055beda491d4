"""What the benchmark measures, and how: kernel notifications about an arena,
PSI totals, a process's CPU time and memory, BPF program statistics, and
timestamped output lines of the processes it runs.

Every timestamp is CLOCK_MONOTONIC in microseconds, the clock the daemon's
records use (``time.monotonic_ns()`` in every process).
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Iterable

from oomkiller import files

from .arena import Arena, ArenaJob


def now_usec() -> int:
    return time.monotonic_ns() // 1000


# -- kernel notifications about one arena -----------------------------------------

@dataclass
class ProbeLog:
    """What the probe saw, as plain values."""

    onset_usec: int | None = None            # first upward crossing of the threshold
    onset_how: str = ""
    crossings_usec: list[int] = field(default_factory=list)
    oom_usec: list[int] = field(default_factory=list)      # memcg OOM notifications
    populated: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # job -> [(t, 0|1)]
    realtime: bool = False                   # the probe thread ran SCHED_FIFO

    def emptied_usec(self, job: str, after_usec: int = 0) -> int | None:
        """When the job's cgroup last went from populated to empty after ``after_usec``."""
        seen_full = False
        empty_at = None
        for t, pop in self.populated.get(job, []):
            if pop:
                seen_full = True
                empty_at = None
            elif seen_full and t >= after_usec and empty_at is None:
                empty_at = t
        return empty_at


class Probe:
    """One thread that timestamps kernel notifications about an arena.

    * pressure onset: the arena's charged memory crossing ``threshold_bytes``
      upward. On a v1 memory cgroup the kernel signals it (an eventfd
      registered on ``memory.usage_in_bytes`` through ``cgroup.event_control``;
      the kernel checks thresholds every 128 pages charged per CPU, so it is
      at most 1 MiB late on two CPUs). On cgroup v2 there is no threshold
      notification: ``memory.current`` is polled every ``POLL_S``.
    * memcg OOM: an eventfd on v1 ``memory.oom_control``, which the kernel
      signals when the memcg runs out, just before its OOM killer picks a
      victim (v2: ``memory.events`` changes, polled for POLLPRI).
    * each job's v2 ``cgroup.events``: ``populated`` flips to 0 when the last
      process of the job has exited (POLLPRI on change).
    """

    POLL_S = 0.01

    def __init__(self, arena: Arena, threshold_bytes: int, jobs: dict[str, ArenaJob]) -> None:
        self.arena = arena
        self.threshold_bytes = threshold_bytes
        self.log = ProbeLog()
        self._fds: list[int] = []
        self._files: dict[int, tuple[str, IO]] = {}
        self._stop = threading.Event()
        self._poll = select.poll()
        self._v1 = arena.layout.memory_v1
        self._usage_path = os.path.join(arena.path, "memory.usage_in_bytes" if self._v1 else "memory.current")
        self._thr_fd = self._oom_fd = -1
        if self._v1:
            self._thr_fd = self._register("memory.usage_in_bytes", str(threshold_bytes))
            self._oom_fd = self._register("memory.oom_control", "")
            self.log.onset_how = "memcg usage threshold event (v1 cgroup.event_control)"
        else:
            self.log.onset_how = f"memory.current polled every {self.POLL_S * 1000:.0f} ms"
            f = open(os.path.join(arena.path, "memory.events"), "rb", buffering=0)
            f.read()
            self._files[f.fileno()] = ("#events", f)
            self._poll.register(f.fileno(), select.POLLPRI)
        for name, job in jobs.items():
            f = open(os.path.join(job.v2_path, "cgroup.events"), "rb", buffering=0)
            self.log.populated[name] = [(now_usec(), _populated(f.read()))]
            self._files[f.fileno()] = (name, f)
            self._poll.register(f.fileno(), select.POLLPRI)
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def _register(self, control: str, args: str) -> int:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        target = os.open(os.path.join(self.arena.path, control), os.O_RDONLY | os.O_CLOEXEC)
        with open(os.path.join(self.arena.path, "cgroup.event_control"), "w") as f:
            f.write(f"{efd} {target} {args}".strip())
        self._fds += [efd, target]
        self._poll.register(efd, select.POLLIN)
        return efd

    def start(self) -> "Probe":
        self._thread.start()
        return self

    def stop(self) -> ProbeLog:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in self._fds:
            os.close(fd)
        for _, f in self._files.values():
            f.close()
        self._fds.clear()
        self._files.clear()
        return self.log

    def _usage(self) -> int:
        try:
            return files.read_int(self._usage_path) or 0
        except (OSError, ValueError):
            return 0

    def _loop(self) -> None:
        self.log.realtime = _realtime()
        timeout_ms = int(self.POLL_S * 1000) if not self._v1 else 100
        above = self._usage() >= self.threshold_bytes
        while not self._stop.is_set():
            for fd, _ev in self._poll.poll(timeout_ms):
                t = now_usec()
                if fd == self._thr_fd:
                    # The kernel signals every crossing, up and down in turn,
                    # and the eventfd adds them up: an odd count flips the
                    # side. Reading usage instead would miss an onset whose
                    # job was killed before this thread ran.
                    n = _drain_eventfd(fd)
                    if n and not above:
                        self.log.crossings_usec.append(t)
                        if self.log.onset_usec is None:
                            self.log.onset_usec = t
                    if n % 2:
                        above = not above
                elif fd == self._oom_fd:
                    _drain_eventfd(fd)
                    self.log.oom_usec.append(t)
                elif fd in self._files:
                    name, f = self._files[fd]
                    f.seek(0)
                    data = f.read()
                    if name == "#events":
                        self.log.oom_usec.append(t)
                    else:
                        pop = _populated(data)
                        if self.log.populated[name][-1][1] != pop:
                            self.log.populated[name].append((t, pop))
            if not self._v1:
                now_above = self._usage() >= self.threshold_bytes
                if now_above and not above:
                    t = now_usec()
                    self.log.crossings_usec.append(t)
                    if self.log.onset_usec is None:
                        self.log.onset_usec = t
                above = now_above


def _drain_eventfd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


# The probe thread runs SCHED_FIFO: on two CPUs busy with a hog and a killer,
# a normal thread can wake milliseconds after the kernel signalled. It sleeps
# in poll() between a handful of events per run, so it takes no CPU from them.
PROBE_RT_PRIORITY = 10


def _realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PROBE_RT_PRIORITY))
        return True
    except (OSError, AttributeError):
        return False


def _populated(data: bytes) -> int:
    return files.parse_keyed(data.decode(errors="replace")).get("populated", 0)


# -- PSI -------------------------------------------------------------------------

def read_psi_totals(path: str) -> dict[str, int]:
    """``{"some": usec, "full": usec}`` from a PSI file (``total=`` fields);
    none if it cannot be read."""
    try:
        return files.read_psi_totals(path)
    except OSError:
        return {}


def psi_delta_ms(before: dict[str, int], after: dict[str, int]) -> dict[str, float | None]:
    return {k: (after[k] - before[k]) / 1000 if k in before and k in after else None for k in ("some", "full")}


# -- a process's own cost -------------------------------------------------------

def cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid``, in ns, from ``/proc/PID/task/*/schedstat``.

    schedstat counts in nanoseconds; ``/proc/PID/stat`` (and psutil's
    ``cpu_times``) count in clock ticks of 10 ms, too coarse for a daemon that
    spends well under a millisecond per wake.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            # run time, wait time, timeslices
            total += int(files.read_text(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def tree_cpu_ns(pids: list[int]) -> int | None:
    vals = [v for v in (cpu_ns(p) for p in pids) if v is not None]
    return sum(vals) if vals else None


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in KiB."""
    try:
        return files.read_kb_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM", "RssAnon", "RssFile"), kb=True)
    except OSError:
        return {}


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (psutil), for killers that run helpers."""
    import psutil
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return []


# -- BPF program statistics ---------------------------------------------------------

def bpf_prog_stats(pids: list[int]) -> list[dict[str, int | str]]:
    """Run count and run time of every BPF program the processes hold an fd to.

    The kernel counts these only while ``kernel.bpf_stats_enabled`` is 1; they
    show in ``/proc/PID/fdinfo/FD`` of a ``bpf-prog`` fd (what ``bpftool prog
    show`` prints as run_time_ns and run_cnt).
    """
    progs: dict[int, dict[str, int | str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                    continue
                text = files.read_text(f"/proc/{pid}/fdinfo/{fd}")
                info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            except OSError:
                continue
            info = {k.strip(): v.strip() for k, v in info.items()}
            if "prog_id" not in info:
                continue
            pid_ = int(info["prog_id"])
            progs[pid_] = {"prog_id": pid_, "prog_type": info.get("prog_type", ""),
                           "prog_tag": info.get("prog_tag", ""),
                           "run_time_ns": int(info.get("run_time_ns", 0)),
                           "run_cnt": int(info.get("run_cnt", 0))}
    return sorted(progs.values(), key=lambda p: p["prog_id"])


class BpfStats:
    """``kernel.bpf_stats_enabled`` on for the benchmark, restored afterwards."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __init__(self) -> None:
        self.old: str | None = None
        self.enabled = False
        self.why = ""

    def __enter__(self) -> "BpfStats":
        try:
            self.old = files.read_text(self.PATH).strip()
            with open(self.PATH, "w") as f:
                f.write("1")
            self.enabled = True
        except OSError as e:
            self.why = f"cannot enable {self.PATH}: {e.strerror}"
        return self

    def __exit__(self, *exc) -> None:
        if self.old is not None and self.old != "1":
            try:
                with open(self.PATH, "w") as f:
                    f.write(self.old)
            except OSError:
                pass


# -- output lines of a process ----------------------------------------------------

class LineReader:
    """Reads a process's output in a thread; keeps each line with the time it
    arrived. A killer's log is read by a SCHED_FIFO thread (``realtime``), as
    its lines time its decisions."""

    def __init__(self, stream: IO[str], name: str = "reader", realtime: bool = False) -> None:
        self.lines: list[tuple[int, str]] = []
        self._ready = threading.Event()
        self._stream = stream
        self._realtime = realtime
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._realtime:
            _realtime()
        try:
            for line in self._stream:
                line = line.rstrip("\n")
                self.lines.append((now_usec(), line))
                if line == "ready":
                    self._ready.set()
        except (OSError, ValueError):
            pass
        self._ready.set()

    def wait_ready(self, timeout_s: float) -> bool:
        self._ready.wait(timeout_s)
        return any(line == "ready" for _, line in self.lines)

    def join(self, timeout_s: float = 2.0) -> None:
        self._thread.join(timeout_s)

    def ops_series(self) -> list[tuple[int, int]]:
        """``(t_usec, ops so far)`` from ``ops N T`` lines."""
        return parse_ops(line for _, line in list(self.lines))


def parse_ops(lines: Iterable[str]) -> list[tuple[int, int]]:
    """A working process's ``ops N T`` lines (see workload.py): ``(T, N)``,
    N operations done by CLOCK_MONOTONIC microsecond T."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ops" and parts[1].isdigit() and parts[2].isdigit():
            out.append((int(parts[2]), int(parts[1])))
    return out


def ops_between(series: list[tuple[int, int]], t0: int, t1: int) -> tuple[int, float] | None:
    """Operations completed in [t0, t1] from a cumulative series, and the
    covered seconds (the series may end early: the process died)."""
    before = [s for s in series if s[0] <= t0]
    inside = [s for s in series if t0 < s[0] <= t1]
    if not before or not inside:
        return None
    a, b = before[-1], inside[-1]
    return b[1] - a[1], (b[0] - a[0]) / 1e6
