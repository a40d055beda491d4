"""Hooks around real kills in an arena: post_kill gets the decision the
daemon wrote, and a pre_kill hook that hangs does not hold the kill."""
from __future__ import annotations

import json
import os
import signal

from kproc import wait_for

from oomkiller.model import parse_record


def _hook(tmp_path, name: str, body: str) -> str:
    """A hook in a root-owned folder of the test's own, mode 755."""
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    path = d / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def _env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_post_kill_records_the_decision_of_a_real_kill(arena, daemon, tmp_path):
    out = tmp_path / "out"
    post = _hook(tmp_path, "post", f"cat > {out}.json\nenv > {out}.env\n")
    job = arena.job("hog")
    d = daemon("--domain", arena.path, "--redline", "64M", "--sleep-ms", "100", "--post-kill", post)
    hog = arena.spawn_hog(job, 8 << 20, 0.05)
    assert hog.wait(timeout=60) == -signal.SIGKILL
    assert arena.kernel_oom_kills() == 0, "the kernel OOM killer acted first"
    wait_for(lambda: (tmp_path / "out.env").exists() and "OOMKILLER_PIDS=" in (tmp_path / "out.env").read_text(),
             10, "the post_kill hook's run")
    (killed,) = [line for line in d.json_path.read_text().splitlines() if '"result":"killed"' in line]
    got = (tmp_path / "out.json").read_text()
    assert got == killed + "\n"         # the very record the daemon wrote
    rec = parse_record(json.loads(got))
    env = _env(tmp_path / "out.env")
    assert env["OOMKILLER_HOOK"] == "post_kill" and env["OOMKILLER_SIGNAL"] == "KILL"
    assert env["OOMKILLER_JOB"] == "hog" and env["OOMKILLER_CGROUP"] == job.path
    assert env["OOMKILLER_CGROUP_V2"] == job.v2_path
    assert env["OOMKILLER_RESULT"] == "killed" and env["OOMKILLER_FREED_BYTES"] == str(rec.freed_bytes)
    assert str(hog.pid) in env["OOMKILLER_PIDS"].split()
    assert env["OOMKILLER_TRIGGER"] in ("redline", "armed") and env["OOMKILLER_DOMAIN_NAME"] == rec.domain
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert not {k for k in env if not k.startswith("OOMKILLER_")} - {"PATH", "PWD", "SHLVL", "_", "OLDPWD"}
    assert "hooks: post_kill=" in d.ctl("info").stdout and ", ok=1, failed=0, timed_out=0, dropped=0" in \
        d.ctl("info").stdout


def test_a_pre_kill_hook_that_hangs_does_not_stop_the_kill(arena, daemon, tmp_path):
    started, pidfile, finished = tmp_path / "started", tmp_path / "pid", tmp_path / "finished"
    pre = _hook(tmp_path, "pre", f"cat > {started}\nsleep 3600 &\necho $! > {pidfile}\nwait\necho x > {finished}\n")
    job = arena.job("hog")
    # no prearm: the kill is the daemon's own walk, which pre_kill precedes
    d = daemon("--domain", arena.path, "--redline", "64M", "--sleep-ms", "100", "--sources", "ebpf,psi,memcg,timer",
               "--pre-kill", pre, "--hook-timeout-ms", "600000")
    hog = arena.spawn_hog(job, 8 << 20, 0.05)
    assert hog.wait(timeout=60) == -signal.SIGKILL
    assert arena.kernel_oom_kills() == 0
    (rec,) = wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"], 5, "the kill record")
    sleeper = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the hook's child"))
    # the kill is done and written while the hook still runs
    assert not finished.exists() and os.path.exists(f"/proc/{sleeper}")
    pre_rec = parse_record(json.loads(started.read_text()))
    assert pre_rec.victim["job"] == "hog" and pre_rec.attempts == () and pre_rec.decision == rec.decision
    assert ", ok=0, failed=0, timed_out=0, dropped=0, queued=0" in d.ctl("info").stdout
    # the daemon's stop ends the hook with its process group
    assert d.stop() == 0
    wait_for(lambda: not os.path.exists(f"/proc/{sleeper}"), 10, "the hook's child killed")
    assert not finished.exists()
