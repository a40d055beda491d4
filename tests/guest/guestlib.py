"""Helpers of the guest tier: systemd units as jobs, the deployed daemon, and
the kernel's own counts.

Jobs here are what they are on a production host: transient systemd services
and scopes (``systemd-run``), named ``oomkt-*``. The daemon is the one
deploy/oomkiller.service starts, with the shipped config at
/etc/oomkiller/oomkiller.toml; a test changes settings only through a drop-in
with ``OOMKILLER_*`` environment variables, which take precedence over the
file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

from oomkiller.control import ControlError, request
from oomkiller.model import parse_record
from oomkiller_bench.arena import HOG_SOURCE, IDLE_SOURCE

CGROUP_ROOT = "/sys/fs/cgroup"
DAEMON_UNIT = "oomkiller.service"
CONTROL_SOCKET = "/run/oomkiller/control.sock"
DECISIONS = "/run/oomkiller/decisions.jsonl"
DROPIN = "/run/systemd/system/oomkiller.service.d/50-guest-test.conf"
UNIT_PREFIX = "oomkt-"
MIB = 1 << 20

# Added to the shipped config for every run here: the decision records go
# to a file the tests read.
BASE_ENV = {"OOMKILLER_JSON_LOG": DECISIONS}

# Services that stand for the rest of the system: they must live through
# every kill.
SYSTEM_SERVICES = ("systemd-journald.service", "ssh.service", "dbus.service", "systemd-logind.service")

# How systemd reports a unit the daemon killed: the daemon marks the unit's
# cgroup with user.oomd_ooms (systemd-oomd's convention), and systemd, seeing
# it when the cgroup empties, records the unit as OOM-killed ("Result:
# oom-kill"), its main process killed by SIGKILL. A kill by the kernel's OOM
# killer reads the same there: the kernel's own oom_kill count tells them apart.
DAEMON_KILL_RESULT = ("oom-kill", "2", "9")

# Every daemon pid the tier started: none may ever be killed.
DAEMON_PIDS: list[int] = []


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def wait_for(cond: Callable, timeout_s: float, what: str, step_s: float = 0.05):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def show(unit: str, *props: str) -> dict[str, str]:
    out = sh("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def read_keyed(path: str) -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    return out


def kernel_oom_kills() -> int:
    """OOM kills the kernel made anywhere in the guest since boot."""
    return read_keyed("/proc/vmstat").get("oom_kill", 0)


def meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/meminfo")


def mem_available_bytes() -> int:
    return meminfo_bytes("MemAvailable")


def main_pids(units=SYSTEM_SERVICES) -> dict[str, int]:
    return {u: int(show(u, "MainPID")["MainPID"]) for u in units}


class Unit:
    """A transient systemd unit made by a test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def show(self, *props: str) -> dict[str, str]:
        return show(self.name, *props)

    @property
    def cgroup(self) -> str:
        return CGROUP_ROOT + self.show("ControlGroup")["ControlGroup"]

    @property
    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def memory_bytes(self) -> int:
        try:
            with open(os.path.join(self.cgroup, "memory.current")) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return 0

    def active(self) -> bool:
        return self.show("ActiveState")["ActiveState"] in ("active", "activating", "reloading")

    def wait_dead(self, timeout_s: float) -> dict[str, str]:
        """Wait until the unit has stopped; its Result (``signal`` for a kill
        by a signal, ``oom-kill`` when the kernel's OOM killer hit it) and
        main process status."""
        wait_for(lambda: not self.active(), timeout_s, f"{self.name} to stop", 0.1)
        return self.show("Result", "ExecMainCode", "ExecMainStatus", "ActiveState")

    def stop(self) -> None:
        sh("systemctl", "stop", self.name, check=False)
        sh("systemctl", "reset-failed", self.name, check=False)


def start_service(name: str, source: str, *args, props: tuple[str, ...] = (), slice_: str | None = None) -> Unit:
    """A transient service running ``python -c source args``."""
    argv = ["systemd-run", "--quiet", f"--unit={name}", "--property=Restart=no", "--property=Type=exec"]
    argv += [f"--property={p}" for p in props]
    if slice_:
        argv.append(f"--slice={slice_}")
    sh(*argv, "--", sys.executable, "-c", source, *map(str, args))
    return Unit(f"{name}.service")


def start_idle(name: str, hold_bytes: int, **kw) -> Unit:
    u = start_service(name, IDLE_SOURCE, hold_bytes, **kw)
    wait_for(lambda: u.memory_bytes() >= hold_bytes, 60, f"{u.name} to hold {hold_bytes >> 20} MiB", 0.1)
    return u


def start_hog(name: str, chunk_bytes: int = 4 * MIB, pause_s: float = 0.0, cap_bytes: int = 0, **kw) -> Unit:
    """A service that allocates ``chunk_bytes`` every ``pause_s`` until killed (or ``cap_bytes``)."""
    return start_service(name, HOG_SOURCE, chunk_bytes, pause_s, cap_bytes, **kw)


def stop_test_units() -> None:
    out = sh("systemctl", "list-units", "--all", "--plain", "--no-legend", f"{UNIT_PREFIX}*").stdout
    for line in out.splitlines():
        name = line.split()[0]
        Unit(name).stop()


