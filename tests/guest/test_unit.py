"""deploy/oomkiller.service on a systemd host with pure cgroup v2: it starts
the daemon, and the daemon runs with the hardening the unit promises; it is
a Type=notify service with a watchdog, and its lines reach the journal under
"oomkiller" at their priorities."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from guestlib import CGROUP_ROOT, DAEMON_UNIT, Daemon, sh, show, wait_for

UNIT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "oomkiller.service"

# linux/capability.h
CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def unit_settings() -> dict[str, str]:
    """``Key=value`` lines of the shipped unit (the last one of a key wins)."""
    out = {}
    for line in UNIT_FILE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def unit_bytes(value: str) -> int:
    return int(value[:-1]) * SIZES[value[-1]] if value[-1] in SIZES else int(value)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    yield d
    d.stop()


def test_the_unit_starts_the_daemon_and_its_control_socket_answers(daemon):
    s = show(DAEMON_UNIT, "ActiveState", "ExecStart", "ControlGroup")
    assert s["ActiveState"] == "active"
    assert "/opt/oomkiller/.venv/bin/python -m oomkiller run --config /etc/oomkiller/oomkiller.toml" in s["ExecStart"]
    assert s["ControlGroup"] == "/system.slice/oomkiller.service"
    p = subprocess.run(["oomkiller", "info"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "OOM info:\n  running: true\n" in p.stdout and "  domain: host (/sys/fs/cgroup)" in p.stdout
    data = json.loads(subprocess.run(["oomkiller", "info", "--json"], capture_output=True, text=True,
                                     timeout=60, check=True).stdout)
    assert data["pid"] == daemon.pid
    live = {k for k, v in data["sources"].items() if v["state"] == "live"}
    assert {"timer", "ebpf", "prearm", "psi"} <= live, data["sources"]
    # Privileged PSI triggers: the unit gives CAP_SYS_RESOURCE, so no 2 s rounding.
    assert "note" not in data["sources"]["psi"], data["sources"]["psi"]
    print(f"daemon answered {daemon.start_s:.1f} s after `systemctl restart`; sources {sorted(live)}")


def test_the_capability_bounding_set_is_the_units(daemon):
    wanted = unit_settings()["CapabilityBoundingSet"].split()
    mask = sum(1 << CAP_NUMBERS[c] for c in wanted)
    assert int(proc_status(daemon.pid)["CapBnd"], 16) == mask, wanted


def test_no_new_privileges_locked_memory_and_oom_score_adj(daemon):
    st = proc_status(daemon.pid)
    assert st["NoNewPrivs"] == "1"
    assert int(st["VmLck"].split()[0]) > 0, st["VmLck"]
    with open(f"/proc/{daemon.pid}/oom_score_adj") as f:
        assert f.read().strip() == unit_settings()["OOMScoreAdjust"] == "-1000"
    assert psutil.Process(daemon.pid).nice() == int(unit_settings()["Nice"])


def test_its_cgroup_has_the_units_memory_protection(daemon):
    cg = CGROUP_ROOT + "/system.slice/oomkiller.service"
    u = unit_settings()
    for key, file in (("MemoryMin", "memory.min"), ("MemoryLow", "memory.low")):
        with open(os.path.join(cg, file)) as f:
            assert int(f.read()) == unit_bytes(u[key]), file
    with open(os.path.join(cg, "cgroup.procs")) as f:
        assert int(f.read().split()[0]) == daemon.pid


def test_the_sandbox_holds(daemon):
    # ProtectSystem=strict: / is read-only in the daemon's mount namespace,
    # /sys/fs/cgroup (ReadWritePaths) is not. PrivateNetwork=yes: only lo.
    mounts = {}
    with open(f"/proc/{daemon.pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts[fields[4]] = fields[5].split(",")
    assert "ro" in mounts["/"]
    assert "rw" in mounts["/sys/fs/cgroup"]
    with open(f"/proc/{daemon.pid}/net/dev") as f:
        ifaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    assert ifaces == ["lo"]


def journal_entries(pid: int) -> list[dict]:
    out = sh("journalctl", "-b", f"_PID={pid}", "-o", "json", "--all", "--no-pager", check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_unit_is_type_notify_and_went_active_only_once_the_daemon_was_ready(daemon):
    s = show(DAEMON_UNIT, "Type", "NotifyAccess", "WatchdogUSec", "StatusText", "ActiveEnterTimestampMonotonic",
             "ExecMainStartTimestampMonotonic")
    assert (s["Type"], s["NotifyAccess"]) == ("notify", "main"), s
    assert s["WatchdogUSec"] in ("30s", "30000000"), s
    assert s["StatusText"].startswith("watching host, redline 5% (") and "ebpf" in s["StatusText"], s
    # The effective config is logged first thing, before the BPF program is
    # compiled; a Type=simple unit is active as soon as the process runs,
    # before that line. This one became active only at READY=1, after it.
    config_line = [e for e in journal_entries(daemon.pid)
                   if str(e.get("MESSAGE", "")).startswith("OOM: effective config")]
    assert config_line, "no 'effective config' line in the journal"
    assert config_line[0]["SYSLOG_IDENTIFIER"] == "oomkiller" and config_line[0]["PRIORITY"] == "6"
    started, active = int(s["ExecMainStartTimestampMonotonic"]), int(s["ActiveEnterTimestampMonotonic"])
    assert started < int(config_line[0]["__MONOTONIC_TIMESTAMP"]) < active, (started, config_line[0], active)
    print(f"active {(active - started) / 1e6:.1f} s after the daemon started")


NO_PSI_DROPIN = "/run/systemd/system/oomkiller.service.d/60-guest-no-psi.conf"


def test_a_source_down_is_a_warning_in_the_journal_under_oomkiller():
    # /proc/pressure hidden from the daemon, as on a kernel booted with psi=0
    with open(NO_PSI_DROPIN, "w") as f:
        f.write("[Service]\nInaccessiblePaths=/proc/pressure\n")
    try:
        d = Daemon().start()
        try:
            def warned() -> str:
                return sh("journalctl", "-b", "-t", "oomkiller", "-p", "warning", f"_PID={d.pid}", "-o", "cat",
                          "--no-pager", check=False).stdout
            out = wait_for(lambda: "OOM: source psi unavailable" in warned() and warned(), 30,
                           "the warning in the journal")
            # info lines are not at warning: the effective config is not there
            assert "OOM: effective config" not in out, out
            status = show(DAEMON_UNIT, "StatusText")["StatusText"]
            assert re.search(r"\((?:\w+, )*psi(?:, \w+)* unavailable\)", status), status
        finally:
            d.stop()
    finally:
        os.unlink(NO_PSI_DROPIN)
        sh("systemctl", "daemon-reload")


def test_a_stopped_loop_gets_the_daemon_restarted_by_the_watchdog():
    d = Daemon().start()
    old = d.pid
    restarts = int(show(DAEMON_UNIT, "NRestarts")["NRestarts"])
    os.kill(old, signal.SIGSTOP)
    try:
        def restarted() -> int:
            s = show(DAEMON_UNIT, "MainPID", "ActiveState")
            pid = int(s["MainPID"])
            return pid if pid not in (0, old) and s["ActiveState"] == "active" else 0
        # WatchdogSec=30s, then TimeoutAbortSec=10s, RestartSec=1s, the BPF compile
        new = wait_for(restarted, 180, "the watchdog to restart the daemon", 0.5)
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    try:
        assert int(show(DAEMON_UNIT, "NRestarts")["NRestarts"]) == restarts + 1
        log = sh("journalctl", "-b", "-u", DAEMON_UNIT, "--no-pager", "-o", "cat", check=False).stdout
        assert "Watchdog timeout" in log, log[-2000:]
        print(f"restarted as pid {new}")
    finally:
        d.stop()
