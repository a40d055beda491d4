"""The scenarios: what runs in the arena, and which job should be killed.

Each *cell* is one scenario with its parameters (a hog's rate, a number of
jobs). Every cell has a protected service job ``svc`` (the one that must keep
working) and one victim job (the one a good killer picks). A run lasts a fixed
window from the moment the victim starts, whoever kills and whenever, so the
stall and service measures of different contenders cover the same span.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Callable

MIB = 1 << 20

# The redline every contender gets, as a share of the arena's limit: the
# daemon's --redline, earlyoom's -m and nohang's min_mem thresholds.
REDLINE_PERCENT = 10

SERVICE_HOLD_BYTES = 32 * MIB
SERVICE_FILE_BYTES = 16 * MIB

# Process names the workloads give themselves; contenders' logs name processes.
COMM = {"hog": "oomk-hog", "svc": "oomk-svc", "storm": "oomk-storm",
        "child": "oomk-child", "fleet": "oomk-fleet", "sleep": "sleep", "load": "oomk-load"}

# The contenders of the freeze and the false-positive suite: the kernel alone,
# oomkiller on its shipped defaults, and the two user-space killers beside it.
FREEZE_CONTENDERS = ("kernel", "oomk-defaults", "earlyoom", "nohang")

# The healthy workloads of the false-positive suite (issue "End the freeze"),
# in report order.
HEALTHY = ("stream", "stream-held", "stream-held-slow", "scan-held-slow", "build", "slow-write", "fits", "cpu",
           "burst", "burst-long", "burst-83")
# The slow disk of the "slow-write" load (slowdisk.py): what a throttled
# volume or an old laptop's disk writes under load.
SLOW_DISK_BPS = 4 << 20
# The slow disk the freeze's service reads from in "thrash-slow-disk" (the
# host-level suite's freeze-slow-disk reads at the same 8 MiB/s).
SLOW_READ_BPS = 8 << 20


@dataclass(frozen=True)
class Cell:
    key: str                    # e.g. "fast-hog-max": unique in a run
    scenario: str               # fast-hog, thrash, slow-leak, fork-storm, many-jobs, noisy-neighbour
    title: str
    limit_bytes: int
    window_s: float
    victim_job: str
    params: dict = field(default_factory=dict)
    service_hold_bytes: int = SERVICE_HOLD_BYTES
    contenders: tuple[str, ...] | None = None   # None: every contender of the mode
    measure_rank: bool = False
    # The service reads its file around the page cache (O_DIRECT) unless the
    # scenario is about the page cache: then the arena's charged memory is
    # what nobody can reclaim, and the onset threshold means the same for
    # every contender whatever it counts as reclaimable.
    service_direct: bool = True
    # The service's role (workload.py): ``service``, or ``mapped`` (a
    # file-backed working set read through mmap) on ``service_file``, a key
    # of ``files()``.
    service_role: str = "service"
    service_file: str = ""
    # Files the cell needs, made once per benchmark: key -> size in bytes.
    files: dict = field(default_factory=dict)
    # The service's baseline is measured over at least this long.
    min_baseline_s: float = 0.0
    # Left out of the mode's matrix unless named by key (--scenarios).
    only_named: bool = False

    @property
    def redline_bytes(self) -> int:
        return self.limit_bytes * REDLINE_PERCENT // 100

    def describe(self) -> str:
        p = self.params
        s = self.scenario
        if s == "fast-hog":
            rate = f"{p['rate']} MB/s" if p["rate"] else "as fast as it can"
            return f"one job allocates anonymous memory {rate} beside the protected service"
        if s == "slow-leak":
            return (f"one job allocates up to {p['lead_mib']} MiB below the redline at once, "
                    f"then leaks {p['rate']} MB/s")
        if s == "thrash":
            disk = (f" on a disk that reads {p['read_bps'] / 1e6:.1f} MB/s (an ext4 on a loop device of its own, "
                    "throttled)" if p.get("read_bps") else "")
            return (f"the freeze: the service reads one byte of a random page of a {p['file_bytes'] // MIB} MiB "
                    f"file{disk} through mmap in {p['threads']} threads (a file-backed working set, like program "
                    f"text); a hog fills anonymous memory to {p['fill_percent']}% of the "
                    f"{self.limit_bytes // MIB} MiB arena as fast as it can and holds it")
        if s == "healthy":
            return HEALTHY_TEXT[p["load"]].format(limit=self.limit_bytes // MIB, **p)
        if s == "fork-storm":
            return (f"one job forks a child every {p['interval_ms']} ms, each holding "
                    f"{p['child_bytes'] // MIB} MiB, up to {p['max_children']} children")
        if s == "many-jobs":
            return (f"{p['jobs']} idle jobs (one sleep each, started outside the arena: the job is charged only "
                    f"its cgroup, about 10 KiB) beside the service; one more job leaks {p['rate']} MB/s from "
                    f"{p['lead_mib']} MiB below the redline")
        if s == "noisy-neighbour":
            return (f"a service holding {self.service_hold_bytes // MIB} MiB works while a neighbour "
                    f"grows {p['rate']} MB/s from {p['lead_mib']} MiB below the redline")
        return s


def cells(mode: str) -> list[Cell]:
    """The matrix of a mode: ``ci`` (tiny), ``short`` (``make bench``) or ``full``."""
    full = mode == "full"
    limit = 512 * MIB
    small = 256 * MIB
    out: list[Cell] = []
    for r in ((300, 1000, 0) if full else (0,)):
        out.append(Cell(f"fast-hog-{r or 'max'}", "fast-hog", f"fast hog, {r} MB/s" if r else "fast hog, max rate",
                        limit, 2.0, "hog", {"rate": r}))
    # The leak starts lead_mib below the redline; at the limit the kernel
    # acts: (lead + redline) / rate seconds later, well inside the window.
    out.append(Cell("slow-leak", "slow-leak", "slow leak", small, {"ci": 4.0, "short": 4.0, "full": 10.0}[mode],
                    "hog", {"rate": {"ci": 24, "short": 16, "full": 8}[mode], "lead_mib": 16}))
    if mode == "ci":
        return out
    # The freeze: 40 s is how long the issue watched it and found no relief.
    out.append(Cell("thrash", "thrash", "the freeze (mapped working set, anonymous hog holding 85%)", limit,
                    40.0 if full else 20.0, "hog", {"file_bytes": FREEZE_FILE_BYTES, "threads": 2, "fill_percent": 85},
                    contenders=FREEZE_CONTENDERS, service_role="mapped", service_file="freeze",
                    files={"freeze": FREEZE_FILE_BYTES}, min_baseline_s=2.0))
    # The freeze on slow storage (a laptop's disk, a throttled volume): the
    # service's file on a disk that reads 8 MiB/s, so its refaults come as
    # fast as the disk gives them, not as fast as it asks. Named, or --full.
    out.append(Cell("thrash-slow-disk", "thrash", "the freeze on a slow disk (the service's reads at 8 MiB/s)", limit,
                    40.0 if full else 20.0, "hog",
                    {"file_bytes": FREEZE_FILE_BYTES, "threads": 2, "fill_percent": 85, "read_bps": SLOW_READ_BPS,
                     "on_slow_disk": ("freeze",), "slow_disk_job": "svc"},
                    contenders=FREEZE_CONTENDERS, service_role="mapped", service_file="freeze",
                    files={"freeze": FREEZE_FILE_BYTES}, min_baseline_s=2.0, only_named=not full))
    out += healthy_cells(mode)
    out.append(Cell("fork-storm", "fork-storm", "fork storm", limit, 2.5, "storm",
                    {"child_bytes": 8 * MIB, "interval_ms": 10, "max_children": 2 * limit // (8 * MIB)}))
    out.append(Cell("noisy-neighbour", "noisy-neighbour", "noisy neighbour", limit, 5.0 if full else 3.5,
                    "hog", {"rate": 100, "lead_mib": 64}, service_hold_bytes=64 * MIB))
    # --short runs every contender on 100 jobs only; 10 and 1000 jobs there
    # show how the cost grows, for the kernel and two oomkillers. 10,000
    # jobs run in --full, and in --short only when named (--scenarios).
    for n in (10, 100, 1000, 10000):
        out.append(Cell(f"many-jobs-{n}", "many-jobs", f"many jobs ({n})", limit if n < 1000 else 1024 * MIB,
                        MANY_JOBS_WINDOW_S if n == 10000 else 3.0, "hog", {"jobs": n, "rate": 100, "lead_mib": 48},
                        contenders=None if (full or n == 100) else ("kernel", "oomk-timer-100", "oomk-prearm"),
                        measure_rank=True, only_named=n == 10000 and not full,
                        min_baseline_s=MANY_JOBS_SETTLE_S if n == 10000 else 0.0))
    return out


FREEZE_FILE_BYTES = 200 * MIB
# The baseline before the hog of the 10,000-job cell: the contender has just
# seen 10,000 jobs arrive, and oomkiller's first listing of them all reads
# each in full (4-5 s here, caches cold), the later ones only what changed
# (about 1 s); this leaves it time for a few before the hog starts, so the
# run measures a daemon that has been running, not its first listing.
MANY_JOBS_SETTLE_S = 12.0
# Its window: the hog's prefill (some 750 MiB, as fast as it can) took 2.4 s
# beside 10,000 jobs and their killer here, where 0.5 s is usual: the onset
# came 3 s after the hog started, at the end of the usual 3 s window.
MANY_JOBS_WINDOW_S = 6.0
# The false-positive suite's arena: the size in which a build-like load once
# crossed the redline.
HEALTHY_LIMIT = 256 * MIB
# How long each healthy load runs: a minute (the figure) in --full;
# 10 s in --short, where its 20 runs (5 loads, 4 contenders) would otherwise
# add over 20 minutes to `make bench`.
HEALTHY_WINDOW_S = {"ci": 10.0, "short": 10.0, "full": 60.0}
HEALTHY_TEXT = {
    "stream": "a healthy load: `cat` of a {stream_mib} MiB file (twice the {limit} MiB arena) through the page "
              "cache, in a loop; the service beside it",
    "stream-held": "a healthy load that holds {hold_percent}% of the {limit} MiB arena (anonymous) and streams a "
                   "{stream_mib} MiB file through what is left of the page cache, in a loop: the cache is squeezed "
                   "and refaults as in the freeze, but nothing waits on memory; the service beside it",
    "stream-held-slow": "a healthy load that holds {hold_percent}% of the {limit} MiB arena (anonymous) and "
                        "streams a {stream_mib} MiB file from a disk that reads {disk_mb_s:g} MB/s (an ext4 on a "
                        "loop device of its own, throttled), in a loop: the cache is squeezed, the refaults come "
                        "as fast as the disk gives them and the load waits on I/O all the time, as a frozen "
                        "service on a slow disk does, but none of its refaults is a working set's; the service "
                        "beside it",
    "scan-held-slow": "a healthy load like a database's table scan: holds {hold_percent}% of the {limit} MiB "
                      "arena (anonymous) and reads a {stream_mib} MiB file through mmap from start to end, a page "
                      "at a time, in a loop, from a disk that reads {disk_mb_s:g} MB/s (an ext4 on a loop device "
                      "of its own, throttled): the stream of stream-held-slow through a mapping, where a frozen "
                      "service's reads are too, but in order, so readahead serves all but a few of its faults "
                      "(a major fault is one that waits for the disk to start a read); the service beside it",
    "build": "a healthy load like a build with a big cache: writes {build_mib} MiB (twice the arena) as "
             "{piece_mib} MiB files, reads them all back, deletes them, in a loop; the service beside it",
    "slow-write": "a healthy load that writes {write_mib} MiB files (more than the {limit} MiB arena) to a disk "
                  "that writes {disk_mb_s:g} MB/s (an ext4 on a loop device of its own, throttled), in a loop: "
                  "a v1 memory cgroup fills with dirty pages and its reclaim waits for the disk (v2 holds the "
                  "writer to the disk's pace instead); the service beside it",
    "fits": "a healthy load whose working set fits: the service reads a {fits_mib} MiB file through mmap at "
            "random pages in 2 threads while a job holds {hold_percent}% of the {limit} MiB arena",
    "cpu": "a healthy load at 100% CPU: {procs} processes spinning, one per CPU; the service beside it",
    "burst": "short bursts of pressure: the service reads a {fits_mib} MiB file through mmap; every {every_s:g} s "
             "a job fills {hold_percent}% of the {limit} MiB arena, holds it {hold_ms} ms and frees it",
    "burst-long": "bursts of pressure just under a second: burst's, each held {hold_ms} ms",
    "burst-83": "bursts of pressure that stay above the redline: burst-long's, filling {hold_percent}%",
}


def healthy_cells(mode: str) -> list[Cell]:
    """The false-positive suite: one cell per healthy load, a job ``load``
    beside the service, where no killer should kill anything."""
    lim = HEALTHY_LIMIT
    cpus = os.cpu_count() or 2
    fits = lim // 8
    slow_mib = 5 * lim // 8 // MIB
    per = {
        "stream": ({"stream_mib": 2 * lim // MIB}, {"stream": 2 * lim}, "service", ""),
        "stream-held": ({"stream_mib": 2 * lim // MIB, "hold_percent": 60}, {"stream": 2 * lim}, "service", ""),
        # Held beside the service's 32 MiB: free memory under a quarter of
        # the arena (traced: 24% for the stream at 70%, 23-24% for the scan
        # at 65%, whose mapped pages count as in use), where the I/O stall
        # may carry an episode (core/thrash.py), and above the redline (80%
        # crossed it). The file: over twice the cache left beside them
        # (58-75 MiB), read once in 20 s at 8 MiB/s, so that the minute's
        # other 40 s re-read it (refaults at 10-16%/s of the cache); twice
        # the arena took the whole minute for its first pass, and nothing
        # refaulted.
        "stream-held-slow": ({"stream_mib": slow_mib, "hold_percent": 70, "read_bps": SLOW_READ_BPS,
                              "disk_mb_s": round(SLOW_READ_BPS / 1e6, 1), "on_slow_disk": ("stream",),
                              "slow_disk_job": "load"}, {"stream": slow_mib * MIB}, "service", ""),
        "scan-held-slow": ({"stream_mib": slow_mib, "hold_percent": 65, "read_bps": SLOW_READ_BPS,
                            "disk_mb_s": round(SLOW_READ_BPS / 1e6, 1), "on_slow_disk": ("stream",),
                            "slow_disk_job": "load"}, {"stream": slow_mib * MIB}, "service", ""),
        "build": ({"build_mib": 2 * lim // MIB, "piece_mib": 2}, {}, "service", ""),
        "slow-write": ({"write_mib": 5 * lim // 4 // MIB, "write_bps": SLOW_DISK_BPS,
                        "disk_mb_s": round(SLOW_DISK_BPS / 1e6, 1)}, {}, "service", ""),
        "fits": ({"fits_mib": fits // MIB, "hold_percent": 60}, {"fits": fits}, "mapped", "fits"),
        "cpu": ({"procs": cpus}, {}, "service", ""),
        # 85% beside a 32 MiB cached working set fills the arena: the cache is
        # evicted and read back for the ~0.5 s the burst lasts (measured: 0.2 s
        # of stall and 80,000 refaults a burst). 70% and 80% left room for
        # both: no stall, no refault, not a burst of pressure at all.
        "burst": ({"fits_mib": fits // MIB, "hold_percent": 85, "hold_ms": 500, "every_s": 5.0}, {"fits": fits},
                  "mapped", "fits"),
        # the longest burst the shipped sustain span (thrash_sustain_ms 1000)
        # is to let pass: the fill squeezes the cache before the hold starts
        "burst-long": ({"fits_mib": fits // MIB, "hold_percent": 85, "hold_ms": 800, "every_s": 5.0},
                       {"fits": fits}, "mapped", "fits"),
        # the thrash detector alone: at 85% the job and the service leave
        # under 5% of the arena, low memory by the redline's rule, which
        # kills first. 83%, traced every 80 ms with the daemon in a dry run
        # (six bursts): free memory never under 5.8%, the service's cache
        # refaulting at up to 6,300%/s of the file cache, the arena stalled
        # 10-31% for 0.6-1.3 s of each burst, no decision; at 82% nothing
        # refaulted and free memory stayed over 12%.
        "burst-83": ({"fits_mib": fits // MIB, "hold_percent": 83, "hold_ms": 800, "every_s": 5.0},
                     {"fits": fits}, "mapped", "fits"),
    }
    out = []
    for load in HEALTHY:
        params, files, role, sfile = per[load]
        out.append(Cell(f"healthy-{load}", "healthy", f"healthy: {load}", lim, HEALTHY_WINDOW_S[mode], "load",
                        dict(params, load=load), contenders=FREEZE_CONTENDERS, service_role=role,
                        service_file=sfile, files=files, service_direct=role == "service",
                        min_baseline_s=2.0 if role == "mapped" else 0.0))
    return out


# -- starting the processes of a cell ---------------------------------------------

@dataclass
class Launch:
    """What a scenario needs from the run: start a workload in a job."""

    spawn: Callable[..., subprocess.Popen]     # spawn(job_name, role_argv) -> Popen (stdout piped)
    usage_bytes: Callable[[], int]             # the arena's charged memory now
    service_file: str
    tmpdir: str
    files: dict = field(default_factory=dict)  # a cell's files: key -> path


def job_names(cell: Cell) -> list[str]:
    """The jobs of the arena. The many-jobs fleet, which starts the idle
    jobs' sleepers, lives beside the arena (``Arena.side_job``)."""
    names = ["svc", cell.victim_job]
    if cell.scenario == "many-jobs":
        names += [f"idle-{i:04d}" for i in range(cell.params["jobs"])]
    return names