class Daemon:
    """The deployed daemon (deploy/oomkiller.service), with ``env`` on top of
    BASE_ENV in a drop-in."""

    def __init__(self, exec_start: str = "", **env: str) -> None:
        self.env = {**BASE_ENV, **env}
        self.exec_start = exec_start    # instead of the unit's own, if given
        self.pid = 0
        self.start_s = 0.0

    def start(self, timeout_s: float = 240) -> "Daemon":
        os.makedirs(os.path.dirname(DROPIN), exist_ok=True)
        with open(DROPIN, "w") as f:
            f.write("[Service]\n" + "".join(f'Environment="{k}={v}"\n' for k, v in self.env.items()))
            if self.exec_start:
                f.write(f"ExecStart=\nExecStart={self.exec_start}\n")
        sh("systemctl", "daemon-reload")
        t0 = time.monotonic()
        sh("systemctl", "restart", DAEMON_UNIT)

        pids = set()

        def answering() -> int:
            pid = int(show(DAEMON_UNIT, "MainPID")["MainPID"])
            if not pid:
                return 0
            pids.add(pid)
            if len(pids) > 1:
                raise AssertionError(f"the daemon exited and was restarted while starting:\n{self.journal()[-3000:]}")
            try:
                return pid if request(CONTROL_SOCKET, "info", timeout_s=2)["data"]["pid"] == pid else 0
            except ControlError:
                return 0
        self.pid = wait_for(answering, timeout_s, "the daemon to answer on its control socket", 0.25)
        self.start_s = time.monotonic() - t0
        DAEMON_PIDS.append(self.pid)
        return self

    def info(self) -> dict:
        return request(CONTROL_SOCKET, "info")["data"]

    def ctl(self, cmd: str) -> dict:
        return request(CONTROL_SOCKET, cmd)

    def records(self) -> list[dict]:
        try:
            with open(DECISIONS) as f:
                return [parse_record(json.loads(line)) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def kills(self) -> list[dict]:
        return [r for r in self.records() if r.get("event") == "oom_decision" and r.get("result") == "killed"]

    def alive(self) -> bool:
        s = show(DAEMON_UNIT, "MainPID", "ActiveState")
        return s["ActiveState"] == "active" and int(s["MainPID"]) == self.pid

    def journal(self) -> str:
        return sh("journalctl", "-b", "-u", DAEMON_UNIT, "--no-pager", "-o", "cat", check=False).stdout

    def stop(self) -> None:
        """Stop the daemon (its runtime folder goes with it: the decision
        records are kept in the results first)."""
        results = os.environ.get("OOMK_VM_RESULTS")
        if results and os.path.exists(DECISIONS):
            os.makedirs(os.path.join(results, "decisions"), exist_ok=True)
            with open(DECISIONS) as src, open(os.path.join(results, "decisions", f"{self.pid}.jsonl"), "w") as dst:
                dst.write(src.read())
        sh("systemctl", "stop", DAEMON_UNIT, check=False)
        try:
            os.unlink(DROPIN)
        except FileNotFoundError:
            pass
        sh("systemctl", "daemon-reload")


# The prober: a small process of its own that locks its memory, so what it
# measures is the daemon's answer, not its own page faults under the pressure.
PROBE_SOURCE = r"""
import ctypes, json, signal, sys, time
from oomkiller.control import request
ctypes.CDLL(None).mlockall(1 | 2)       # MCL_CURRENT | MCL_FUTURE
path, interval, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
latencies, failures, done = [], [], []
signal.signal(signal.SIGTERM, lambda *_: done.append(1))
while not done:
    t0 = time.monotonic()
    try:
        request(path, "info", timeout_s=5)
        latencies.append(time.monotonic() - t0)
    except Exception as e:
        failures.append(f"{time.monotonic():.3f} {e!r}")
    time.sleep(interval)
with open(out, "w") as f:
    json.dump({"latencies_s": latencies, "failures": failures}, f)
"""


class InfoProbe:
    """Asks the daemon for ``info`` over its control socket every
    ``interval_s``, from a transient service that neither the daemon nor the
    kernel would kill, and keeps how long each answer took."""

    def __init__(self, interval_s: float = 0.1, name: str = UNIT_PREFIX + "probe") -> None:
        self.interval_s = interval_s
        self.name = name
        self.out = f"/tmp/{name}.json"
        self.latencies_s: list[float] = []
        self.failures: list[str] = []

    def __enter__(self) -> "InfoProbe":
        if os.path.exists(self.out):
            os.unlink(self.out)
        self.unit = start_service(self.name, PROBE_SOURCE, CONTROL_SOCKET, self.interval_s, self.out,
                                  props=("OOMScoreAdjust=-1000", "ManagedOOMPreference=omit"))
        return self

    def __exit__(self, *exc) -> None:
        self.unit.stop()
        wait_for(lambda: os.path.exists(self.out), 30, "the prober's numbers")
        with open(self.out) as f:
            data = json.load(f)
        self.latencies_s, self.failures = data["latencies_s"], data["failures"]

    @property
    def slowest_s(self) -> float:
        return max(self.latencies_s, default=0.0)
