"""One run: one contender on one cell, in a fresh arena, measured.

The timeline of a run, all on CLOCK_MONOTONIC:

1. arena and job cgroups made; the contender started and answering;
2. the service (and, for many jobs, the idle fleet) started and ready;
3. *baseline window* (``baseline_s``): nothing but the service runs. Its
   operations per second here are its baseline;
4. ``t_start``: the victim workload is started. The run then lasts exactly the
   cell's window, ``t_end = t_start + window``, whatever happens in it;
5. measures read, contender stopped, arena removed (every process in it killed).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from oomkiller.cgroupfs import Cgroupfs
from oomkiller.files import read_int, read_keyed, read_pids
from oomkiller.core.rank import Policy, rank

from . import measure, scenarios, throughput
from .arena import Arena
from .contenders import Contender, Kill, RunEnv
from .scenarios import Cell, Launch
from .slowdisk import SlowDisk
from .stats import median

WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")
READY_TIMEOUT_S = 30
# The fleet starts its sleepers at about 0.6 ms each here (10,000: 6 s);
# this much more per job bounds the wait for it on a slower or busier host.
FLEET_S_PER_JOB = 0.005
PSI_FILE_HOST = "/proc/pressure/memory"
# The many-jobs scenario times `oomkiller rank` this many times per run and keeps the median.
RANK_REPEATS = 3


@dataclass
class Files:
    service: str
    cells: dict     # the cells' files (Cell.files): key -> path


def drop_cache(path: str | None) -> None:
    """Evict a file's clean pages: the next reader faults them in again and
    they are charged to its memory cgroup, not to whoever read them before."""
    if not path or not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_file(path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        done = 0
        while done < size:
            n = min(len(block), size - done)
            f.write(block[:n])
            done += n
        f.flush()
        os.fsync(f.fileno())
    drop_cache(path)


def _usage(arena: Arena) -> int:
    name = "memory.usage_in_bytes" if arena.layout.memory_v1 else "memory.current"
    return read_int(os.path.join(arena.path, name)) or 0


def _job_oom_kills(arena: Arena, job) -> int:
    name = "memory.oom_control" if arena.layout.memory_v1 else "memory.events"
    try:
        return read_keyed(os.path.join(job.path, name)).get("oom_kill", 0)
    except OSError:
        return 0


def measure_rank(arena: Arena) -> dict[str, float]:
    """What ranking the arena's jobs costs: in process (list the jobs, rank
    them) and as the `oomkiller rank` command (a fresh interpreter included)."""
    cg = Cgroupfs()
    inproc, listing, cli = [], [], []
    for _ in range(RANK_REPEATS):
        t0 = time.perf_counter()
        jobs = cg.jobs(arena.path, ("*",))
        t1 = time.perf_counter()
        rank(jobs, Policy(("svc",), (), (), os.getpid()), arena.limit_bytes)
        t2 = time.perf_counter()
        listing.append((t1 - t0) * 1000)
        inproc.append((t2 - t0) * 1000)
        t3 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--protect", "svc",
                        "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=120)
        cli.append((time.perf_counter() - t3) * 1000)
    return {"jobs_seen": len(jobs), "list_ms": round(median(listing), 3), "rank_ms": round(median(inproc), 3),
            "rank_cli_ms": round(median(cli), 1)}


class Run:
    """One contender on one cell. ``execute()`` returns the plain record."""

    def __init__(self, cell: Cell, contender: Contender, index: int, files: Files, tmpdir: str,
                 lxcfs_meminfo: str | None, baseline_s: float, rank_probe: bool) -> None:
        self.cell = cell
        self.contender = contender
        self.index = index
        self.files = files
        self.tmpdir = tmpdir
        self.lxcfs_meminfo = lxcfs_meminfo
        self.baseline_s = baseline_s
        self.rank_probe = rank_probe
        self.readers: dict[str, measure.LineReader] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.before_victim = None       # called right before the victim starts

    def execute(self) -> dict[str, Any]:
        cell = self.cell
        rec: dict[str, Any] = {"cell": cell.key, "scenario": cell.scenario, "contender": self.contender.key,
                               "run": self.index, "limit_bytes": cell.limit_bytes,
                               "redline_bytes": cell.redline_bytes, "window_s": cell.window_s,
                               "victim_job": cell.victim_job, "error": None}
        drop_cache(self.files.service)
        for path in self.files.cells.values():
            drop_cache(path)
        running = None
        probe = None
        outer_lift = None
        name = f"oomk-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        t_wall = time.monotonic()
        # A cell's slow disk outlives the arena: its writer is killed before
        # the file system is unmounted.
        with contextlib.ExitStack() as outer, Arena(name, cell.limit_bytes) as arena:
            try:
                jobs = {n: arena.job(n) for n in scenarios.job_names(cell)}
                files = dict(self.files.cells)
                if cell.params.get("write_bps") or cell.params.get("read_bps"):
                    # (entered on the outer stack: it closes after the arena)
                    disk = outer.enter_context(SlowDisk(self.tmpdir, cell.params.get("write_bps", 0),
                                                        cell.params.get("read_bps", 0)))
                    for key in cell.params.get("on_slow_disk", ()):   # the cell's files that live on it
                        files[key] = os.path.join(disk.mount, f"{key}.dat")
                        make_file(files[key], cell.files[key])
                    throttled = jobs[cell.params.get("slow_disk_job", cell.victim_job)]
                    arena.allow_io()
                    # Slowed as the victim starts: the service's baseline is
                    # taken with its working set cached, as a slow disk's
                    # reader keeps it until something crowds it out.
                    self.before_victim = lambda: rec.update(slow_disk=disk.throttle(throttled.v2_path))
                    # lifted before the arena's close kills the writer: its dirty pages drain at full speed
                    outer_lift = disk.unthrottle
                    files["slow_disk"] = disk.mount
                env = RunEnv(arena, self.tmpdir, "svc", self.lxcfs_meminfo)
                running = self.contender.start(env)
                launch = Launch(spawn=lambda job, argv: self._spawn(arena, jobs, running, job, argv),
                                usage_bytes=lambda: _usage(arena), service_file=self.files.service,
                                tmpdir=self.tmpdir, files=files)
                self._start_and_wait(launch, "svc", scenarios.service_argv(cell, launch))
                if cell.scenario == "many-jobs":
                    jobs["fleet"] = arena.side_job("fleet")
                    self._start_and_wait(launch, "fleet", ["fleet", "--cgroups",
                                                           scenarios.fleet_file(cell, jobs, launch)],
                                         READY_TIMEOUT_S + cell.params["jobs"] * FLEET_S_PER_JOB)
                    self._wait_fleet(arena, jobs, cell.params["jobs"])
                if self.rank_probe:
                    rec["rank"] = measure_rank(arena)
                watch = {"svc": jobs["svc"], cell.victim_job: jobs[cell.victim_job]}
                probe = measure.Probe(arena, cell.limit_bytes - cell.redline_bytes, watch).start()
                rec.update(self._measure(arena, jobs, running, probe, launch))
                probe = None
            except Exception as e:      # one failed run must not end the benchmark
                rec["error"] = f"{type(e).__name__}: {e}"
            finally:
                if outer_lift:
                    outer_lift()
                if probe:
                    probe.stop()
                if running:
                    rec["contender_info"] = running.info()
                    running.stop()
                    if hasattr(running, "results"):
                        rec["daemon_results"] = running.results()
                        rec["daemon_records"] = running.decisions()
                for r in self.readers.values():
                    r.join(0.5)
        rec["wall_s"] = round(time.monotonic() - t_wall, 2)
        return rec

    # -- processes -------------------------------------------------------------------
    def _spawn(self, arena, jobs, running, job: str, role_argv: list[str]) -> subprocess.Popen:
        argv = running.wrap([sys.executable, "-S", WORKLOAD, *role_argv])
        p = arena.spawn(jobs[job], argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                        start_new_session=True)
        self.procs[job] = p
        self.readers[job] = measure.LineReader(p.stdout, f"out-{job}")
        return p

    def _start_and_wait(self, launch: Launch, job: str, argv: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
        launch.spawn(job, argv)
        if not self.readers[job].wait_ready(timeout_s):
            said = [line for _, line in self.readers[job].lines if line.startswith("error")]
            raise RuntimeError(f"workload {job} did not start (exit {self.procs[job].poll()})"
                               + (f": {said[-1]}" if said else ""))

    def _wait_fleet(self, arena, jobs, n: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready = sum(1 for i in range(n) if _has_procs(jobs[f"idle-{i:04d}"].path))
            if ready == n:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the fleet put a process in only {ready} of {n} jobs")

    # -- the measured part -----------------------------------------------------------
    def _measure(self, arena, jobs, running, probe, launch) -> dict[str, Any]:
        cell = self.cell
        out: dict[str, Any] = {}
        psi_path = os.path.join(arena.v2_path, "memory.pressure")
        tb0 = measure.now_usec()
        time.sleep(max(self.baseline_s, cell.min_baseline_s))
        tb1 = measure.now_usec()
        kp = running.killer_pids()
        cpu1 = measure.tree_cpu_ns(kp) if kp else None
        psi0, host0 = measure.read_psi_totals(psi_path), measure.read_psi_totals(PSI_FILE_HOST)

        if self.before_victim:
            self.before_victim()
        t_start = measure.now_usec()
        launch.spawn(cell.victim_job, scenarios.victim_argv(cell, launch))
        t_end = t_start + int(cell.window_s * 1e6)
        while measure.now_usec() < t_end:
            time.sleep(min(0.05, max(0.0, (t_end - measure.now_usec()) / 1e6)))
        t_end = measure.now_usec()

        psi1, host1 = measure.read_psi_totals(psi_path), measure.read_psi_totals(PSI_FILE_HOST)
        kp = running.killer_pids()
        cpu2 = measure.tree_cpu_ns(kp) if kp else None
        mem = measure.memory_kb(kp[0]) if kp else {}
        bpf2 = measure.bpf_prog_stats(kp) if kp else []
        out["contender_exit"] = running.exit_code()
        svc_rc = self.procs["svc"].poll()
        victim_rc = self.procs[cell.victim_job].poll()
        kernel_by_job = {"svc": _job_oom_kills(arena, jobs["svc"]),
                         cell.victim_job: _job_oom_kills(arena, jobs[cell.victim_job])}
        kernel_total = arena.kernel_oom_kills()
        log = probe.stop()

        kills = running.kills(lambda comm: scenarios.job_of_comm(cell, comm))
        oom_t = next((t for t in log.oom_usec if t >= t_start), None)
        other = kernel_total - sum(kernel_by_job.values())
        for job, n in list(kernel_by_job.items()) + [("other jobs", other)]:
            if n:
                kills.append(Kill("kernel", job, oom_t, "SIGKILL", [], {"count": n}))
        kills.sort(key=lambda k: (k.t_usec is None, k.t_usec or 0))
        first = kills[0] if kills else None

        onset = log.onset_usec
        emptied = log.emptied_usec(cell.victim_job, t_start)
        out.update({
            "t_start_usec": t_start, "t_end_usec": t_end, "baseline_window_usec": [tb0, tb1],
            "onset_usec": onset, "onset_how": log.onset_how, "oom_events_usec": log.oom_usec[:16],
            "probe_realtime": log.realtime,
            "kills": [asdict(k) for k in kills],
            "kernel_oom_kills": kernel_total,
            "victim_exit": victim_rc, "service_exit": svc_rc,
            "victim_emptied_usec": emptied,
        })
        killed_by = first.by if first else ("unknown" if emptied else "nobody")
        out["killed_by"] = killed_by
        out["killers"] = sorted({k.by for k in kills})
        out["right_victim"] = (first.job == cell.victim_job) if first else None
        collateral = [k.job for k in kills if k.job and k.job != cell.victim_job]
        if svc_rc is not None and "svc" not in collateral:
            collateral.append("svc")
        out["collateral"] = collateral
        out["victim_job_emptied"] = emptied is not None
        # A killer that counts memory its own way may act before usage reaches
        # the threshold: before the onset, or with no onset at all.
        out["killed_before_onset"] = bool(first and first.t_usec is not None
                                          and (onset is None or first.t_usec < onset))
        t_dec = first.t_usec if first else None
        out["onset_to_decision_ms"] = (t_dec - onset) / 1000 if t_dec is not None and onset is not None else None
        out["start_to_decision_ms"] = (t_dec - t_start) / 1000 if t_dec is not None else None
        out["signal_to_empty_ms"] = ((emptied - t_dec) / 1000 if t_dec is not None and emptied is not None
                                     and first.job == cell.victim_job else None)
        own = [k for k in kills if k.by == self.contender.kind or (k.by == "daemon" and self.contender.kind == "oomkiller")]
        if own and own[0].detail.get("signal_to_empty_usec") is not None:
            out["daemon_signal_to_empty_ms"] = own[0].detail["signal_to_empty_usec"] / 1000
        if own and own[0].detail.get("wake_usec") and onset is not None:
            out["onset_to_wake_ms"] = (own[0].detail["wake_usec"] - onset) / 1000
            out["woken_by"] = own[0].detail.get("woken_by")
            out["daemon_timings_usec"] = own[0].detail.get("timings_usec")

        rate = _alloc_rate(self.readers[cell.victim_job].lines, onset)
        if rate is not None:
            out["victim_alloc_mb_s"] = rate
        out["psi_ms"] = measure.psi_delta_ms(psi0, psi1)
        out["host_psi_ms"] = measure.psi_delta_ms(host0, host1)

        series = self.readers["svc"].ops_series()
        base = measure.ops_between(series, tb0, tb1)
        during = measure.ops_between(series, t_start, t_end)
        window_s = (t_end - t_start) / 1e6
        base_rate = base[0] / base[1] if base and base[1] > 0 else None
        rate = during[0] / window_s if during else 0.0
        out["service"] = {
            "alive": svc_rc is None, "baseline_ops_per_s": round(base_rate, 1) if base_rate else None,
            "ops": during[0] if during else 0, "ops_per_s": round(rate, 1),
            "ratio": round(rate / base_rate, 4) if base_rate else None,
            "series": [[round((t - t_start) / 1e6, 3), n] for t, n in series if t >= tb0],
        }
        if cell.scenario == "thrash":
            out["freeze"] = freeze_figures(out["service"]["series"], base_rate, t_start, window_s, kills, emptied,
                                           svc_rc is None)
        out["killer"] = {
            "pids": kp,
            "cpu_ms": round((cpu2 - cpu1) / 1e6, 3) if cpu1 is not None and cpu2 is not None else None,
            "rss_mb": round(mem["VmRSS"] / 1024, 1) if "VmRSS" in mem else None,
            "peak_rss_mb": round(mem["VmHWM"] / 1024, 1) if "VmHWM" in mem else None,
            "rss_anon_mb": round(mem["RssAnon"] / 1024, 1) if "RssAnon" in mem else None,
        }
        if bpf2:
            cnt, ns = sum(int(p["run_cnt"]) for p in bpf2), sum(int(p["run_time_ns"]) for p in bpf2)
            # The programs were loaded for this run: their totals are this run's.
            out["bpf"] = {"programs": bpf2, "run_cnt": cnt, "run_time_ns": ns,
                          "ns_per_run": round(ns / cnt, 1) if cnt else None}
        return out


def freeze_figures(series: list, baseline_ops_s: float | None, t_start_usec: int, window_s: float,
                   kills: list[Kill], emptied_usec: int | None, alive: bool | None = True) -> dict[str, Any]:
    """The freeze's headline for one run, times in seconds since the hog
    started: the service's collapse (under half its baseline rate), its
    relief (back above half) within the window, the first kill, and the
    signal that fired (oomkiller's decision record)."""
    first = kills[0] if kills else None

    def since(t_usec: int | None) -> float | None:
        return None if t_usec is None else round((t_usec - t_start_usec) / 1e6, 3)
    kill_s = since(first.t_usec) if first else None
    out = {"acted": first.by if first else "nobody", "kill_job": first.job if first else None, "kill_s": kill_s,
           "victim_emptied_s": since(emptied_usec),
           "decision": first.detail.get("decision") if first else None,
           "thrash": first.detail.get("thrash") if first else None}
    out.update(throughput.headline(series, baseline_ops_s, window_s, kill_s, alive))
    return out


def _alloc_rate(lines: list[tuple[int, str]], onset: int | None) -> float | None:
    """The hog's allocation rate (MB/s) over the last 64 MiB it reported
    before the pressure onset (or before it stopped, without an onset)."""
    pts = []
    for _, line in list(lines):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alloc":
            pts.append((int(parts[2]), int(parts[1])))
    if onset is not None:
        before = [p for p in pts if p[0] <= onset]
        pts = before if len(before) >= 2 else pts[:2]
    if len(pts) < 2:
        return None
    end = pts[-1]
    start = next((p for p in reversed(pts) if end[1] - p[1] >= 64 << 20), pts[0])
    if end[0] <= start[0]:
        return None
    return round((end[1] - start[1]) / 1e6 / ((end[0] - start[0]) / 1e6), 1)


# The idle phase lets a freshly started killer settle (imports, BPF compile
# done, first wakes) before its CPU is counted.
IDLE_SETTLE_S = 0.5


def idle_run(contender: Contender, files: Files, tmpdir: str, lxcfs_meminfo: str | None,
             idle_s: float) -> dict[str, Any]:
    """The killer's own cost with nothing to do: started on an arena holding
    only the service, its CPU time over ``idle_s`` (a whole number of its
    timer periods, so the count of wakes in the window does not depend on
    where the window falls), its memory, and its BPF programs' run counts."""
    rec: dict[str, Any] = {"contender": contender.key, "idle_s": idle_s, "error": None}
    cell = Cell("idle", "idle", "idle", 256 << 20, idle_s, "svc")
    running = None
    with Arena(f"oomk-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}", cell.limit_bytes) as arena:
        run = Run(cell, contender, 0, files, tmpdir, lxcfs_meminfo, 0.0, False)
        try:
            jobs = {"svc": arena.job("svc")}
            running = contender.start(RunEnv(arena, tmpdir, "svc", lxcfs_meminfo))
            launch = Launch(spawn=lambda job, argv: run._spawn(arena, jobs, running, job, argv),
                            usage_bytes=lambda: _usage(arena), service_file=files.service,
                            tmpdir=tmpdir)
            run._start_and_wait(launch, "svc", scenarios.service_argv(cell, launch))
            time.sleep(IDLE_SETTLE_S)
            kp = running.killer_pids()
            if kp:
                b0, c0, t0 = measure.bpf_prog_stats(kp), measure.tree_cpu_ns(kp), time.monotonic()
                time.sleep(idle_s)
                kp = running.killer_pids()
                b1, c1, t1 = measure.bpf_prog_stats(kp), measure.tree_cpu_ns(kp), time.monotonic()
                mem = measure.memory_kb(kp[0]) if kp else {}
                if c0 is not None and c1 is not None:
                    rec["cpu_ms"] = round((c1 - c0) / 1e6, 3)
                    rec["cpu_pct"] = round(100 * (c1 - c0) / 1e9 / (t1 - t0), 4)
                    sleep_ms = getattr(contender, "sleep_ms", None)
                    if sleep_ms:
                        rec["cpu_usec_per_timer_wake"] = round((c1 - c0) / 1e3 / ((t1 - t0) * 1000 / sleep_ms), 1)
                rec["rss_mb"] = round(mem["VmRSS"] / 1024, 1) if "VmRSS" in mem else None
                rec["peak_rss_mb"] = round(mem["VmHWM"] / 1024, 1) if "VmHWM" in mem else None
                rec["rss_anon_mb"] = round(mem["RssAnon"] / 1024, 1) if "RssAnon" in mem else None
                if b1:
                    rec["bpf"] = {"programs": len(b1),
                                  "runs": sum(int(p["run_cnt"]) for p in b1) - sum(int(p["run_cnt"]) for p in b0),
                                  "run_time_ns": (sum(int(p["run_time_ns"]) for p in b1)
                                                  - sum(int(p["run_time_ns"]) for p in b0))}
            rec["contender_info"] = running.info()
        except Exception as e:      # one failed measurement must not end the benchmark
            rec["error"] = f"{type(e).__name__}: {e}"
        finally:
            if running:
                running.stop()
            for r in run.readers.values():
                r.join(0.5)
    return rec


def _has_procs(path: str) -> bool:
    try:
        return bool(read_pids(os.path.join(path, "cgroup.procs")))
    except OSError:
        return False
