"""``oomkiller bench --soak MINUTES``: hogs killed in a loop, for as long as asked.

One daemon watches a 256 MiB arena holding a protected service; fast hogs
(the race test's, as fast as the kernel hands memory out) start one after
another, each in a job of its own. For each hog: who killed it (the daemon,
or the kernel's OOM killer, from the arena's ``oom_kill`` counters), and
every ``SAMPLE_S`` the daemon's RSS, open fds and threads. A daemon that
leaks, or loses more races as it ages, shows it here. Writes
``soak.json`` and ``soak.md`` (and ``soak.png`` unless --no-plots) in --out.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from oomkiller.files import read_kb_fields

from . import daemon, measure
from . import markdown as md
from .arena import Arena

ARENA_BYTES = 256 << 20
SAMPLE_S = 10.0


def _daemon_sample(pid: int) -> dict[str, int]:
    out = dict(measure.memory_kb(pid))
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        status = read_kb_fields(f"/proc/{pid}/status", ("Threads",))
        if "Threads" in status:
            out["threads"] = status["Threads"]
    except OSError:
        pass
    return out


def soak(minutes: float, daemon_args: list[str], out_dir: str, plots: bool = True) -> int:
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="oomk-soak-")
    sock, records = os.path.join(tmp, "ctl.sock"), os.path.join(tmp, "records.jsonl")
    runs: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    with Arena(f"oomk-soak-{uuid.uuid4().hex[:8]}", ARENA_BYTES) as arena:
        svc = arena.job("svc")
        service = arena.spawn_idle(svc, 24 << 20)
        argv = [sys.executable, "-m", "oomkiller", "run", "--domain", arena.path, "--protect", "svc",
                "--control", sock, "--json-log", records, *daemon_args]
        with open(os.path.join(tmp, "daemon.err"), "w") as err:
            d = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        try:
            if daemon.wait_info(sock, lambda: d.poll() is None, 60) is None:
                raise RuntimeError("the daemon did not answer on its control socket")
            t0 = time.monotonic()
            end = t0 + minutes * 60
            next_sample = t0
            i = 0
            while time.monotonic() < end and d.poll() is None and service.poll() is None:
                if time.monotonic() >= next_sample:
                    samples.append({"t_s": round(time.monotonic() - t0, 1), **_daemon_sample(d.pid),
                                    "daemon_kills": sum(r["by"] == "daemon" for r in runs),
                                    "kernel_kills": sum(r["by"] == "kernel" for r in runs)})
                    next_sample += SAMPLE_S
                job = arena.job(f"hog{i}")
                before = arena.kernel_oom_kills()
                t = time.monotonic()
                hog = arena.spawn_hog(job, chunk_bytes=4 << 20, cap_bytes=2 * ARENA_BYTES)
                rc = hog.wait(timeout=60)
                by = "kernel" if arena.kernel_oom_kills() > before else ("daemon" if rc == -signal.SIGKILL else "none")
                runs.append({"run": i, "t_s": round(t - t0, 2), "by": by, "hog_s": round(time.monotonic() - t, 3)})
                _forget(arena, job, hog)
                i += 1
            samples.append({"t_s": round(time.monotonic() - t0, 1), **_daemon_sample(d.pid),
                            "daemon_kills": sum(r["by"] == "daemon" for r in runs),
                            "kernel_kills": sum(r["by"] == "kernel" for r in runs)})
            alive = d.poll() is None
            protected_alive = service.poll() is None
        finally:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
    result = {"argv": argv[1:], "minutes": minutes, "runs": runs, "samples": samples,
              "daemon_alive_at_end": alive, "protected_alive_at_end": protected_alive,
              "daemon_kills": sum(r["by"] == "daemon" for r in runs),
              "kernel_kills": sum(r["by"] == "kernel" for r in runs)}
    with open(os.path.join(out_dir, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "soak.md"), "w") as f:
        f.write(markdown(result))
    if plots:
        plot(result, os.path.join(out_dir, "soak.png"))
    print(markdown(result))
    return 0 if alive and protected_alive else 1


def _forget(arena: Arena, job, hog: subprocess.Popen) -> None:
    """Remove a dead hog's job, so a long soak does not pile up cgroups."""
    if hog.stdout:
        hog.stdout.close()
    arena.procs.remove(hog)
    for path in dict.fromkeys((job.v2_path, job.path)):
        for _ in range(100):
            try:
                os.rmdir(path)
                arena._dirs.remove(path)
                break
            except OSError:
                time.sleep(0.01)        # the last exit is still being reaped


def markdown(r: dict[str, Any]) -> str:
    n = len(r["runs"])
    lines = [f"# Soak: {r['minutes']:g} min, `{shlex.join(r['argv'])}`", "",
             f"{n} hogs: the daemon killed {r['daemon_kills']}, the kernel {r['kernel_kills']}"
             f" ({100 * r['kernel_kills'] / max(1, n):.1f}%); daemon alive at the end: {r['daemon_alive_at_end']}, "
             f"protected service alive: {r['protected_alive_at_end']}", ""]
    lines += md.table(["t (s)", "VmRSS (KiB)", "VmHWM (KiB)", "fds", "threads", "daemon kills", "kernel kills"],
                      ([s["t_s"], s.get("VmRSS", ""), s.get("VmHWM", ""), s.get("fds", ""), s.get("threads", ""),
                        s["daemon_kills"], s["kernel_kills"]] for s in r["samples"]), align="rrrrrrr")
    if len(r["samples"]) >= 2:
        first, last = r["samples"][0], r["samples"][-1]
        lines += ["", f"RSS {last.get('VmRSS', 0) - first.get('VmRSS', 0):+d} KiB, fds "
                      f"{last.get('fds', 0) - first.get('fds', 0):+d}, threads "
                      f"{last.get('threads', 0) - first.get('threads', 0):+d} from the first sample to the last."]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    t = [s["t_s"] for s in r["samples"]]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(t, [s.get("VmRSS", 0) / 1024 for s in r["samples"]], label="VmRSS (MiB)")
    a.plot(t, [s.get("fds", 0) for s in r["samples"]], label="open fds")
    a.plot(t, [s.get("threads", 0) for s in r["samples"]], label="threads")
    a.legend()
    a.set_title("the daemon over the soak")
    b.plot(t, [s["daemon_kills"] for s in r["samples"]], label="killed by the daemon")
    b.plot(t, [s["kernel_kills"] for s in r["samples"]], label="killed by the kernel")
    b.set_xlabel("seconds")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