def service_argv(cell: Cell, launch: Launch) -> list[str]:
    if cell.service_role == "mapped":
        return ["mapped", "--file", launch.files[cell.service_file], "--threads", "2", "--name", COMM["svc"]]
    return (["service", "--hold", str(cell.service_hold_bytes), "--file", launch.service_file, "--name", COMM["svc"]]
            + (["--direct"] if cell.service_direct else []))


def fleet_file(cell: Cell, jobs: dict, launch: Launch) -> str:
    """The fleet's list of cgroups: per child, its memory cgroup and v2 mirror."""
    path = os.path.join(launch.tmpdir, f"fleet-{cell.key}.txt")
    with open(path, "w") as f:
        for i in range(cell.params["jobs"]):
            j = jobs[f"idle-{i:04d}"]
            f.write(" ".join(dict.fromkeys([j.path, j.v2_path])) + "\n")
    return path


def victim_argv(cell: Cell, launch: Launch) -> list[str]:
    """The victim's command, decided when it starts (a lead-in depends on what
    the arena holds by then)."""
    p = cell.params
    if cell.scenario == "fast-hog":
        return ["hog", "--rate", str(p["rate"]), "--cap", str(2 * cell.limit_bytes), "--name", COMM["hog"]]
    if cell.scenario in ("slow-leak", "many-jobs", "noisy-neighbour"):
        onset = cell.limit_bytes - cell.redline_bytes
        prefill = max(0, onset - launch.usage_bytes() - p["lead_mib"] * MIB)
        return ["hog", "--prefill", str(prefill), "--rate", str(p["rate"]), "--cap", str(2 * cell.limit_bytes),
                "--name", COMM["hog"]]
    if cell.scenario == "thrash":
        cap = cell.limit_bytes * p["fill_percent"] // 100
        return ["hog", "--cap", str(cap), "--name", COMM["hog"]]
    if cell.scenario == "healthy":
        return healthy_argv(cell, launch)
    if cell.scenario == "fork-storm":
        return ["storm", "--child-bytes", str(p["child_bytes"]), "--interval-ms", str(p["interval_ms"]),
                "--max-children", str(p["max_children"]), "--name", COMM["storm"], "--child-name", COMM["child"]]
    raise ValueError(cell.scenario)


