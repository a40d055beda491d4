"""``oomkiller bench --host-level``: the contenders as a host's real services.

Meant for a whole machine with systemd on pure cgroup v2 and no swap (the VM
tier's guest: ``python -m tests.vm.run --cmd 'python -m oomkiller_bench
--host-level --out $OOMK_VM_RESULTS/bench'``). Pressure is machine-wide (the
host domain: ``MemAvailable`` of ``MemTotal``), jobs are transient systemd
services in ``system.slice``, and each contender runs as the machine's own
unit, started with ``systemctl`` and stopped again before the next one:

* ``kernel``: no user-space killer;
* earlyoom, nohang, systemd-oomd and oomd, each with its shipped defaults and
  with tuned settings (``describe()`` says which);
* ``oomkiller``: the project's unit (deploy/oomkiller.service) with the
  shipped config: ``--domain host``, every source, redline 5%.

Every run starts a protected service (``workload.py service``, marked
``ManagedOOMPreference=avoid``) and, after a baseline, a hog service. The run
ends when the hog's cgroup is empty (or at a timeout, when the harness kills
it). Measures:

* *onset*: the first sample (every 10 ms, from ``/proc/meminfo``) with
  ``MemAvailable`` below ``ONSET_PERCENT`` of ``MemTotal``;
* *death*: the first sample with the hog's cgroup empty or gone;
* *who killed*: the kernel when ``/proc/vmstat`` ``oom_kill`` grew, else the
  contender when the hog died of a signal (its log line is kept);
* *right*: the hog died, the protected service, the contender and the
  system's own services kept their processes;
* *service work*: the protected service's operations per second from the
  hog's start to its death, as a share of its rate in the baseline.

The ``freeze`` scenario is the arena's thrash cell at host level: the
protected service reads a file through ``mmap`` at random pages (the
``mapped`` role), the hog fills anonymous memory until MemAvailable would be
13% of MemTotal and holds it, and nothing ends the run but the hog's death
or ``FREEZE_WINDOW_S`` after it holds. Its headline is the service's:
*collapse* and *relief* (``throughput.py``), the kill, and the service's
share of its baseline after the collapse; beside them the PSI averages the
PSI-based contenders act on, and oomkiller's thrash detector (shipped
limits) run on the harness's own host snapshots, whoever the contender.

Times under emulation are slower than on hardware: the table gives each
contender's median onset-to-death time as a ratio to the kernel's and to
oomkiller's in the same machine and the same run of the benchmark.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from oomkiller.files import parse_kb_fields, read_kb_fields, read_keyed, read_psi_totals, read_text

from . import daemon, is_root, pick, print_list
from . import markdown as md
from . import throughput
from .contenders import nohang_config
from .measure import parse_ops
from .records import group, load_results, split, stamp, write_results
from .runner import WORKLOAD, make_file
from .scenarios import COMM, MIB, SERVICE_FILE_BYTES, SERVICE_HOLD_BYTES
from .stats import median, tally

CGROUP_ROOT = "/sys/fs/cgroup"
RUN_DIR = "/run/oomk-bench"
DATA_DIR = "/var/tmp/oomk-bench"
UNIT_PREFIX = "oomkb-"
SLICE = "system.slice"
DROPIN_NAME = "50-oomk-bench.conf"

ONSET_PERCENT = 10
SAMPLE_S = 0.01
# A hog never holds more than this share of MemTotal: it cannot fit, so the
# kernel acts before the cap, and nothing runs away if everything else fails.
HOG_CAP_SHARE = 1.5
RUN_TIMEOUT_S = 120
BASELINE_S = 1.5
AFTER_S = 1.0
SYSTEM_SERVICES = ("systemd-journald.service", "dbus.service", "systemd-logind.service")
# The protected service's process name, the one the arena benchmark gives it:
# the tuned contenders are told to spare it by name.
SERVICE_NAME = COMM["svc"]


# -- scenarios ----------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    rate_mb_s: float          # 0: as fast as it can
    lead_mib: int = 0         # slow leak: start this far above the onset
    timeout_s: float = RUN_TIMEOUT_S
    child_mib: int = 0        # fork storm: each child holds this much
    leave_percent: int = 0    # the freeze: the hog leaves this share of MemTotal available
    healthy: str = ""         # a healthy load (HEALTHY_LOADS): nobody should kill anything
    # slow storage: the protected service's reads throttled to this (MiB/s,
    # systemd's IOReadBandwidthMax on the disk of its file); 0: not throttled
    read_mib_s: int = 0

    @property
    def freeze(self) -> bool:
        return self.leave_percent > 0 and not self.healthy

    @property
    def mapped(self) -> bool:
        """The protected service reads a file through mmap (the freeze's
        working set, or the healthy loads' smaller one)."""
        return self.freeze or bool(self.healthy)

    @property
    def big_working_set(self) -> bool:
        """The service reads the freeze's file (the freeze, and its bursts),
        not the small one that fits."""
        return self.freeze or self.healthy == "burst"

    def describe(self) -> str:
        if self.healthy:
            return HEALTHY_LOADS[self.healthy].format(
                fits=HEALTHY_FITS_BYTES // MIB, freeze=FREEZE_FILE_BYTES // MIB, window=HEALTHY_WINDOW_S,
                leave=self.leave_percent,
                stream="a file as large as MemTotal", hold_ms=BURST_HOLD_MS, every=BURST_EVERY_S)
        if self.freeze:
            return (f"the freeze: the protected service reads one byte of a random page of a "
                    f"{FREEZE_FILE_BYTES // MIB} MiB file through mmap in {FREEZE_THREADS} threads (a file-backed "
                    f"working set, like program text); a hog (nice 19) fills anonymous memory as fast as it can until "
                    f"MemAvailable would be {self.leave_percent}% of MemTotal, and holds it; watched until "
                    f"{FREEZE_WINDOW_S:g} s after the hog holds (or {FREEZE_AFTER_DEATH_S:g} s after it died)"
                    + (f"; the service's reads throttled to {self.read_mib_s} MiB/s (systemd's "
                       f"IOReadBandwidthMax on its file's disk): slow storage" if self.read_mib_s else ""))
        if self.child_mib:
            return (f"a service forks a child every {STORM_INTERVAL_MS} ms that holds {self.child_mib} MiB, up to "
                    f"{HOG_CAP_SHARE:g}× MemTotal in all, beside the protected service; the job is dead when its "
                    f"cgroup is empty (the kernel alone kills one child at a time, and the forks go on)")
        if not self.lead_mib:
            return "a service allocates anonymous memory as fast as it can, guest-wide, beside the protected service"
        return (f"a service fills memory at once to {self.lead_mib} MiB above the onset, then leaks "
                f"{self.rate_mb_s:g} MB/s, beside the protected service")

    def hog_argv(self, mem_total: int, mem_available: int, stream_file: str = "") -> list[str]:
        cap = int(mem_total * HOG_CAP_SHARE)
        if self.healthy:
            return healthy_argv(self.healthy, mem_total, mem_available, self.leave_percent, stream_file)
        if self.child_mib:
            return ["storm", "--child-bytes", str(self.child_mib * MIB), "--interval-ms", str(STORM_INTERVAL_MS),
                    "--max-children", str(cap // (self.child_mib * MIB)), "--name", "oomk-hog",
                    "--child-name", "oomk-hog-child"]
        if self.freeze:
            cap = freeze_hog_bytes(mem_total, mem_available, self.leave_percent)
            return ["hog", "--prefill", str(cap), "--cap", str(cap), "--name", "oomk-hog"]
        prefill = 0
        if self.lead_mib:
            prefill = max(0, mem_available - onset_bytes(mem_total) - self.lead_mib * MIB)
        return ["hog", "--prefill", str(prefill), "--rate", str(self.rate_mb_s), "--cap", str(cap),
                "--name", "oomk-hog"]


STORM_INTERVAL_MS = 20

# The freeze: the working set the service reads through mmap, as the arena's
# thrash cell (a third of the guest's MemTotal), in as many threads.
FREEZE_FILE_BYTES = 200 * MIB
FREEZE_THREADS = 2
# Relief must come within this long after the hog holds ("never" otherwise),
# as the arena's thrash cell watches it 40 s.
FREEZE_WINDOW_S = 40.0
# After the hog's death: how long the service is watched for its relief.
FREEZE_AFTER_DEATH_S = 15.0
# The mapped service's baseline: its rate over this long before the hog.
FREEZE_BASELINE_S = 2.0
# Faulting 200 MiB in from the guest's disk under emulation is slow.
FREEZE_READY_S = 240

# The false-positive suite at host level: each load beside the protected
# service, which reads a working set that fits through mmap; nobody should
# kill anything in the window.
HEALTHY_WINDOW_S = 60.0
HEALTHY_FITS_BYTES = 32 * MIB
BURST_HOLD_MS = 500
BURST_EVERY_S = 5.0
HEALTHY_LOADS = {
    "stream": "a healthy load: `cat`-like reads of {stream} through the page cache, in a loop, beside the "
              "protected service reading a {fits} MiB file through mmap; {window:g} s, nobody should kill",
    "stream-held": "a healthy load that holds anonymous memory until MemAvailable would be {leave}% of MemTotal "
                   "and streams {stream} through what is left of the page cache, in a loop: the cache is "
                   "squeezed and refaults as in the freeze, but the refaults are the stream's own; beside the "
                   "protected service reading a {fits} MiB file through mmap; {window:g} s, nobody should kill",
    "burst": "the freeze's fill, held {hold_ms} ms: every {every:g} s a job fills anonymous memory until "
             "MemAvailable would be {leave}% of MemTotal, holds it {hold_ms} ms and frees it, beside the protected "
             "service reading the freeze's {freeze} MiB file through mmap; {window:g} s, nobody should kill (under "
             "emulation the fill itself takes seconds: the squeeze lasts longer than {hold_ms} ms)",
}


def healthy_argv(load: str, mem_total: int, mem_available: int, leave_percent: int, stream_file: str) -> list[str]:
    fill = freeze_hog_bytes(mem_total, mem_available, leave_percent) if leave_percent else 0
    name = ["--name", COMM["load"]]
    if load in ("stream", "stream-held"):
        return ["stream", "--file", stream_file, "--hold", str(fill), *name]
    if load == "burst":
        return ["burst", "--bytes", str(fill), "--hold-ms", str(BURST_HOLD_MS), "--every-s", str(BURST_EVERY_S),
                *name]
    raise ValueError(load)


SCENARIOS = {s.key: s for s in (
    Scenario("fast-hog", "fast hog, max rate", 0),
    Scenario("slow-leak", "slow leak, 16 MB/s", 16, lead_mib=32),
    # A job that is never emptied by the kernel: time out sooner.
    Scenario("fork-storm", "fork storm, 8 MiB children", 0, timeout_s=30, child_mib=8),
    # The hog leaves 13% of MemTotal available: above the 10% lines of
    # earlyoom, nohang and oomkiller-10 (MemAvailable must stay over them
    # for this to be the freeze rather than a low-memory race).
    Scenario("freeze", "the freeze (mapped working set, anonymous hog holding)", 0,
             timeout_s=FREEZE_WINDOW_S + 60, leave_percent=13),
    # The freeze on slow storage: the service reads its pages back no faster
    # than a slow disk gives them (a laptop's, a throttled cloud volume's),
    # so its refaults are few for the size of the cache.
    Scenario("freeze-slow-disk", "the freeze on a slow disk (the service's reads at 8 MiB/s)", 0,
             timeout_s=FREEZE_WINDOW_S + 60, leave_percent=13, read_mib_s=8),
    Scenario("healthy-stream", "healthy: a stream", 0, timeout_s=HEALTHY_WINDOW_S, healthy="stream"),
    # 40% left: the cache squeezed under half of memory, as the freeze's
    # detector gates want, with room for the stream's read-ahead.
    Scenario("healthy-stream-held", "healthy: a held heap and a stream", 0, timeout_s=HEALTHY_WINDOW_S,
             leave_percent=40, healthy="stream-held"),
    # The freeze for 500 ms at a time: the same working set, the same 13%
    # left. A 32 MiB working set stayed cached at 13% and at 8% left (not a
    # refault): the page cache given up was others'.
    Scenario("healthy-burst", "healthy: the freeze's fill, held 500 ms", 0, timeout_s=HEALTHY_WINDOW_S, leave_percent=13,
             healthy="burst"),
)}


def freeze_hog_bytes(mem_total: int, mem_available: int, leave_percent: int) -> int:
    """What the freeze's hog holds: all that is available when it starts
    (the service's file cached, which the kernel then evicts for it) but
    ``leave_percent`` of MemTotal; never more than ``HOG_CAP_SHARE`` of it."""
    want = mem_available - mem_total * leave_percent // 100
    return max(0, min(want, int(mem_total * HOG_CAP_SHARE)))


def onset_bytes(mem_total: int) -> int:
    return mem_total * ONSET_PERCENT // 100


# -- small helpers ------------------------------------------------------------------

def sh(*argv: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
    return p


def show(unit: str, *props: str) -> dict[str, str]:
    out = sh("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def meminfo() -> dict[str, int]:
    return read_kb_fields("/proc/meminfo")


def vmstat_oom_kills() -> int:
    return read_keyed("/proc/vmstat").get("oom_kill", 0)


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def wait_for(cond, timeout_s: float, step_s: float = 0.1):
    end = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step_s)


def ops_rate(ops: list[tuple[int, int]], t0_us: int, t1_us: int) -> float | None:
    """Operations per second between two instants, from the reports that
    bracket them most tightly (the first at or after t0, the last at or
    before t1; a report the service never sent counts as no work)."""
    inside = [(t, n) for t, n in ops if t0_us <= t <= t1_us]
    before = [(t, n) for t, n in ops if t < t0_us]
    start = before[-1] if before else (inside[0] if inside else None)
    if start is None:
        return None
    end = inside[-1] if inside else start
    span = (t1_us - start[0]) / 1e6
    return (end[1] - start[1]) / span if span > 0 else None


# -- contenders ---------------------------------------------------------------------

@dataclass
class Contender:
    key: str
    label: str
    kind: str
    unit: str | None = None                        # None: the kernel alone
    files: dict[str, str] = field(default_factory=dict)     # written before the start, removed after
    kill_re: str = r"(?i)\bkill(ed|ing)?\b"
    settings: str = ""
    ready_timeout_s: float = 60
    also_stop: tuple[str, ...] = ()                 # units that could start it again (a socket)

    def describe(self) -> str:
        return self.settings

    def unavailable(self) -> str | None:
        if self.unit is None:
            return None
        load = show(self.unit, "LoadState").get("LoadState")
        if load != "loaded":
            return f"{self.unit} is not installed here ({load or 'no systemd'})"
        return None

    # The unit's lifetime spans every run of this contender.
    def start(self) -> dict[str, Any]:
        if self.unit is None:
            return {}
        for path, text in self.files.items():
            write(path, text)
        sh("systemctl", "daemon-reload", check=True)
        sh("systemctl", "reset-failed", self.unit)
        t0 = time.monotonic()
        self.since = time.time()
        p = sh("systemctl", "start", self.unit, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"systemctl start {self.unit}: {(p.stderr or p.stdout).strip()[-300:]}\n"
                               + self.journal_text()[-1500:])
        self.wait_ready()
        # Up and still up a moment later (Restart=always would hide a crash loop).
        time.sleep(1.0)
        st = self.state()
        if not st["alive"]:
            raise RuntimeError(f"{self.unit} did not stay up: {st}\n" + self.journal_text()[-1500:])
        out: dict[str, Any] = {"start_s": round(time.monotonic() - t0, 2), "main_pid": st["pid"]}
        if self.kind == "systemd-oomd":
            # What it watches, in its own words: the settings took, or not.
            out["oomctl_dump"] = sh("oomctl", "dump").stdout.splitlines()[:80]
            out["watching"] = oomctl_watching(out["oomctl_dump"])
        return out

    def wait_ready(self) -> None:
        wait_for(lambda: self.state()["alive"], self.ready_timeout_s, 0.2)

    def state(self) -> dict[str, Any]:
        if self.unit is None:
            return {"alive": True, "pid": 0, "restarts": 0}
        s = show(self.unit, "ActiveState", "MainPID", "NRestarts")
        return {"alive": s.get("ActiveState") == "active" and s.get("MainPID", "0") != "0",
                "pid": int(s.get("MainPID") or 0), "restarts": int(s.get("NRestarts") or 0)}

    def journal_text(self, since: float | None = None) -> str:
        if self.unit is None:
            return ""
        since = self.since if since is None else since
        return sh("journalctl", "-u", self.unit, "--no-pager", "-o", "cat", "--since", f"@{int(since)}").stdout

    def kill_lines(self, since: float) -> list[str]:
        pat = re.compile(self.kill_re)
        return [line for line in self.journal_text(since).splitlines() if pat.search(line)]

    def stop(self) -> None:
        if self.unit is None:
            return
        sh("systemctl", "stop", self.unit, *self.also_stop, timeout=120)
        for path in self.files:
            unlink(path)
        sh("systemctl", "daemon-reload")
        sh("systemctl", "reset-failed", self.unit)


def oomctl_watching(dump: list[str]) -> str:
    """One line from ``oomctl dump``: the default duration and the cgroups
    watched for memory pressure, each with its limit."""
    duration, watched, section, path = "", [], "", None
    for raw in dump:
        ln = raw.strip()
        if ln.startswith("Default Memory Pressure Duration:"):
            duration = ln.split(":", 1)[1].strip()
        elif ln.endswith("Monitored CGroups:"):
            section = ln
        elif ln.startswith("Path:") and section.startswith("Memory Pressure"):
            path = ln.split(":", 1)[1].strip()
        elif ln.startswith("Memory Pressure Limit:") and path:
            watched.append(f"{path} (limit {ln.split(':', 1)[1].strip()})")
            path = None
    return (f"memory pressure watched on {', '.join(watched) or 'no cgroup'}"
            + (f", default duration {duration}" if duration else ""))


def dropin(unit: str) -> str:
    return f"/run/systemd/system/{unit}.d/{DROPIN_NAME}"


class Oomkiller(Contender):
    SOCKET = "/run/oomkiller/control.sock"
    RECORDS = "/run/oomkiller/decisions.jsonl"

    def __init__(self, redline: str | None = None) -> None:
        env = f'Environment="OOMKILLER_JSON_LOG={self.RECORDS}"\n'
        settings = ("deploy/oomkiller.service with the shipped /etc/oomkiller/oomkiller.toml: --domain host, "
                    "redline 5%, sources ebpf,prearm,psi,memcg,timer, 1 s timer; decision records to a file")
        key, label = "oomkiller", "oomkiller"
        if redline:
            env += f'Environment="OOMKILLER_REDLINE={redline}"\n'
            settings = settings.replace("redline 5%", f"redline {redline} (OOMKILLER_REDLINE, as the tuned "
                                        "earlyoom and nohang)")
            key, label = f"oomkiller-{redline.rstrip('%')}", f"oomkiller (redline {redline})"
        super().__init__(key, label, "oomkiller", "oomkiller.service",
                         {dropin("oomkiller.service"): "[Service]\n" + env}, settings=settings,
                         ready_timeout_s=300)

    def wait_ready(self) -> None:
        from oomkiller.control import ControlError, request

        def answering() -> bool:
            pid = self.state()["pid"]
            if not pid:
                return False
            try:
                return request(self.SOCKET, "info", timeout_s=2)["data"]["pid"] == pid
            except (ControlError, KeyError, OSError):
                return False
        if not wait_for(answering, self.ready_timeout_s, 0.25):
            raise RuntimeError("oomkiller did not answer on its control socket:\n" + self.journal_text()[-1500:])
        try:
            info = request(self.SOCKET, "info", timeout_s=5)["data"]
            self.sources_live = sorted(k for k, v in info.get("sources", {}).items() if v.get("state") == "live")
        except (ControlError, KeyError, OSError):
            self.sources_live = []

    def start(self) -> dict[str, Any]:
        unlink(self.RECORDS)
        self.seen = 0
        out = super().start()
        out["sources_live"] = getattr(self, "sources_live", [])
        return out

    def stop(self) -> None:
        # Its runtime folder goes with the unit: keep the decision records.
        keep = getattr(self, "keep_dir", None)
        if keep and os.path.exists(self.RECORDS):
            shutil.copyfile(self.RECORDS, os.path.join(keep, f"{self.key}-decisions.jsonl"))
        super().stop()

    def kill_lines(self, since: float) -> list[str]:
        if not os.path.exists(self.RECORDS):
            return []
        try:
            recs = daemon.read_records(self.RECORDS)
        except ValueError:
            return []
        # The records' clock is the daemon's monotonic one: take the ones
        # written since the last run.
        new, self.seen = recs[getattr(self, "seen", 0):], len(recs)
        out = []
        for r in daemon.kills(new):
            woke = ",".join(sorted({w.get("kind") or w.get("source") or "?" for w in r.get("woken_by", [])}))
            out.append(f"killed {daemon.victim_job(r)} ({r.get('decision')}; woken by {woke})")
        return out


def nohang_tuned_config(base: str) -> str:
    return nohang_config(base, {"soft_threshold_min_mem": f"{ONSET_PERCENT} %",
                                "hard_threshold_min_mem": f"{ONSET_PERCENT} %",
                                "psi_checking_enabled": "True", "psi_excess_duration": "2"}, SERVICE_NAME)


NOHANG_UNBUFFERED = '[Service]\nEnvironment="PYTHONUNBUFFERED=1"\n'

OOMD_TUNED = {
    "rulesets": [{
        "name": "memory protection",
        "detectors": [
            ["system pressure above 10 for 1s",
             {"name": "pressure_above", "args": {"cgroup": "system.slice", "resource": "memory",
                                                 "threshold": "10", "duration": "1"}}],
            ["system.slice above 85% of memory",
             {"name": "memory_above", "args": {"cgroup": "system.slice", "threshold": "85%", "duration": "1"}}],
        ],
        # The jobs the benchmark starts: oomd 0.5 takes no notice of the
        # ManagedOOMPreference=omit xattr that keeps the harness's own scope
        # (system.slice/oomk-job.scope in the VM tier) out of the others' reach.
        "actions": [{"name": "kill_by_memory_size_or_growth", "args": {"cgroup": f"{SLICE}/{UNIT_PREFIX}*"}}],
    }]
}

OOMD_SHIPPED_OPTS = "--interval 1 --config /etc/oomd/oomd.json --cgroup-fs /sys/fs/cgroup/unified"


def contenders() -> dict[str, Contender]:
    nohang_conf = os.path.join(RUN_DIR, "nohang.conf")
    oomd_conf = os.path.join(RUN_DIR, "oomd.json")
    try:
        with open("/etc/nohang/nohang.conf") as f:
            nohang_base = f.read()
    except OSError:
        nohang_base = ""
    cs = [
        Contender("kernel", "kernel alone", "kernel", None,
                  settings="no user-space killer: the kernel's OOM killer"),
        Oomkiller(),
        Oomkiller(f"{ONSET_PERCENT}%"),
        Contender("earlyoom", "earlyoom (defaults)", "earlyoom", "earlyoom.service",
                  kill_re=r"sending SIG\w+ to process",
                  settings="earlyoom.service as shipped: /etc/default/earlyoom (-r 3600; SIGTERM below 10% "
                           "available, SIGKILL below 5%)"),
        Contender("earlyoom-tuned", "earlyoom (tuned)", "earlyoom", "earlyoom.service",
                  {dropin("earlyoom.service"):
                   "[Service]\nExecStart=\nExecStart=/usr/bin/earlyoom -m 10,10 -s 100,100 -r 0 "
                   f"--avoid ^{SERVICE_NAME}$$\n"},
                  kill_re=r"sending SIG\w+ to process",
                  settings=f"earlyoom -m 10,10 -s 100,100 -r 0 --avoid '^{SERVICE_NAME}$' (SIGKILL at once below 10%)"),
        Contender("nohang", "nohang (defaults)", "nohang", "nohang.service",
                  {dropin("nohang.service"): NOHANG_UNBUFFERED}, kill_re=r"Sending SIG\w+ to ",
                  settings="nohang.service as shipped: /etc/nohang/nohang.conf (SIGTERM below 5% available, "
                           "SIGKILL below 2%, PSI off); PYTHONUNBUFFERED=1 so that its log lines come at once"),
        Contender("nohang-tuned", "nohang (tuned)", "nohang", "nohang.service",
                  {nohang_conf: nohang_tuned_config(nohang_base),
                   dropin("nohang.service"): NOHANG_UNBUFFERED
                   + f"ExecStart=\nExecStart=/usr/sbin/nohang --monitor --config {nohang_conf}\n"},
                  kill_re=r"Sending SIG\w+ to ",
                  settings=f"nohang with soft and hard min_mem at {ONSET_PERCENT}% (SIGKILL at once), PSI on "
                           f"(full_avg10 above 90 for 2 s), @BADNESS_ADJ_RE_NAME -1000 /// ^{SERVICE_NAME}$"),
        Contender("systemd-oomd", "systemd-oomd (defaults)", "systemd-oomd", "systemd-oomd.service",
                  kill_re=r"(?i)killed", also_stop=("systemd-oomd.socket",),
                  settings="systemd-oomd.service as shipped: Debian sets no ManagedOOM*= on any unit, so it "
                           "watches nothing"),
        Contender("systemd-oomd-tuned", "systemd-oomd (tuned)", "systemd-oomd", "systemd-oomd.service",
                  {dropin(SLICE): "[Slice]\nManagedOOMMemoryPressure=kill\nManagedOOMMemoryPressureLimit=10%\n",
                   f"/run/systemd/oomd.conf.d/{DROPIN_NAME}": "[OOM]\nDefaultMemoryPressureDurationSec=1s\n"},
                  kill_re=r"(?i)killed", also_stop=("systemd-oomd.socket",),
                  settings="system.slice: ManagedOOMMemoryPressure=kill, ManagedOOMMemoryPressureLimit=10%; "
                           "oomd.conf DefaultMemoryPressureDurationSec=1s (no swap: SwapUsedLimit= is moot); "
                           "the protected service has ManagedOOMPreference=avoid"),
        Contender("oomd", "oomd (defaults)", "oomd", "oomd.service",
                  {dropin("oomd.service"):
                   "[Service]\nExecStart=\nExecStart=/usr/bin/oomd --interval 1 --config /etc/oomd/oomd.json\n"},
                  settings="oomd with the shipped /etc/oomd/oomd.json (system.slice memory pressure above 80 "
                           "for 60 s with reclaim), --interval 1; /etc/default/oomd's --cgroup-fs "
                           "/sys/fs/cgroup/unified dropped, as that file says to on a unified hierarchy"),
        Contender("oomd-tuned", "oomd (tuned)", "oomd", "oomd.service",
                  {oomd_conf: json.dumps(OOMD_TUNED, indent=1) + "\n",
                   dropin("oomd.service"):
                   f"[Service]\nExecStart=\nExecStart=/usr/bin/oomd --interval 1 --config {oomd_conf}\n"},
                  settings="oomd --interval 1, one ruleset: system.slice memory pressure above 10 for 1 s, or "
                           "system.slice above 85% of memory for 1 s -> kill_by_memory_size_or_growth "
                           f"{SLICE}/{UNIT_PREFIX}* (the benchmark's services: oomd 0.5 ignores the "
                           "ManagedOOMPreference=omit that keeps the harness's own scope out)"),
    ]
    return {c.key: c for c in cs}


# -- one run ---------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Every SAMPLE_S: MemAvailable (onset) and the hog's cgroup (death)."""

    def __init__(self, mem_total: int, hog_cgroup: str) -> None:
        super().__init__(daemon=True)
        self.onset = onset_bytes(mem_total)
        self.events = os.path.join(hog_cgroup, "cgroup.events")
        self.t_onset: float | None = None
        self.t_seen: float | None = None
        self.t_dead: float | None = None
        self.min_available: int | None = None
        self.samples = 0
        self.done = threading.Event()

    def available(self, fd: int) -> int:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace")
        return parse_kb_fields(text, ("MemAvailable",)).get("MemAvailable", 0)

    def hog_state(self) -> str:
        try:
            text = read_text(self.events)
        except OSError:
            return "gone"
        return "populated" if "populated 1" in text else "empty"

    def run(self) -> None:
        fd = os.open("/proc/meminfo", os.O_RDONLY)
        try:
            while not self.done.is_set():
                t = time.monotonic()
                avail = self.available(fd)
                self.samples += 1
                self.min_available = avail if self.min_available is None else min(self.min_available, avail)
                if self.t_onset is None and avail < self.onset:
                    self.t_onset = t
                st = self.hog_state()
                if st == "populated" and self.t_seen is None:
                    self.t_seen = t
                elif st != "populated" and self.t_seen is not None:
                    self.t_dead = t
                    return
                time.sleep(SAMPLE_S)
        finally:
            os.close(fd)


# -- the freeze ------------------------------------------------------------------------

WATCH_STEP_S = 0.25
PSI_FILES = {"memory": "/proc/pressure/memory", "io": "/proc/pressure/io",
             "system.slice memory": f"{CGROUP_ROOT}/{SLICE}/memory.pressure"}


def psi_avg10(text: str) -> dict[str, float]:
    """``{"some": avg10, "full": avg10}`` from a PSI file's text."""
    out = {}
    for ln in text.splitlines():
        kind, _, rest = ln.partition(" ")
        for f in rest.split():
            k, _, v = f.partition("=")
            if k == "avg10":
                try:
                    out[kind] = float(v)
                except ValueError:
                    pass
    return out


def freeze_collapse(series: list[tuple[float, int]], baseline_ops_s: float | None, held_s: float | None,
                    kill_s: float | None, end_s: float) -> tuple[float | None, float | None, int]:
    """``(collapse_s, relief_s, dips)``: the freeze's collapse and relief
    (``throughput.collapse_and_relief``), where a relief that came while
    the hog lived and had not yet filled all it holds was a dip in the fill
    (on two emulated CPUs the hog's faults alone may halve the service's
    rate for a second): the collapse is looked for again after it, and
    ``dips`` counts them."""
    if not baseline_ops_s:
        return None, None, 0
    t_from, dips = 0.0, 0
    while True:
        collapse, relief = throughput.collapse_and_relief(series, baseline_ops_s, t_from, end_s)
        if collapse is None or relief is None:
            return collapse, relief, dips
        if relief >= min(x for x in (kill_s, held_s, float("inf")) if x is not None):
            return collapse, relief, dips
        dips += 1
        t_from = relief


def freeze_figures(series: list[tuple[float, int]], baseline_ops_s: float | None, held_s: float | None,
                   kill_s: float | None, end_s: float) -> dict[str, Any]:
    """The freeze's headline for one run from the service's reports
    (``[(seconds since the hog started, ops so far)]``), with
    ``throughput.headline``: the collapse (under half the baseline for a
    second), the relief (back at half or more for a second) up to
    ``end_s``, the kill (the hog's cgroup empty) and the service's rate
    from the collapse to the kill (or to ``end_s``) as a share of its
    baseline. Times in seconds since the hog started; None for what did
    not happen."""
    out: dict[str, Any] = {"baseline_ops_s": None if baseline_ops_s is None else round(baseline_ops_s, 1),
                           "held_s": held_s, "kill_s": kill_s, "end_s": round(end_s, 3)}
    collapse, relief, dips = freeze_collapse(series, baseline_ops_s, held_s, kill_s, end_s)

    def gap(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None
    out.update(collapse_s=collapse, relief_s=relief, collapse_to_relief_s=gap(collapse, relief),
               collapse_to_kill_s=gap(collapse, kill_s), dips=dips)
    share = None
    if collapse is not None and baseline_ops_s:
        until = kill_s if kill_s is not None and kill_s > collapse else end_s
        r = throughput.rate(series, collapse, until)
        share = None if r is None else round(r / baseline_ops_s, 4)
    out["share_after_collapse"] = share
    # "never": collapsed, and no relief up to the end of the window
    out["never"] = collapse is not None and out["relief_s"] is None
    return out


class DetectorTrace:
    """oomkiller's thrash detector (core/thrash.py) with the shipped limits,
    fed the host snapshots the harness takes itself every ``WATCH_STEP_S``,
    whoever the contender: when it would fire, and which of its figures held
    it back until then."""

    def __init__(self, t_start: float) -> None:
        from oomkiller.cgroupfs import Cgroupfs
        from oomkiller.config import Config
        from oomkiller.core import thrash
        from oomkiller.core.state import thrash_limits
        from oomkiller.domain import Domain
        from oomkiller.procfs import Procfs
        self.thrash = thrash
        procfs = Procfs("/proc")
        self.domain = Domain("host", procfs, Cgroupfs(CGROUP_ROOT, procfs))
        config = Config()
        self.limits = thrash_limits(config)
        self.arm_line = config.arm_line_bytes
        self.state = thrash.ThrashState()
        self.t_start = t_start
        self.trace: list[list[Any]] = []
        self.io: list[tuple[float, int]] = []
        self.ws: list[tuple[float, dict[str, int]]] = []

    def take(self, now: float) -> None:
        try:
            snap = self.domain.snapshot(int(now * 1e6))
        except (OSError, ValueError, KeyError):
            return
        self.state, figs = self.thrash.observe(self.state, snap, self.limits, self.arm_line(snap.total_bytes))
        cache_pm = snap.file_lru_bytes * 10_000 // snap.total_bytes if snap.total_bytes > 0 else -1
        # I/O stall ("some") over the last second, beside the memory stall
        # the detector reads: re-reads of pages evicted before they were
        # activated stall on I/O, not on memory.
        io_pm = None
        try:
            io = read_psi_totals("/proc/pressure/io").get("some", -1)
        except (OSError, ValueError):
            io = -1
        if io >= 0:
            self.io.append((now, io))
            while len(self.io) >= 2 and now - self.io[1][0] >= 1.0:
                self.io.pop(0)
            t0, io0 = self.io[0]
            if now - t0 >= 0.5:
                io_pm = int((io - io0) * 10_000 / ((now - t0) * 1e6))
        self.trace.append([round(now - self.t_start, 2), figs.state, figs.refault_permyriad_per_s,
                           figs.stall_permyriad, cache_pm, figs.free_permyriad, figs.episode_usec // 1000, io_pm,
                           *self.workingset(now)])

    def workingset(self, now: float) -> tuple[int | None, int | None]:
        """Of the file refaults over the last second, the shares (permyriad)
        the kernel activated (their refault distance within the working set)
        and restored (active before their eviction: a memory stall)."""
        try:
            v = read_keyed("/proc/vmstat")
        except (OSError, ValueError):
            return None, None
        keys = ("workingset_refault_file", "workingset_activate_file", "workingset_restore_file")
        if not all(k in v for k in keys):
            return None, None
        self.ws.append((now, {k: v[k] for k in keys}))
        while len(self.ws) >= 2 and now - self.ws[1][0] >= 1.0:
            self.ws.pop(0)
        t0, w0 = self.ws[0]
        n = self.ws[-1][1]["workingset_refault_file"] - w0["workingset_refault_file"]
        if now - t0 < 0.5 or n <= 0:
            return None, None
        return tuple((self.ws[-1][1][k] - w0[k]) * 10_000 // n for k in keys[1:])

    def summary(self, until_s: float | None) -> dict[str, Any]:
        return detector_summary(self.trace, until_s)


# A trace row: [seconds since the hog started, state, refaults permyriad/s,
# memory stall permyriad, file cache permyriad of MemTotal, free permyriad,
# episode ms, I/O stall permyriad over the last second, and of the refaults
# over the last second the shares activated and restored, permyriad]
TRACE_KEYS = ("t_s", "state", "refault_pm_s", "stall_pm", "cache_pm", "free_pm", "episode_ms", "io_stall_pm",
              "activate_pm", "restore_pm")


def detector_summary(trace: list[list[Any]], until_s: float | None) -> dict[str, Any]:
    """From a detector trace (up to ``until_s``, the hog's death, if given):
    the first sample that fired, the first episode's start, and the share of
    the samples after the hog started that held each figure to its line."""
    rows = [dict(zip(TRACE_KEYS, r)) for r in trace if until_s is None or r[0] <= until_s]
    after = [r for r in rows if r["t_s"] >= 0]
    fired = next((r["t_s"] for r in after if r["state"] == "thrashing"), None)
    episode = next((r["t_s"] for r in after if r["state"] in ("episode", "thrashing")), None)
    judged = [r for r in after if r["state"] in ("episode", "thrashing") and r["episode_ms"] >= 1000]

    def share(pred) -> float | None:
        return round(sum(1 for r in judged if pred(r)) / len(judged), 3) if judged else None

    from oomkiller.core.thrash import MAX_CACHE_PERMYRIAD, MAX_FREE_PERMYRIAD
    limits = DETECTOR_LIMITS
    return {"fired_s": fired, "first_episode_s": episode, "samples": len(after), "sustained_samples": len(judged),
            "stall_under_limit": share(lambda r: r["stall_pm"] is not None and r["stall_pm"] < limits["stall_pm"]),
            "cache_over_half": share(lambda r: r["cache_pm"] > MAX_CACHE_PERMYRIAD),
            "free_over_half": share(lambda r: r["free_pm"] > MAX_FREE_PERMYRIAD),
            "median_refault_pm_s": median([r["refault_pm_s"] for r in after if r["state"] != "calm"]),
            "median_stall_pm": median([r["stall_pm"] for r in judged]),
            "median_io_stall_pm": median([r["io_stall_pm"] for r in judged]),
            # the workingset shares while in an episode (trace rows of older runs lack them)
            "median_activate_pm": median([r.get("activate_pm") for r in after if r["state"] != "calm"]),
            "median_restore_pm": median([r.get("restore_pm") for r in after if r["state"] != "calm"]),
            "trace": trace}


def _detector_limits() -> dict[str, int]:
    from oomkiller.config import Config
    c = Config()
    return {"refault_pm_s": c.thrash_refault_limit_permyriad, "stall_pm": c.thrash_stall_limit_permyriad}


DETECTOR_LIMITS = _detector_limits()


class FreezeWatch:
    """The freeze's window, from the hog's start: until ``FREEZE_WINDOW_S``
    after it holds all it was told to (its ``capped`` line), or, once it
    died, until the service is relieved, it never collapsed, or
    ``FREEZE_AFTER_DEATH_S`` passed. Every ``WATCH_STEP_S`` it also takes
    MemAvailable and the PSI averages (the figures the PSI-based contenders
    act on)."""

    def __init__(self, sampler: Sampler, hog_out: str, svc_out: str, t_start: float) -> None:
        self.sampler = sampler
        self.hog_out = hog_out
        self.svc_out = svc_out
        self.t_start = t_start
        self.t_held: float | None = None
        self.available: list[tuple[float, int]] = []
        self.psi_max: dict[str, float] = {}
        self.detector = DetectorTrace(t_start)
        self.t_end: float | None = None     # when ``run`` returned

    def series(self, ops: list[tuple[int, int]]) -> list[tuple[float, int]]:
        return [(round(t / 1e6 - self.t_start, 3), n) for t, n in ops]

    def baseline(self, series: list[tuple[float, int]]) -> float | None:
        return throughput.rate(series, -FREEZE_BASELINE_S, 0.0)

    def take(self, now: float) -> None:
        if self.t_held is None:
            for ln in read(self.hog_out).splitlines():
                f = ln.split()
                if len(f) == 3 and f[0] == "capped" and f[2].isdigit():
                    self.t_held = int(f[2]) / 1e6
        self.available.append((now, meminfo()["MemAvailable"]))
        self.detector.take(now)
        for name, path in PSI_FILES.items():
            try:
                avg = psi_avg10(read_text(path))
            except OSError:
                continue
            for kind, v in avg.items():
                k = f"{name} {kind}"
                self.psi_max[k] = max(self.psi_max.get(k, 0.0), v)

    def settled(self, now: float, dead: float) -> bool:
        """After the hog's death: the service relieved (and held there for a
        second, as the headline wants), or it never collapsed."""
        series = self.series(parse_ops(read(self.svc_out).splitlines()))
        base = self.baseline(series)
        if not base or not series:
            return False
        held = None if self.t_held is None else self.t_held - self.t_start
        collapse, relief, _ = freeze_collapse(series, base, held, dead - self.t_start, series[-1][0])
        if relief is not None:
            return series[-1][0] >= relief + throughput.HOLD_S
        return collapse is None and now - dead >= 3 * throughput.HOLD_S

    def run(self, deadline: float) -> bool:
        """Watch; True if the window closed with the hog alive."""
        while True:
            now = time.monotonic()
            self.take(now)
            dead = self.sampler.t_dead
            if dead is not None:
                if now >= dead + FREEZE_AFTER_DEATH_S or self.settled(now, dead):
                    self.t_end = now
                    return False
            elif (self.t_held is not None and now >= self.t_held + FREEZE_WINDOW_S) or now >= deadline:
                self.t_end = now
                return True
            time.sleep(WATCH_STEP_S)

    def end_s(self, series: list[tuple[float, int]], svc_alive: bool) -> float:
        """Where the series ends, in seconds since the hog started: when the
        watch ended if the service still ran then (a silence up to it is a
        freeze, ``throughput.rates``), else at its last report (what came
        after is its death, ``throughput.observed_until``)."""
        end = series[-1][0] if series else 0.0
        if svc_alive and series and self.t_end is not None:
            end = max(end, round(self.t_end - self.t_start, 3))
        return end

    def figures(self, ops: list[tuple[int, int]], t_dead: float | None, mem_total: int,
                svc_alive: bool = True) -> dict[str, Any]:
        series = self.series(ops)
        held_s = None if self.t_held is None else round(self.t_held - self.t_start, 3)
        kill_s = None if t_dead is None else round(t_dead - self.t_start, 3)
        end_s = self.end_s(series, svc_alive)
        if held_s is not None:
            end_s = min(end_s, held_s + FREEZE_WINDOW_S)
        out = freeze_figures(series, self.baseline(series), held_s, kill_s, end_s)
        # MemAvailable while the hog held (to its death, or the window's end)
        hold = [a for t, a in self.available
                if self.t_held is not None and self.t_held <= t and (t_dead is None or t < t_dead)]
        out["held_available_pct"] = ({"min": round(100 * min(hold) / mem_total, 1),
                                      "median": round(100 * median(hold) / mem_total, 1)} if hold else None)
        out["psi_avg10_max"] = {k: round(v, 2) for k, v in sorted(self.psi_max.items())}
        out["detector"] = self.detector.summary(None if t_dead is None else kill_s)
        out["series"] = [[t, n] for t, n in series if t >= -FREEZE_BASELINE_S]
        return out


class HealthyWatch(FreezeWatch):
    """A healthy load's window: ``HEALTHY_WINDOW_S`` from its start, ended
    at once if it dies (a false kill); the same figures as the freeze's."""

    def run(self, deadline: float) -> bool:
        """Watch; True if the load lived through the window (right)."""
        while True:
            now = time.monotonic()
            self.take(now)
            if self.sampler.t_dead is not None or now >= deadline:
                self.t_end = now
                return self.sampler.t_dead is None
            time.sleep(WATCH_STEP_S)

    def figures(self, ops: list[tuple[int, int]], t_dead: float | None, mem_total: int,
                svc_alive: bool = True) -> dict[str, Any]:
        series = self.series(ops)
        base = self.baseline(series)
        end_s = self.end_s(series, svc_alive)
        # over the whole window: a silence before its end did no work
        pts = [p for p in series if 0.0 <= p[0] <= end_s]
        rate = ((pts[-1][1] - pts[0][1]) / (end_s - pts[0][0])
                if len(pts) >= 2 and end_s > pts[0][0] else None)
        avail = [a for t, a in self.available if t >= self.t_start]
        det = self.detector.summary(None)
        return {"baseline_ops_s": None if base is None else round(base, 1),
                "service_share": round(rate / base, 4) if rate is not None and base else None,
                "kill_s": None if t_dead is None else round(t_dead - self.t_start, 3),
                "min_available_pct": round(100 * min(avail) / mem_total, 1) if avail else None,
                "psi_avg10_max": {k: round(v, 2) for k, v in sorted(self.psi_max.items())},
                "detector": det,
                "max_refault_pm_s": max((r[2] for r in det["trace"] if r[0] >= 0), default=None),
                "max_stall_pm": max((r[3] for r in det["trace"] if r[0] >= 0 and r[3] is not None), default=None)}


class HostBench:
    def __init__(self, a: argparse.Namespace, scens: list[Scenario], conts: list[Contender], runs: int) -> None:
        self.a = a
        self.scens = scens
        self.conts = conts
        self.runs = runs
        self.out = os.path.abspath(a.out)
        self.records: list[dict[str, Any]] = []
        self.starts: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        self.n = 0
        self.idle_available = 0
        self.mem_total = meminfo()["MemTotal"]
        self.started = time.time()
        self.versions = versions()

    # ---- the whole matrix
    def run(self) -> int:
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(RUN_DIR, exist_ok=True)
        os.makedirs(DATA_DIR, exist_ok=True)
        lock_self()
        self.service_file = os.path.join(DATA_DIR, "service.dat")
        make_file(self.service_file, SERVICE_FILE_BYTES)
        self.freeze_file = os.path.join(DATA_DIR, "freeze.dat")
        if any(s.big_working_set for s in self.scens):
            make_file(self.freeze_file, FREEZE_FILE_BYTES)
        self.fits_file = os.path.join(DATA_DIR, "fits.dat")
        self.stream_file = os.path.join(DATA_DIR, "stream.dat")
        if any(s.healthy for s in self.scens):
            make_file(self.fits_file, HEALTHY_FITS_BYTES)
        if any(s.healthy.startswith("stream") for s in self.scens):
            make_file(self.stream_file, self.mem_total)
        for c in self.conts:
            c.keep_dir = self.out
        every = contenders()
        units = sorted({u for c in every.values() if c.unit for u in (c.unit, *c.also_stop)})
        for u in units:
            sh("systemctl", "stop", u)
        self.notes += oomd_shipped_check()
        total = len(self.scens) * len(self.conts) * self.runs
        print(f"oomkiller bench --host-level: {len(self.scens)} scenarios x {len(self.conts)} contenders x "
              f"{self.runs} run(s), MemTotal {self.mem_total // MIB} MiB, onset at MemAvailable < "
              f"{ONSET_PERCENT}% -> {self.out}", flush=True)
        interrupted = False
        try:
            for c in self.conts:
                why = c.unavailable()
                if why:
                    self.unavailable[c.key] = why
                    print(f"  not run: {c.key}: {why}", flush=True)
                    continue
                try:
                    self.starts[c.key] = c.start()
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    self.unavailable[c.key] = f"did not start: {e}"
                    print(f"  not run: {c.key}: did not start: {str(e)[:2000]}", flush=True)
                    c.stop()
                    continue
                # What the machine has free with this contender up and idle:
                # each run starts when it is back.
                self.idle_available = meminfo()["MemAvailable"]
                self.starts[c.key]["idle_available_mib"] = self.idle_available // MIB
                print(f"  {c.key}: up in {self.starts[c.key].get('start_s', 0)} s, MemAvailable "
                      f"{self.idle_available // MIB} MiB", flush=True)
                if "watching" in self.starts[c.key]:
                    self.notes.append(f"{c.label}, oomctl dump after its start: {self.starts[c.key]['watching']}")
                    print(f"  {c.key}: {self.starts[c.key]['watching']}", flush=True)
                try:
                    for rnd in range(self.runs):
                        for s in self.scens:
                            self.n += 1
                            rec = self.one(c, s, rnd)
                            self.records.append(rec)
                            print(f"[{self.n:2d}/{total}] {line(rec)}", flush=True)
                            self.write()
                finally:
                    try:
                        c.stop()
                    except subprocess.TimeoutExpired as e:
                        self.notes.append(f"{c.key}: stopping it timed out ({e})")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.write()
            stop_leftover_units()
        if interrupted:
            return 130
        return 1 if any(r.get("error") for r in self.records) else 0

    # ---- one run
    def one(self, c: Contender, s: Scenario, rnd: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"scenario": s.key, "contender": c.key, "run": rnd}
        tag = f"{self.n:02d}"
        svc = f"{UNIT_PREFIX}svc-{tag}.service"
        hog = f"{UNIT_PREFIX}hog-{tag}.service"
        svc_out = os.path.join(RUN_DIR, f"svc-{tag}.out")
        hog_out = os.path.join(RUN_DIR, f"hog-{tag}.out")
        t_wall0 = time.monotonic()
        sampler = None
        try:
            rec["settle_s"] = round(settle(self.idle_available), 2)
            unlink(svc_out)
            unlink(hog_out)
            if s.mapped:
                work = ["mapped", "--file", self.freeze_file if s.big_working_set else self.fits_file,
                        "--threads", str(FREEZE_THREADS)]
            else:
                work = ["service", "--hold", str(SERVICE_HOLD_BYTES), "--file", self.service_file, "--direct"]
            throttle = ([f"--property=IOReadBandwidthMax={self.freeze_file} {s.read_mib_s}M"]
                        if s.read_mib_s else [])
            sh("systemd-run", "--quiet", f"--unit={svc}", "--property=Restart=no", "--property=Type=exec",
               "--property=ManagedOOMPreference=avoid", f"--property=StandardOutput=file:{svc_out}", *throttle,
               "--", sys.executable, "-S", WORKLOAD, *work, "--name", SERVICE_NAME, check=True)
            t_ready0 = time.monotonic()
            if not wait_for(lambda: "ready" in read(svc_out), FREEZE_READY_S if s.mapped else 60, 0.1):
                raise RuntimeError("the protected service did not get ready")
            if s.mapped:
                rec["service_ready_s"] = round(time.monotonic() - t_ready0, 1)
            baseline_s = FREEZE_BASELINE_S if s.mapped else BASELINE_S
            time.sleep(baseline_s)
            before = {"oom": vmstat_oom_kills(), "svc": show(svc, "MainPID")["MainPID"], "killer": c.state(),
                      "system": {u: show(u, "MainPID")["MainPID"] for u in SYSTEM_SERVICES}}
            m = meminfo()
            argv = s.hog_argv(self.mem_total, m["MemAvailable"], self.stream_file)
            rec["hog_prefill_mib"] = next((int(argv[i + 1]) for i, x in enumerate(argv[:-1])
                                           if x in ("--prefill", "--hold", "--bytes")), 0) // MIB
            rec["available_at_start_mib"] = m["MemAvailable"] // MIB
            sampler = Sampler(self.mem_total, f"{CGROUP_ROOT}/{SLICE}/{hog}")
            since = time.time()
            t_start = time.monotonic()
            sampler.start()
            # The freeze's hog runs at nice 19: on the guest's two emulated
            # CPUs a hog filling at full speed beside the service halves its
            # rate by taking the CPU alone, before memory is short; the
            # collapse should be the squeeze's doing.
            hog_props = [f"--property=StandardOutput=file:{hog_out}", "--property=Nice=19"] if s.freeze \
                else [f"--property=StandardOutput=file:{hog_out}"] if s.healthy else ["--property=StandardOutput=null"]
            sh("systemd-run", "--quiet", f"--unit={hog}", "--property=Restart=no", "--property=Type=exec",
               *hog_props, "--", sys.executable, "-S", WORKLOAD, *argv, check=True)
            watch = None
            if s.mapped:
                watch = (HealthyWatch if s.healthy else FreezeWatch)(sampler, hog_out, svc_out, t_start)
                timed_out = watch.run(t_start + s.timeout_s)
            else:
                sampler.join(s.timeout_s)
                timed_out = sampler.is_alive()
            if timed_out:
                sh("systemctl", "kill", "--signal=SIGKILL", hog)
                sampler.join(10)
            sampler.done.set()
            time.sleep(AFTER_S)
            res = show(hog, "Result", "ExecMainCode", "ExecMainStatus")
            after_killer = c.state()
            svc_state = show(svc, "ActiveState", "MainPID")
            oom = vmstat_oom_kills() - before["oom"]
            lines = c.kill_lines(since) if c.unit else []
            rec.update(self.judge(c, res, oom, timed_out, lines, before, after_killer, svc_state))
            rec["min_available_mib"] = (sampler.min_available or 0) // MIB
            rec["samples"] = sampler.samples
            t_dead = sampler.t_dead
            if t_dead is not None and not timed_out:
                rec["start_to_death_ms"] = round((t_dead - t_start) * 1000, 1)
                if sampler.t_onset is not None:
                    rec["onset_to_death_ms"] = round((t_dead - sampler.t_onset) * 1000, 1)
                else:
                    rec["onset_to_death_ms"] = None
                    rec["died_before_onset"] = True
            ops = parse_ops(read(svc_out).splitlines())
            t0_us = int(t_start * 1e6)
            base = ops_rate(ops, t0_us - int(baseline_s * 1e6), t0_us)
            during = ops_rate(ops, t0_us, int((t_dead or time.monotonic()) * 1e6))
            rec["service_ops_s"] = {"baseline": base and round(base, 1), "during": during and round(during, 1)}
            rec["service_work"] = round(during / base, 3) if base and during is not None else None
            if watch is not None:
                rec["healthy" if s.healthy else "freeze"] = watch.figures(
                    ops, None if timed_out else t_dead, self.mem_total,
                    svc_alive=svc_state.get("ActiveState") == "active")
            if s.healthy:
                rec.update(healthy_verdict(rec, c.key if c.unit else None, timed_out, bool(lines), oom))
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError, OSError) as e:
            rec["error"] = str(e)[-1000:]
        finally:
            if sampler:
                sampler.done.set()
            for u in (hog, svc):
                sh("systemctl", "stop", u)
                sh("systemctl", "reset-failed", u)
            unlink(svc_out)
            unlink(hog_out)
        rec["wall_s"] = round(time.monotonic() - t_wall0, 1)
        return rec

    def judge(self, c: Contender, res: dict, oom: int, timed_out: bool, lines: list[str], before: dict,
              after_killer: dict, svc_state: dict) -> dict[str, Any]:
        out: dict[str, Any] = {"hog_result": res.get("Result"), "hog_code": res.get("ExecMainCode"),
                               "hog_status": res.get("ExecMainStatus"), "kernel_oom_kills": oom,
                               "kill_lines": lines[:5], "timed_out": timed_out}
        out["killed_by"] = who_killed(c.key if c.unit else None, out)
        system = {u: show(u, "MainPID")["MainPID"] for u in SYSTEM_SERVICES}
        out.update(verdict(
            timed_out=timed_out,
            service_lived=svc_state.get("ActiveState") == "active" and svc_state.get("MainPID") == before["svc"],
            killer_lived=(after_killer["alive"] and after_killer["pid"] == before["killer"]["pid"]
                          and after_killer["restarts"] == before["killer"]["restarts"]),
            system_changed=[u for u in SYSTEM_SERVICES if system[u] != before["system"][u]],
            contender=c.key))
        return out

    # ---- output
    def write(self) -> None:
        summary = summarize(self.records, [s.key for s in self.scens], [c.key for c in self.conts])
        meta = {
            "command": "oomkiller bench --host-level " + " ".join(f"--{k} {v}" for k, v in (
                ("out", self.a.out), ("runs", self.runs),
                ("scenarios", ",".join(s.key for s in self.scens)),
                ("contenders", ",".join(c.key for c in self.conts)))),
            "started": stamp(self.started),
            "duration_s": round(time.time() - self.started, 1),
            "kernel": f"Linux {platform.release()}", "cpus": os.cpu_count(),
            "mem_total_mib": self.mem_total // MIB, "swap_total_mib": meminfo().get("SwapTotal", 0) // MIB,
            "onset_percent": ONSET_PERCENT, "runs": self.runs, "versions": self.versions,
            "unavailable": self.unavailable, "notes": self.notes, "contender_starts": self.starts,
            "emulated": os.environ.get("OOMK_VM_GUEST") == "1",
        }
        conts = [{"key": c.key, "label": c.label, "describe": c.describe()} for c in self.conts]
        scens = [{"key": s.key, "title": s.title, "describe": s.describe()} for s in self.scens]
        write_results(self.out, markdown(meta, scens, conts, summary),
                      {"meta": meta, "scenarios": scens, "contenders": conts, "summary": summary,
                       "runs": self.records})


def verdict(*, timed_out: bool, service_lived: bool, killer_lived: bool, system_changed: list[str],
            contender: str) -> dict[str, Any]:
    """Right or wrong, whatever the scenario: the hog died before the
    window closed (the harness ends it then: nobody did), and the protected
    service, the contender and the system's own services kept their
    processes. In the freeze the kernel alone stays wrong: the hog holds,
    nobody ends it."""
    collateral = list(system_changed)
    if not service_lived:
        collateral.insert(0, "protected service")
    if not killer_lived:
        collateral.append(f"{contender} itself")
    return {"collateral": collateral, "right": not timed_out and not collateral}


def healthy_verdict(rec: dict, contender: str | None, lived: bool, contender_killed: bool,
                    oom: int) -> dict[str, Any]:
    """A healthy load's run: right when nobody killed anything and nothing
    else died. A kill counts whenever it came: the contender's kill at the
    window's last moment is logged although the load lived the window."""
    if oom:
        killed = "kernel"
    elif contender_killed:
        killed = contender or "unknown (a signal)"
    elif not lived:
        killed = rec.get("killed_by") or "unknown"
    else:
        killed = "nobody"
    return {"killed_by": killed, "right": killed == "nobody" and not rec.get("collateral")}


def who_killed(contender: str | None, r: dict) -> str:
    """The kernel if its OOM killer acted; else the contender if the hog died
    of a signal or the contender logged a kill (the hog never exits on its
    own). A SIGTERM death is a clean exit to systemd (``Result=success``,
    and ``systemctl show`` then gives status 0), so the contender's log line
    decides there."""
    if r.get("timed_out") or r.get("killed_by") == "nobody (timeout)":
        return "nobody (timeout)"
    if r.get("kernel_oom_kills", 0) > 0:
        return "kernel"
    by_signal = (r.get("hog_result") == "signal" or r.get("hog_code") == "2"
                 or str(r.get("hog_status")) in ("9", "15") or bool(r.get("kill_lines")))
    if by_signal:
        return contender or "unknown (a signal)"
    return f"unknown ({r.get('hog_result')})"


def rerender(path: str, out: str) -> int:
    """results.md again from a results.json, with who killed judged again
    from what each run recorded."""
    data = load_results(path)
    units = {c["key"]: c["key"] != "kernel" for c in data["contenders"]}
    for r in data["runs"]:
        if "error" not in r:
            r["killed_by"] = who_killed(r["contender"] if units.get(r["contender"]) else None, r)
        f = r.get("freeze")
        if f and f.get("series"):
            f.update(freeze_figures([tuple(p) for p in f["series"]], f.get("baseline_ops_s"), f.get("held_s"),
                                    f.get("kill_s"), f["end_s"]))
    data["summary"] = summarize(data["runs"], [s["key"] for s in data["scenarios"]],
                                [c["key"] for c in data["contenders"]])
    write_results(out, markdown(data["meta"], data["scenarios"], data["contenders"], data["summary"]), data)
    print(f"oomkiller bench --host-level: wrote {os.path.join(out, 'results.json')}, results.md")
    return 0


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def settle(idle_available: int) -> float:
    """Wait until the machine has its memory back from the last run (what
    was available when the contender had just started, less 32 MiB)."""
    t0 = time.monotonic()
    wait_for(lambda: meminfo()["MemAvailable"] > idle_available - 32 * MIB, 30, 0.2)
    return time.monotonic() - t0


def stop_leftover_units() -> None:
    out = sh("systemctl", "list-units", "--all", "--plain", "--no-legend", f"{UNIT_PREFIX}*").stdout
    for ln in out.splitlines():
        if ln.split():
            sh("systemctl", "stop", ln.split()[0])
            sh("systemctl", "reset-failed", ln.split()[0])


def lock_self() -> None:
    """Keep the harness's own pages in memory and itself out of every
    killer's choice, so its samples are not late because of the pressure."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass
    try:
        ctypes.CDLL(None, use_errno=True).mlockall(1 | 2 | 4)     # MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT
    except (OSError, AttributeError):
        pass


def oomd_shipped_check() -> list[str]:
    """Does oomd start as Debian ships it (/etc/default/oomd) on this machine?"""
    if not shutil.which("oomd"):
        return []
    try:
        p = subprocess.run(["oomd", *OOMD_SHIPPED_OPTS.split()], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return ["oomd with /etc/default/oomd's options as shipped (--cgroup-fs /sys/fs/cgroup/unified) "
                "was still running after 5 s here; both oomd rows run without that option"]
    text = (p.stderr or p.stdout).strip().splitlines()
    return [f"oomd with /etc/default/oomd's options as shipped ({OOMD_SHIPPED_OPTS}) exits with status "
            f"{p.returncode}: {text[-1] if text else ''}; both oomd rows run without --cgroup-fs"]


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("earlyoom", "nohang", "oomd", "systemd-oomd", "systemd"):
        try:
            p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True,
                               timeout=10)
            if p.returncode == 0:
                out[pkg] = p.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    from oomkiller import __version__
    out["oomkiller"] = __version__
    return out


# -- summary and table ---------------------------------------------------------------

def summarize(records: list[dict], scens: list[str], conts: list[str]) -> dict[str, dict[str, dict]]:
    """Per scenario and contender: who killed, right runs, medians, and the
    ratios of the median onset-to-death time to the kernel's and oomkiller's."""
    by = group(records, "scenario", "contender")
    out: dict[str, dict[str, dict]] = {}
    for s in scens:
        cell: dict[str, dict] = {}
        for c in conts:
            if (s, c) not in by:
                continue
            rs, errs = split(by[s, c])
            cell[c] = {"runs": len(rs), "errors": len(errs), "killed_by": tally(r["killed_by"] for r in rs),
                       "right": sum(1 for r in rs if r.get("right")),
                       "before_onset": sum(1 for r in rs if r.get("died_before_onset")),
                       "onset_to_death_ms": median([r.get("onset_to_death_ms") for r in rs]),
                       "start_to_death_ms": median([r.get("start_to_death_ms") for r in rs]),
                       "service_work": median([r.get("service_work") for r in rs]),
                       "min_available_mib": median([r.get("min_available_mib") for r in rs])}
            if any(r.get("freeze") for r in rs):
                cell[c]["freeze"] = [freeze_run(r) for r in rs]
            if any(r.get("healthy") for r in rs):
                cell[c]["healthy"] = [healthy_run(r) for r in rs]
        for ref in ("kernel", "oomkiller"):
            base = (cell.get(ref) or {}).get("onset_to_death_ms")
            for v in cell.values():
                t = v["onset_to_death_ms"]
                v[f"vs_{ref}"] = round(t / base, 3) if t is not None and base else None
        out[s] = cell
    return out


def freeze_run(r: dict) -> dict[str, Any]:
    """One freeze run's row: who killed and the headline's figures."""
    f = r.get("freeze") or {}
    keys = ("collapse_s", "kill_s", "relief_s", "collapse_to_relief_s", "collapse_to_kill_s", "never", "dips",
            "share_after_collapse", "held_s", "held_available_pct", "psi_avg10_max")
    return {"run": r.get("run"), "killed_by": r.get("killed_by"), "right": r.get("right"),
            "collateral": r.get("collateral"), "kill_line": (r.get("kill_lines") or [None])[0],
            **{k: f.get(k) for k in keys},
            "detector": {k: v for k, v in (f.get("detector") or {}).items() if k != "trace"}}


def healthy_run(r: dict) -> dict[str, Any]:
    """One healthy run's row: who killed (nobody is right) and the signals."""
    h = r.get("healthy") or {}
    det = h.get("detector") or {}
    return {"run": r.get("run"), "killed_by": r.get("killed_by"), "right": r.get("right"),
            "collateral": r.get("collateral"), "kill_line": (r.get("kill_lines") or [None])[0],
            **{k: h.get(k) for k in ("kill_s", "service_share", "min_available_pct", "psi_avg10_max",
                                     "max_refault_pm_s", "max_stall_pm")},
            "detector": {k: v for k, v in det.items() if k != "trace"}}


def healthy_rows(cell: dict, order: list[str], labels: dict[str, str]) -> list[list[str]]:
    """The false-positive table: per contender, who killed, and per run what
    the load did to the signals and what the detector (shipped limits, on
    the harness's snapshots) made of them."""
    def s(v, fmt="{:.1f}"):
        return md.DASH if v is None else fmt.format(v)
    rows = []
    for k in order:
        v = cell.get(k)
        if not v or not v.get("healthy"):
            continue
        runs = v["healthy"]
        who = ", ".join(f"{'nobody' if w == 'nobody (timeout)' else w} ×{n}" if n > 1 else
                        ('nobody' if w == 'nobody (timeout)' else w) for w, n in sorted(v["killed_by"].items()))
        if v["errors"]:
            who += f" ({v['errors']} run(s) failed)"
        rows.append([labels.get(k, k), who or md.DASH, f"{v['right']}/{v['runs']}",
                     _each(runs, lambda r: s(r.get("min_available_pct"), "{:.0f}")),
                     _each(runs, lambda r: s((r.get("psi_avg10_max") or {}).get("memory some"))),
                     _each(runs, lambda r: s((r.get("psi_avg10_max") or {}).get("io some"))),
                     _each(runs, lambda r: s(None if r.get("max_refault_pm_s") is None
                                             else r["max_refault_pm_s"] / 100, "{:.0f}")),
                     _each(runs, lambda r: s(None if r.get("max_stall_pm") is None else r["max_stall_pm"] / 100)),
                     _each(runs, lambda r: s((r.get("detector") or {}).get("fired_s"), "{:.2f}")),
                     _each(runs, lambda r: md.pct(r.get("service_share")))])
    return rows


HEALTHY_TEXT = ("*Right*: the load lived the whole window and nothing else died (a kill by anyone, the kernel "
                "too, is wrong). *MemAvailable*: the lowest in the window, % of MemTotal. PSI: the highest "
                "avg10 (%) of the host's memory and I/O `some`. *Refaults* and *memory stall*: the highest the "
                "thrash detector (shipped limits, fed the harness's own snapshots every 0.25 s, whoever the "
                "contender) saw, %/s of the file cache and % of its last second; *fired*: when it would have "
                "fired (— : never). *Service*: the protected service's reads over the window as a share of its "
                "baseline.")


def _freeze_cells(cell: dict, order: list[str]):
    """(contender, its cell) of each contender with freeze runs, in ``order``."""
    for k in order:
        v = cell.get(k)
        if v and v.get("freeze"):
            yield k, v


def _each(runs, fn) -> str:
    """Each run's figure, comma-separated."""
    return ", ".join(fn(r) for r in runs)


def freeze_rows(cell: dict, order: list[str], labels: dict[str, str]) -> list[list[str]]:
    """The freeze's table: per contender, each run's figures, comma-separated."""
    def s(v):
        return md.DASH if v is None else f"{v:.2f}"
    each = _each

    def relief(r):
        if r.get("collapse_to_relief_s") is not None:
            return s(r["collapse_to_relief_s"])
        return "never" if r.get("never") else md.DASH

    def avail(r):
        a = r.get("held_available_pct")
        return md.DASH if not a else f"{a['min']:.0f}"

    rows = []
    for k, v in _freeze_cells(cell, order):
        runs = v["freeze"]
        who = ", ".join(f"{w} ×{n}" if n > 1 else w for w, n in sorted(v["killed_by"].items())) or md.DASH
        if v["errors"]:
            who += f" ({v['errors']} run(s) failed)"
        rows.append([labels.get(k, k), who, f"{v['right']}/{v['runs']}", each(runs, lambda r: s(r["collapse_s"])),
                     each(runs, lambda r: s(r["kill_s"])), each(runs, lambda r: s(r["relief_s"])),
                     each(runs, relief), each(runs, lambda r: md.pct(r["share_after_collapse"])),
                     each(runs, avail)])
    return rows


def freeze_signal_rows(cell: dict, order: list[str], labels: dict[str, str]) -> list[list[str]]:
    """What the PSI-based contenders and oomkiller's thrash detector saw, per
    run: the highest PSI avg10 of the host's memory and I/O and of
    system.slice's memory, and when the detector (shipped limits, on the
    harness's snapshots) started an episode and fired, with its medians."""
    def s(v, fmt="{:.1f}"):
        return md.DASH if v is None else fmt.format(v)
    each = _each

    def psi(r, k):
        return s((r.get("psi_avg10_max") or {}).get(k))

    def det(r, k, scale=1.0, fmt="{:.1f}"):
        v = (r.get("detector") or {}).get(k)
        return s(None if v is None else v * scale, fmt)
    rows = []
    for k, v in _freeze_cells(cell, order):
        runs = v["freeze"]
        rows.append([labels.get(k, k), each(runs, lambda r: s(r.get("held_s"), "{:.2f}")),
                     each(runs, lambda r: psi(r, "memory some")), each(runs, lambda r: psi(r, "io some")),
                     each(runs, lambda r: psi(r, "system.slice memory full")),
                     each(runs, lambda r: det(r, "first_episode_s", fmt="{:.2f}")),
                     each(runs, lambda r: det(r, "fired_s", fmt="{:.2f}")),
                     each(runs, lambda r: det(r, "median_refault_pm_s", 0.01, "{:.0f}")),
                     each(runs, lambda r: det(r, "median_stall_pm", 0.01)),
                     each(runs, lambda r: det(r, "median_io_stall_pm", 0.01))])
    return rows


FREEZE_SIGNALS_TEXT = ("The signals, per run. *Held*: when the hog had filled all it holds (— : killed before). "
                       "PSI: the highest avg10 (%) seen every 0.25 s until the kill or the window's end: the "
                       "host's memory and I/O `some`, and system.slice's memory `full` (what systemd-oomd's "
                       "ManagedOOMMemoryPressureLimit= is held to). *Detector*: oomkiller's thrash detector with "
                       "its shipped limits (refaults 20%/s of the file cache, memory stall 10%, 1 s) fed the "
                       "harness's own host snapshots every 0.25 s, whoever the contender, until the hog died: "
                       "when its first episode began and when it fired, and, over the samples of episodes a "
                       "second old or more, the median refault rate (%/s of the file cache), memory stall (PSI "
                       "`some`, %) and I/O stall (%).")

FREEZE_TEXT = ("Times in seconds since the hog started. *Collapse*: the end of the first half-second window of "
               "the service's reads under 50% of its baseline that stays under for 1 s; *relief*: the first "
               "window wholly after it back at 50% or more for 1 s; *never*: no relief in the window. *Kill*: "
               "the hog's cgroup empty. *Service after the collapse*: its rate from the collapse to the kill (or "
               "to the window's end) as a share of its baseline. *MemAvailable*: the lowest while the hog held, "
               "in % of MemTotal.")


def markdown(meta: dict, scens: list[dict], conts: list[dict], summary: dict) -> str:
    labels = {c["key"]: c["label"] for c in conts}

    def ms(v):
        return md.DASH if v is None else f"{v:,.0f}"
    out = ["# Host-level benchmark", "",
           f"`{meta['command']}` — {meta['kernel']}, {meta['cpus']} CPUs, MemTotal {meta['mem_total_mib']} MiB, "
           f"swap {meta['swap_total_mib']} MiB, pure cgroup v2 with systemd"
           + (", emulated (QEMU TCG)" if meta.get("emulated") else "") + f"; {meta['started']}, "
           f"{meta['duration_s']:.0f} s.", "",
           f"Onset: the first 10 ms sample with MemAvailable below {meta['onset_percent']}% of MemTotal. "
           "Death: the first sample with the hog's cgroup empty. Times are medians over the runs; under "
           "emulation only the ratios between contenders of this same machine mean anything. "
           "*Right*: the hog died and the protected service, the contender and journald, dbus and logind kept "
           "their processes. *Service*: the protected service's operations per second while the hog lived, "
           "as a share of its baseline.", ""]
    for s in scens:
        cell = summary.get(s["key"]) or {}
        if not cell:
            continue
        out += [f"## {s['title']}", "", s["describe"] + ".", ""]
        if s["key"].startswith("healthy-"):
            out += [HEALTHY_TEXT, ""]
            out += md.table(["contender", "killed by", "right", "min MemAvailable %", "memory some", "I/O some",
                             "refaults %/s", "memory stall %", "detector fired", "service"],
                            healthy_rows(cell, [c["key"] for c in conts], labels), align="lllrrrrrrr")
            out.append("")
            continue
        if s["key"].startswith("freeze"):
            out += [FREEZE_TEXT, ""]
            out += md.table(["contender", "killed by", "right", "collapse", "kill", "relief", "collapse → relief",
                             "service after the collapse", "min MemAvailable %"],
                            freeze_rows(cell, [c["key"] for c in conts], labels), align="lllrrrrrr")
            out += ["", FREEZE_SIGNALS_TEXT, ""]
            out += md.table(["contender", "held", "host memory some", "host I/O some", "system.slice memory full",
                             "detector: episode", "fired", "refaults %/s", "memory stall %", "I/O stall %"],
                            freeze_signal_rows(cell, [c["key"] for c in conts], labels), align="lrrrrrrrrr")
            out.append("")
            continue
        rows = []
        for k in [c["key"] for c in conts]:
            v = cell.get(k)
            if not v:
                continue
            who = ", ".join(f"{w} ×{n}" if n > 1 else w for w, n in sorted(v["killed_by"].items())) or md.DASH
            if v["errors"]:
                who += f" ({v['errors']} run(s) failed)"
            right = f"{v['right']}/{v['runs']}" + (f" ({v['before_onset']} before the onset)"
                                                   if v["before_onset"] else "")
            rows.append([labels.get(k, k), who, right, ms(v["onset_to_death_ms"]), md.ratio(v["vs_kernel"]),
                         md.ratio(v["vs_oomkiller"]), ms(v["start_to_death_ms"]), ms(v["min_available_mib"]),
                         md.pct(v["service_work"])])
        out += md.table(["contender", "killed by", "right", "onset → death (ms)", "÷ kernel", "÷ oomkiller",
                         "start → death (ms)", "min MemAvailable (MiB)", "service"], rows, align="lllrrrrrr")
        out.append("")
    out += ["## Contenders", ""]
    out += [f"* **{c['label']}** (`{c['key']}`): {c['describe']}" for c in conts]
    if meta.get("unavailable"):
        out += ["", "Not run:", ""]
        out += [f"* `{k}`: {v.splitlines()[0][:300]}" for k, v in meta["unavailable"].items()]
    if meta.get("notes"):
        out += ["", "Notes:", ""] + [f"* {n}" for n in meta["notes"]]
    vers = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))
    out += ["", f"Versions: {vers}.", ""]
    return "\n".join(out)


def line(r: dict) -> str:
    head = f"{r['scenario']:10s} {r['contender']:18s} #{r['run'] + 1}"
    if r.get("error"):
        return f"{head}  FAILED: {r['error']}"

    def ms(v):
        return "-" if v is None else f"{v:.0f} ms"
    coll = f" collateral: {', '.join(r['collateral'])}" if r.get("collateral") else ""
    h = r.get("healthy")
    if h:
        return (f"{head}  killed by {r['killed_by']}{'' if r.get('right') else ' WRONG'}{coll}"
                f"  kill {h.get('kill_s')}  avail min {h.get('min_available_pct')}%  psi {h.get('psi_avg10_max')}"
                f"  refaults max {h.get('max_refault_pm_s')}  stall max {h.get('max_stall_pm')}"
                f"  detector {({k: v for k, v in (h.get('detector') or {}).items() if k != 'trace'})}"
                f"  svc {h.get('service_share')}"
                f"  {('| ' + r['kill_lines'][0][:160]) if r.get('kill_lines') else ''}  [{r['wall_s']} s]")
    f = r.get("freeze")
    if f:
        a = f.get("held_available_pct") or {}
        return (f"{head}  killed by {r['killed_by']}{'' if r.get('right') else ' WRONG'}{coll}  held {f.get('held_s')}"
                f"  collapse {f.get('collapse_s')}  kill {f.get('kill_s')}  relief "
                f"{'never' if f.get('never') else f.get('relief_s')}  after collapse {f.get('share_after_collapse')}"
                f"  avail min {a.get('min')}%  psi {f.get('psi_avg10_max')}"
                f"  detector {({k: v for k, v in (f.get('detector') or {}).items() if k != 'trace'})}"
                f"  {('| ' + r['kill_lines'][0][:160]) if r.get('kill_lines') else ''}  [{r['wall_s']} s]")
    return (f"{head}  killed by {r['killed_by']}{'' if r.get('right') else ' WRONG'}{coll}"
            f"  onset->death {ms(r.get('onset_to_death_ms'))}  start->death {ms(r.get('start_to_death_ms'))}"
            f"  min avail {r.get('min_available_mib')} MiB  svc {r.get('service_work')}"
            f"  {('| ' + r['kill_lines'][0][:120]) if r.get('kill_lines') else ''}  [{r['wall_s']} s]")


# -- entry --------------------------------------------------------------------------

def main(a: argparse.Namespace) -> int:
    runs = a.runs or 1
    scens = list(SCENARIOS.values())
    prog = "oomkiller bench --host-level"
    if a.scenarios:
        want = pick(a.scenarios, SCENARIOS, "scenario", prog)
        if want is None:
            return 2
        scens = [SCENARIOS[s] for s in want]
    known = contenders()
    chosen = list(known)
    if a.contenders:
        chosen = pick(a.contenders, known, "contender", prog)
        if chosen is None:
            return 2
    if a.list:
        print_list("scenario", 18, ((s.key, f"{s.title}: {s.describe()}") for s in scens))
        print_list("contender", 18, ((k, known[k].describe()) for k in chosen))
        return 0
    if not is_root(prog, "starts system services"):
        return 2
    if not os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) or not shutil.which("systemctl") \
            or sh("systemctl", "is-system-running").stdout.strip() in ("", "offline"):
        print("oomkiller bench --host-level: needs a machine run by systemd on pure cgroup v2 (the VM tier's "
              "guest: python -m tests.vm.run --cmd 'python -m oomkiller_bench --host-level --out "
              "$OOMK_VM_RESULTS/bench')", file=sys.stderr)
        return 2
    return HostBench(a, scens, [known[k] for k in chosen], runs).run()
