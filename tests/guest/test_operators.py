"""What an operator's tools see of a kill by the deployed unit: the kernel
log line (`journalctl -k`), a post_kill hook that ran with the decision, and
a pre_kill hook that hangs without holding the kill back."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from guestlib import (DAEMON_KILL_RESULT, MIB, Daemon, kernel_oom_kills, sh, start_hog, start_idle,
                      stop_test_units, wait_for)

HOOK_DIR = "/usr/local/libexec/oomkt-hooks"
# The unit's sandbox lets the daemon (and so its hooks) write only below
# /sys/fs/cgroup, tracefs and its runtime folder.
OUT_DIR = "/run/oomkiller"
# Each file is written whole, then renamed into place, the env one last.
POST_KILL = f"""#!/bin/sh
cat > {OUT_DIR}/post-kill.json.part
env | grep '^OOMKILLER_' | sort > {OUT_DIR}/post-kill.env.part
mv {OUT_DIR}/post-kill.json.part {OUT_DIR}/post-kill.json
mv {OUT_DIR}/post-kill.env.part {OUT_DIR}/post-kill.env
"""
# A pre_kill that never ends: the kill must not wait for it, and it is
# killed with its process group at hook_timeout_ms.
PRE_KILL = """#!/bin/sh
exec sleep 600
"""
HOOK_TIMEOUT_MS = 8000


def _write_hook(name: str, text: str) -> str:
    path = os.path.join(HOOK_DIR, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def hooked():
    os.makedirs(HOOK_DIR, mode=0o755, exist_ok=True)
    os.chmod(HOOK_DIR, 0o755)
    post, pre = _write_hook("post-kill", POST_KILL), _write_hook("pre-kill", PRE_KILL)
    d = Daemon(OOMKILLER_SOURCES="psi,timer", OOMKILLER_SLEEP_MS="100", OOMKILLER_POST_KILL=post,
               OOMKILLER_PRE_KILL=pre, OOMKILLER_HOOK_TIMEOUT_MS=str(HOOK_TIMEOUT_MS)).start()
    try:
        yield d
    finally:
        d.stop()
        stop_test_units()
        shutil.rmtree(HOOK_DIR, ignore_errors=True)


def test_a_kill_runs_the_hooks_logs_to_the_kernel_and_a_hanging_hook_does_not_hold_it(hooked):
    d = hooked
    assert d.info()["output"]["hooks"]["ran"] == 0
    oom_before = kernel_oom_kills()
    bystander = start_idle("oomkt-hook-bystander", 16 * MIB)
    t0 = time.monotonic()
    hog = start_hog("oomkt-hooked", 4 * MIB, 0.02)
    res = hog.wait_dead(180)
    (rec,) = wait_for(d.kills, 10, "the decision record")
    assert (res["Result"], res["ExecMainCode"], res["ExecMainStatus"]) == DAEMON_KILL_RESULT, res
    assert kernel_oom_kills() == oom_before, "the kernel's OOM killer acted"
    job = "system.slice/oomkt-hooked.service"
    assert rec["victim"]["job"] == job
    # The pre_kill hook sleeps: the kill did not wait for it (the whole
    # decision, from the wake to the job empty, took well under its limit).
    assert rec["timings_usec"]["total"] < HOOK_TIMEOUT_MS * 1000 // 2, rec["timings_usec"]

    # post_kill: the decision on stdin, the essentials in its environment
    got = wait_for(lambda: os.path.exists(f"{OUT_DIR}/post-kill.env") and
                   open(f"{OUT_DIR}/post-kill.json").read(), 20, "the post_kill hook's output")
    posted = json.loads(got)
    assert posted["event"] == "oom_decision" and posted["result"] == "killed"
    assert posted["victim"]["job"] == job and posted["decision"] == rec["decision"]
    env = dict(line.split("=", 1) for line in open(f"{OUT_DIR}/post-kill.env").read().splitlines())
    assert env["OOMKILLER_HOOK"] == "post_kill" and env["OOMKILLER_JOB"] == job
    assert env["OOMKILLER_RESULT"] == "killed" and int(env["OOMKILLER_FREED_BYTES"]) > 0

    # the hanging pre_kill was ended at its limit, and counted
    # (post_kill's run is counted once it has exited and what it left is
    # swept, a moment after its files are written)
    hooks = wait_for(lambda: (lambda h: h if h["timed_out"] >= 1 and h["ok"] >= 1 else None)(
        d.info()["output"]["hooks"]), HOOK_TIMEOUT_MS / 1000 + 20, "pre_kill to time out and post_kill to end")
    assert hooks["failed"] == 0, hooks
    assert not sh("pgrep", "-f", "sleep 600", check=False).stdout.strip(), "the hanging hook outlived its limit"
    warned = sh("journalctl", "-b", "-t", "oomkiller", "-p", "warning", f"_PID={d.pid}", "-o", "cat", "--no-pager",
                check=False).stdout
    assert f"OOM: pre_kill hook {HOOK_DIR}/pre-kill timed out" in warned, warned[-2000:]

    # the kernel log: one line for the kill, as kernel-log alerting reads it
    # (journald takes the "oomkiller: " the line starts with for its identifier)
    kmsg = sh("journalctl", "-k", "-b", "-o", "json", "--no-pager", check=False).stdout
    entries = [json.loads(line) for line in kmsg.splitlines() if line.strip()]
    lines = [e.get("MESSAGE", "") for e in entries if e.get("SYSLOG_IDENTIFIER") == "oomkiller"
             and isinstance(e.get("MESSAGE"), str) and e["MESSAGE"].startswith(f"Killed job '{job}' by ")]
    assert len(lines) == 1, [e.get("MESSAGE") for e in entries][-20:]
    assert " freed (" in lines[0], lines[0]
    assert bystander.active(), "a bystander service was killed"
    assert d.alive()
    print(f"killed {job} {time.monotonic() - t0:.1f} s after it started; hooks {hooks}; {lines[0]}")
