"""The SIGTERM step in an arena: a job that exits on SIGTERM is not
killed; one that ignores it and keeps growing is killed at the redline."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from kproc import wait_for

# argv: bytes to hold. On SIGTERM: "polite" exits 42; "stubborn" says so and
# grows by 4 MiB every 20 ms until it is killed.
SOURCE = r"""
import signal, sys, time
mode, hold = sys.argv[1], int(sys.argv[2])
termed = []
def on_term(*_):
    if mode == "polite":
        print("bye", flush=True)
        sys.exit(42)
    print("ignoring SIGTERM", flush=True)
    termed.append(1)
signal.signal(signal.SIGTERM, on_term)
held = [b"\x5a" * hold]
print("ready", flush=True)
while True:
    time.sleep(0.02)
    if termed:
        held.append(b"\x5a" * (4 << 20))
"""


def _spawn(arena, job, mode: str, hold: int) -> subprocess.Popen:
    p = arena.spawn(job, [sys.executable, "-c", SOURCE, mode, str(hold)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _hook(tmp_path, body: str) -> str:
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    path = d / "post"
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def test_a_job_that_exits_on_sigterm_is_not_killed(arena, daemon, tmp_path):
    env_out = tmp_path / "post.env"
    post = _hook(tmp_path, f"env > {env_out}\n")
    d = daemon("--domain", arena.path, "--redline", "32M", "--term-redline", "128M", "--term-grace-ms", "1000",
               "--post-kill", post)
    job = arena.job("polite")
    p = _spawn(arena, job, "polite", 150 << 20)     # free about 100 of 256 MiB: below 128M, above 32M
    assert p.wait(timeout=30) == 42 and p.stdout.readline().strip() == "bye"
    (rec,) = wait_for(lambda: [r for r in d.records() if r.get("result") == "termed"], 5, "the SIGTERM's record")
    assert rec.decision == "free below term_redline" and rec.victim["job"] == "polite"
    (attempt,) = rec.attempts
    assert attempt["method"] == "term" and attempt["pids"] == [p.pid] and attempt["emptied"] is False
    assert rec.snapshot["free_bytes"] < 128 << 20 and rec.redline_bytes == 32 << 20
    assert not [r for r in d.records() if r.get("result") == "killed"]
    assert arena.kernel_oom_kills() == 0
    d.wait_log("OOM: sent SIGTERM to job 'polite' (1 procs)")
    info = d.ctl("info").stdout
    assert "SIGTERM step: term_redline 128M, grace 1000 ms, SIGTERMs 1" in info and "kills: 0 " in info
    wait_for(lambda: env_out.exists() and "OOMKILLER_RESULT" in env_out.read_text(), 10, "post_kill")
    env = dict(line.split("=", 1) for line in env_out.read_text().splitlines() if "=" in line)
    assert (env["OOMKILLER_SIGNAL"], env["OOMKILLER_RESULT"], env["OOMKILLER_TRIGGER"]) == \
        ("TERM", "termed", "term_redline")


def test_a_job_that_ignores_sigterm_and_grows_is_killed_at_the_redline(arena, daemon):
    d = daemon("--domain", arena.path, "--redline", "32M", "--term-redline", "128M", "--term-grace-ms", "60000")
    job = arena.job("stubborn")
    p = _spawn(arena, job, "stubborn", 150 << 20)
    assert p.stdout.readline().strip() == "ignoring SIGTERM"
    # the grace is a minute: the kill at the redline does not wait for it
    assert p.wait(timeout=30) == -signal.SIGKILL
    assert arena.kernel_oom_kills() == 0, "the kernel OOM killer acted first"
    recs = wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"] and d.records(), 5,
                    "the kill record")
    termed = [r for r in recs if r.get("result") == "termed"]
    assert len(termed) == 1 and termed[0].victim["job"] == "stubborn"
    (killed,) = [r for r in recs if r.get("result") == "killed"]
    assert killed.decision in ("free below redline", "armed kill in the kernel")
    assert killed.victim["job"] == "stubborn"
