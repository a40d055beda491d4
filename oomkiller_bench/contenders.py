"""The contenders: the kernel alone, oomkiller with each set of sources,
earlyoom and nohang, each started against one arena.

A contender is an argument list and a way to read its log, nothing more: every
oomkiller contender is ``oomkiller run`` with other ``--sources`` and
``--sleep-ms``; which sources were live is asked of the daemon (``info``).

earlyoom and nohang judge memory by ``/proc/meminfo`` and pick victims among
every process in ``/proc``. To make them see the arena and nothing else, each
runs in a PID and mount namespace of its own, created per run:

* pid 1 of the namespace (a small reaper) lives in the arena's own memory
  cgroup; lxcfs serves ``/proc/meminfo`` from the memory cgroup of the reader's
  PID-namespace init, so that view shows the arena's limit as MemTotal and its
  usage as used memory. The namespace's ``/proc`` is a fresh procfs with the
  lxcfs file bind-mounted over ``meminfo``, in a private mount namespace: the
  host's ``/proc`` is untouched;
* the workloads of that run start inside the same PID namespace (through
  ``nsenter``), so the killer's ``/proc`` lists only them: it cannot pick a
  process the benchmark did not start;
* nohang also gets the arena's ``memory.pressure`` as its ``psi_path``.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from oomkiller.files import read_text

from . import daemon, measure
from .arena import Arena, ArenaJob
from .scenarios import REDLINE_PERCENT, COMM

ALL_SOURCES = "ebpf,prearm,psi,memcg,timer"

# pid 1 of a contender's namespace: mounts the arena's meminfo view, then reaps
# orphans (a killed fork-storm parent leaves its children to it).
REAPER_SOURCE = r"""
import os, subprocess, sys, time
subprocess.run(["mount", "--bind", sys.argv[1], "/proc/meminfo"], check=True)
print("ready", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


@dataclass
class Kill:
    """One kill a contender claims (or the kernel made)."""

    by: str
    job: str | None
    t_usec: int | None               # when the signal went out (the decision)
    signal: str = "SIGKILL"
    pids: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunEnv:
    """What a contender gets for one run."""

    arena: Arena
    tmpdir: str
    protect_job: str
    lxcfs_meminfo: str | None


class Running:
    """A started contender. The kernel-only one has no process."""

    name = "kernel"

    def killer_pids(self) -> list[int]:
        return []

    def exit_code(self) -> int | None:
        """The killer's exit status if it is no longer running."""
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def info(self) -> dict[str, Any]:
        return {}

    def kills(self, job_of_comm) -> list[Kill]:
        return []

    def stop(self) -> None:
        pass


class Contender:
    key = "kernel"
    label = "kernel alone"
    kind = "kernel"
    # False: runs only in the cells that name it (Cell.contenders).
    everywhere = True

    def unavailable(self, host: "Host") -> str | None:
        return None

    def describe(self) -> str:
        return "no user-space killer: the memcg OOM killer acts when the arena hits its limit"

    def start(self, env: RunEnv) -> Running:
        return Running()


# -- oomkiller -------------------------------------------------------------------

class Oomkiller(Contender):
    kind = "oomkiller"

    def __init__(self, key: str, sources: str, sleep_ms: int, label: str) -> None:
        self.key = key
        self.sources = sources
        self.sleep_ms = sleep_ms
        self.label = label

    def argv(self, env: RunEnv, sock: str, json_log: str) -> list[str]:
        return [sys.executable, "-m", "oomkiller", "run", "--domain", env.arena.path,
                "--redline", f"{REDLINE_PERCENT}%", "--sleep-ms", str(self.sleep_ms),
                "--protect", env.protect_job, "--sources", self.sources,
                "--json-log", json_log, "--control", sock]

    def describe(self) -> str:
        return f"oomkiller run --sources {self.sources} --sleep-ms {self.sleep_ms} --redline {REDLINE_PERCENT}%"

    def env(self) -> dict[str, str]:
        """Variables the daemon gets beside the harness's own."""
        return {}

    def start(self, env: RunEnv) -> Running:
        return RunningDaemon(self, env)


class OomkillerDefaults(Oomkiller):
    """``oomkiller run`` as shipped: only the domain (and where its socket and
    records go) is given; no redline, sources or protected job of the
    benchmark's. It faces the freeze and the false-positive suite, where the
    claim is about the defaults."""

    everywhere = False

    def __init__(self) -> None:
        super().__init__("oomk-defaults", ALL_SOURCES, 1000, "oomkiller, shipped defaults")

    def argv(self, env: RunEnv, sock: str, json_log: str) -> list[str]:
        return [sys.executable, "-m", "oomkiller", "run", "--domain", env.arena.path,
                "--json-log", json_log, "--control", sock]

    def describe(self) -> str:
        return ("oomkiller run --domain ARENA with every other setting at its default (redline 5%, every "
                "source, sleep 1000 ms, jobs auto, nothing protected, the thrash detector on)")


class OomkillerQuick(OomkillerDefaults):
    """The shipped defaults but a sustain span of 500 ms (``thrash_sustain_ms``):
    what a shorter span buys on the freeze and costs on bursts of pressure.
    Runs only where it is named (``--contenders``), in the cells of the
    shipped defaults."""

    SUSTAIN_MS = 500
    stands_for = "oomk-defaults"

    def __init__(self) -> None:
        Oomkiller.__init__(self, "oomk-quick", ALL_SOURCES, 1000,
                           f"oomkiller, shipped defaults but thrash_sustain_ms {self.SUSTAIN_MS}")

    def env(self) -> dict[str, str]:
        return {"OOMKILLER_THRASH_SUSTAIN_MS": str(self.SUSTAIN_MS)}

    def describe(self) -> str:
        return super().describe() + f"; OOMKILLER_THRASH_SUSTAIN_MS={self.SUSTAIN_MS}"


class RunningDaemon(Running):
    # bcc compiles the BPF program at start (0.3-0.5 s here); allow for a slow CI host.
    START_TIMEOUT_S = 60

    def __init__(self, c: Oomkiller, env: RunEnv) -> None:
        self.name = c.key
        self.sock = os.path.join(env.tmpdir, f"{c.key}.sock")
        self.json_log = os.path.join(env.tmpdir, f"{c.key}.jsonl")
        self.err_path = os.path.join(env.tmpdir, f"{c.key}.err")
        for p in (self.json_log, self.sock):
            if os.path.exists(p):
                os.unlink(p)
        self.argv = c.argv(env, self.sock, self.json_log)
        t0 = time.monotonic()
        with open(self.err_path, "w") as err:
            self.p = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **c.env()})
        self._info = daemon.wait_info(self.sock, lambda: self.p.poll() is None, self.START_TIMEOUT_S) or {}
        if not self._info:
            self.stop()
            raise RuntimeError(f"{c.key}: the daemon did not answer on its control socket:\n{self.stderr()[-2000:]}")
        self.start_s = time.monotonic() - t0

    def killer_pids(self) -> list[int]:
        return measure.process_tree(self.p.pid) if self.p.poll() is None else []

    def exit_code(self) -> int | None:
        return self.p.poll()

    def info(self) -> dict[str, Any]:
        src = self._info.get("sources", {})
        out = {"sources": src, "sources_live": sorted(k for k, v in src.items() if v.get("state") == "live"),
               "start_s": round(self.start_s, 3), "argv": self.argv[1:]}
        err = self.stderr()
        # episodes in which dirty pages held the pressure limit (core/detect.py)
        out["pressure_held"] = err.count("the stall is reclaim waiting for the disk")
        if self.p.poll() is not None:
            out["stderr_tail"] = err.splitlines()[-20:]
        return out

    def kills(self, job_of_comm) -> list[Kill]:
        out = []
        for rec in daemon.kills(daemon.read_records(self.json_log)):
            timings = rec.get("timings_usec", {})
            ok = [a for a in rec.get("attempts", []) if a.get("ok")]
            woke = (rec.get("woken_by") or [{}])[0]
            out.append(Kill("daemon", daemon.victim_job(rec), daemon.decision_usec(rec), "SIGKILL",
                            [p for a in ok for p in a.get("pids", [])],
                            {"signal_to_empty_usec": ok[0].get("signal_to_empty_usec") if ok else None,
                             "method": ok[0].get("method") if ok else None,
                             "woken_by": woke.get("source"), "wake_usec": woke.get("timestamp_usec"),
                             "freed_bytes": rec.get("freed_bytes"), "timings_usec": timings,
                             "decision": rec.get("decision"), "thrash": rec.get("thrash")}))
        return out

    def results(self) -> dict[str, int]:
        return daemon.results(daemon.read_records(self.json_log))

    def decisions(self) -> list[dict[str, Any]]:
        return daemon.decisions(daemon.read_records(self.json_log))

    def stderr(self) -> str:
        try:
            with open(self.err_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# -- contenders in a namespace that sees the arena ---------------------------------

class NamespaceView:
    """A PID + mount namespace whose pid 1 sits in the arena's own cgroup and
    whose ``/proc/meminfo`` is lxcfs's view of that cgroup."""

    def __init__(self, arena: Arena, lxcfs_meminfo: str) -> None:
        root = ArenaJob("", arena.path, arena.v2_path)
        self.outer = arena.spawn(root, ["unshare", "--pid", "--mount", "--fork", "--mount-proc",
                                        sys.executable, "-S", "-c", REAPER_SOURCE, lxcfs_meminfo],
                                 stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        line = self.outer.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"namespace for the arena view did not start: {line!r}")
        import psutil
        kids = psutil.Process(self.outer.pid).children()
        if not kids:
            raise RuntimeError("namespace for the arena view: no pid 1")
        self.init_pid = kids[0].pid

    def enter(self, argv: list[str], mount: bool = False) -> list[str]:
        return ["nsenter", "-t", str(self.init_pid), "-p", *(["-m"] if mount else []), "--", *argv]


class RunningInView(Running):
    """A killer started through nsenter; its own pid is nsenter's child."""

    READY_TIMEOUT_S = 20
    LOG_TAIL_LINES = 40

    def __init__(self, name: str, view: NamespaceView, argv: list[str], ready_re: str, env_extra=None) -> None:
        import psutil
        self.name = name
        self.view = view
        self.argv = argv
        full_env = dict(os.environ, **(env_extra or {}))
        t0 = time.monotonic()
        self.p = subprocess.Popen(view.enter(argv, mount=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, env=full_env)
        self.out = measure.LineReader(self.p.stdout, name, realtime=True)
        pat = re.compile(ready_re)
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while time.monotonic() < deadline and not any(pat.search(line) for _, line in list(self.out.lines)):
            if self.p.poll() is not None:
                raise RuntimeError(f"{name} exited at start: {self.log()[-2000:]}")
            time.sleep(0.02)
        try:
            self.pid = psutil.Process(self.p.pid).children()[0].pid
        except (psutil.Error, IndexError):
            raise RuntimeError(f"{name}: cannot find its process under nsenter {self.p.pid}") from None
        self.start_s = time.monotonic() - t0

    def wrap(self, argv: list[str]) -> list[str]:
        return self.view.enter(argv)

    def killer_pids(self) -> list[int]:
        return [self.pid] if self.p.poll() is None else []

    def exit_code(self) -> int | None:
        return self.p.poll()

    def info(self) -> dict[str, Any]:
        return {"start_s": round(self.start_s, 3), "argv": self.argv,
                "log_tail": [line for _, line in self.out.lines[-self.LOG_TAIL_LINES:]]}

    def log(self) -> str:
        return "\n".join(line for _, line in self.out.lines)

    def stop(self) -> None:
        # nsenter does not pass signals on: stop the killer itself, by pid.
        if self.p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=10)
        self.out.join()
        self.p.stdout.close()


class Earlyoom(Contender):
    key = "earlyoom"
    label = "earlyoom 1.7"
    kind = "earlyoom"
    # "sending SIGKILL to process 6 uid 0 "oomk-hog": badness 672, VmRSS 199 MiB"
    KILL_RE = re.compile(r'sending (SIG\w+) to process (\d+) uid \d+ "([^"]*)"')

    def argv(self, env: RunEnv) -> list[str]:
        # Both thresholds at the redline: SIGKILL at once, as the daemon does.
        # -r 0: no periodic memory report.
        return ["earlyoom", "-m", f"{REDLINE_PERCENT},{REDLINE_PERCENT}", "-r", "0",
                "--avoid", f"^{COMM['svc']}$"]

    def describe(self) -> str:
        return (f"earlyoom -m {REDLINE_PERCENT},{REDLINE_PERCENT} -r 0 --avoid '^{COMM['svc']}$', in a PID "
                "namespace of the arena's processes with lxcfs's /proc/meminfo of the arena")

    def unavailable(self, host: "Host") -> str | None:
        return host.view_problem("earlyoom")

    def start(self, env: RunEnv) -> Running:
        view = NamespaceView(env.arena, env.lxcfs_meminfo)
        return RunningLogKiller(self.key, view, self.argv(env), r"^mem total:", self.KILL_RE, None)



def nohang_config(base: str, settings: dict[str, str], protected_name: str) -> str:
    """nohang's config text with ``settings`` set where their keys stand (or
    appended) and the process named ``protected_name`` never chosen."""
    settings = dict(settings)
    out = []
    for line in base.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in settings:
            out.append(f"{key} = {settings.pop(key)}")
        else:
            out.append(line)
    out += [f"{k} = {v}" for k, v in settings.items()]
    out.append(f"@BADNESS_ADJ_RE_NAME -1000 /// ^{protected_name}$")
    return "\n".join(out) + "\n"

class Nohang(Contender):
    key = "nohang"
    label = "nohang 0.2.0"
    kind = "nohang"
    CONFIG = "/etc/nohang/nohang.conf"
    KILL_RE = re.compile(r"Sending (SIG\w+) to the victim")
    VICTIM_RE = re.compile(r"PID:\s*(\d+), name: (.+?), ")
    # PSI: its defaults (full_avg10 above 90 % kills) but a 2 s excess duration
    # instead of 30 s, which would outlast every scenario window.
    SETTINGS = {
        "psi_checking_enabled": "True",
        "psi_excess_duration": "2",
        "soft_threshold_min_mem": f"{REDLINE_PERCENT} %",
        "hard_threshold_min_mem": f"{REDLINE_PERCENT} %",
    }

    def config_text(self, env: RunEnv) -> str:
        with open(self.CONFIG) as f:
            lines = f.read().splitlines()
        settings = dict(self.SETTINGS, psi_path=os.path.join(env.arena.v2_path, "memory.pressure"))
        return nohang_config("\n".join(lines), settings, COMM["svc"])

    def describe(self) -> str:
        s = ", ".join(f"{k} = {v}" for k, v in self.SETTINGS.items())
        return (f"nohang --monitor with Debian's nohang.conf and {s}, psi_path = the arena's memory.pressure, "
                f"@BADNESS_ADJ_RE_NAME -1000 /// ^{COMM['svc']}$; same namespace view as earlyoom")

    def unavailable(self, host: "Host") -> str | None:
        if not os.path.exists(self.CONFIG):
            return f"{self.CONFIG} is missing"
        return host.view_problem("nohang")

    def start(self, env: RunEnv) -> Running:
        conf = os.path.join(env.tmpdir, "nohang.conf")
        with open(conf, "w") as f:
            f.write(self.config_text(env))
        view = NamespaceView(env.arena, env.lxcfs_meminfo)
        return RunningLogKiller(self.key, view, ["nohang", "--monitor", "-c", conf], r"^Monitoring has started",
                                self.KILL_RE, self.VICTIM_RE, {"PYTHONUNBUFFERED": "1"})


class RunningLogKiller(RunningInView):
    """earlyoom or nohang: kills are read from its log, timestamped as they arrive."""

    def __init__(self, name, view, argv, ready_re, kill_re, victim_re, env_extra=None) -> None:
        self.kill_re = kill_re
        self.victim_re = victim_re
        super().__init__(name, view, argv, ready_re, env_extra)

    def kills(self, job_of_comm) -> list[Kill]:
        out = []
        victim = None
        for t, line in list(self.out.lines):
            if self.victim_re:
                m = self.victim_re.search(line)
                if m:
                    victim = (int(m.group(1)), m.group(2))
            m = self.kill_re.search(line)
            if not m:
                continue
            if self.victim_re:
                ns_pid, comm = victim if victim else (0, "?")
            else:
                ns_pid, comm = int(m.group(2)), m.group(3)
            out.append(Kill(self.name, job_of_comm(comm), t, m.group(1), [],
                            {"ns_pid": ns_pid, "comm": comm, "line": line.strip()}))
        return out


# -- the host ---------------------------------------------------------------------

class Host:
    """What this machine offers the contenders; starts lxcfs when one needs it."""

    def __init__(self, tmpdir: str) -> None:
        from oomkiller.cgroupfs import detect_layout
        self.layout = detect_layout()
        self.tmpdir = tmpdir
        self.lxcfs: subprocess.Popen | None = None
        self.lxcfs_mount: str | None = None
        self.lxcfs_meminfo: str | None = None
        self._lxcfs_error: str | None = None

    def view_problem(self, who: str) -> str | None:
        missing = [t for t in (who, "unshare", "nsenter", "lxcfs", "mount") if not shutil.which(t)]
        if missing:
            return f"not installed: {', '.join(missing)}"
        if not self.layout.memory_v1:
            # On cgroup v2 a cgroup with controllers enabled holds no processes,
            # so the namespace's pid 1 cannot sit in the arena cgroup itself.
            return "the lxcfs view needs pid 1 of the namespace in the arena cgroup, which cgroup v2 forbids"
        if not os.path.exists("/dev/fuse"):
            return "lxcfs needs /dev/fuse"
        return None

    def ensure_lxcfs(self) -> str:
        """The path of lxcfs's meminfo; starts a private lxcfs if none is mounted."""
        if self.lxcfs_meminfo:
            return self.lxcfs_meminfo
        self.lxcfs_mount = os.path.join(self.tmpdir, "lxcfs")
        os.makedirs(self.lxcfs_mount, exist_ok=True)
        # -u: no swap virtualization. With swap accounting on and no swap on
        # the host, lxcfs 5.0.3 computes SwapFree as a negative number shown
        # as 18446744073709551360 kB, and earlyoom exits on it.
        self.lxcfs = subprocess.Popen(["lxcfs", "-f", "-u", "-p", os.path.join(self.tmpdir, "lxcfs.pid"), self.lxcfs_mount],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        meminfo = os.path.join(self.lxcfs_mount, "proc", "meminfo")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not os.path.exists(meminfo):
            if self.lxcfs.poll() is not None:
                raise RuntimeError(f"lxcfs exited: {self.lxcfs.stderr.read().decode()[-1000:]}")
            time.sleep(0.05)
        if not os.path.exists(meminfo):
            raise RuntimeError("lxcfs did not mount its /proc view in 10 s")
        self.lxcfs_meminfo = meminfo
        return meminfo

    def close(self) -> None:
        if self.lxcfs and self.lxcfs.poll() is None:
            self.lxcfs.terminate()
            try:
                self.lxcfs.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.lxcfs.kill()
                self.lxcfs.wait()
        if self.lxcfs:
            self.lxcfs.stderr.close()
        if self.lxcfs_mount and os.path.ismount(self.lxcfs_mount):
            subprocess.run(["umount", "-l", self.lxcfs_mount], check=False)


def contenders() -> dict[str, Contender]:
    """Every contender the harness knows, in report order."""
    cs: list[Contender] = [
        Contender(),
        Oomkiller("oomk-timer-1000", "timer", 1000, "oomkiller, timer 1000 ms"),
        Oomkiller("oomk-timer-100", "timer", 100, "oomkiller, timer 100 ms"),
        Oomkiller("oomk-psi", "psi,timer", 1000, "oomkiller, PSI triggers"),
        Oomkiller("oomk-memcg", "memcg,timer", 1000, "oomkiller, memcg events"),
        Oomkiller("oomk-ebpf", "ebpf,timer", 1000, "oomkiller, eBPF events"),
        Oomkiller("oomk-prearm", ALL_SOURCES, 1000, "oomkiller, pre-armed kill (all sources)"),
        OomkillerDefaults(),
        OomkillerQuick(),
        Earlyoom(),
        Nohang(),
    ]
    return {c.key: c for c in cs}


DEFAULT_CONTENDERS = ("kernel", "oomk-timer-1000", "oomk-timer-100", "oomk-psi", "oomk-ebpf", "oomk-prearm",
                      "oomk-defaults", "earlyoom", "nohang")
CI_CONTENDERS = ("kernel", "oomk-timer-100", "earlyoom")


def unavailable_elsewhere(host: Host) -> dict[str, str]:
    """Killers the benchmark cannot run here, with the reason."""
    v2_memory = False
    if host.layout.unified_root:
        try:
            v2_memory = "memory" in read_text(os.path.join(host.layout.unified_root, "cgroup.controllers")).split()
        except OSError:
            pass
    out = {}
    oomd = shutil.which("oomd")
    sd = next((p for p in ("/lib/systemd/systemd-oomd", "/usr/lib/systemd/systemd-oomd") if os.path.exists(p)), None)
    why_v2 = ("needs the cgroup v2 memory controller (memory.current, memory.pressure per cgroup); "
              "on this host memory is a v1 controller and cgroup2 has no controllers")
    if not v2_memory:
        out["oomd"] = why_v2 + ("" if oomd else "; also not installed")
        out["systemd-oomd"] = why_v2 + ("" if sd else "; also not installed")
    else:
        out["oomd"] = "not wired into the harness yet" if oomd else "not installed"
        out["systemd-oomd"] = ("not wired into the harness yet: it acts on systemd units, not on arena cgroups"
                               if sd else "not installed")
    return out