def healthy_argv(cell: Cell, launch: Launch) -> list[str]:
    p = cell.params
    name = ["--name", COMM["load"]]
    load = p["load"]
    if load == "stream":
        return ["stream", "--file", launch.files["stream"], *name]
    if load in ("stream-held", "stream-held-slow", "scan-held-slow"):
        return ["stream", "--file", launch.files["stream"], "--hold",
                str(cell.limit_bytes * p["hold_percent"] // 100), *(["--mmap"] if load == "scan-held-slow" else []),
                *name]
    if load == "build":
        work = os.path.join(launch.tmpdir, f"build-{cell.key}")
        os.makedirs(work, exist_ok=True)
        return ["build", "--dir", work, "--total", str(p["build_mib"] * MIB), "--piece", str(p["piece_mib"] * MIB),
                *name]
    if load == "slow-write":
        return ["write", "--dir", launch.files["slow_disk"], "--total", str(p["write_mib"] * MIB), *name]
    if load == "fits":
        return ["hog", "--cap", str(cell.limit_bytes * p["hold_percent"] // 100), *name]
    if load == "cpu":
        return ["spin", "--procs", str(p["procs"]), *name]
    if load in ("burst", "burst-long", "burst-83"):
        return ["burst", "--bytes", str(cell.limit_bytes * p["hold_percent"] // 100), "--hold-ms", str(p["hold_ms"]),
                "--every-s", str(p["every_s"]), *name]
    raise ValueError(load)


def job_of_comm(cell: Cell, comm: str) -> str | None:
    """The job a process named ``comm`` belongs to, in this cell."""
    if comm == COMM["load"]:
        return "load"
    if comm in (COMM["hog"], COMM["storm"], COMM["child"]):
        return cell.victim_job
    if comm == COMM["svc"]:
        return "svc"
    if comm in (COMM["sleep"], COMM["fleet"]):
        return "fleet" if comm == COMM["fleet"] else "idle-*"
    return None
