"""Cgroup trees a user shapes inside their own job, on the real kernel, in
arenas: none of them may stop every kill, nor protect the user's job.

Whoever owns a cgroup (a delegated ``user@UID.service``) may name its
children anything the kernel takes (every character but ``/`` and ``\\n``),
nest them as deep as they like, and name them after a protected service.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kproc import HOPPER

MIB = 1 << 20
NOBODY = 65534


def _rank(arena, *extra: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--json", *extra],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def _start(daemon, arena, *extra: str):
    return daemon("--domain", arena.path, "--redline", "1M", "--sources", "timer",
                  "--post-kill-delay-ms", "0", *extra)


@pytest.mark.parametrize("odd", ["\r", "\u2028", "\x1c"], ids=repr)
def test_a_cgroup_named_with_a_line_end_does_not_stop_the_kill(arena, daemon, odd):
    """The kernel takes these in a cgroup's name; /proc/PID/cgroup shows the
    name as it is. A process moved into one, before the daemon starts and
    after, must not stop the listing."""
    evil = arena.job("evil", v2=False)      # hybrid: its v2 cgroup is found from /proc/PID/cgroup
    mover = arena.spawn_idle(evil, 1 * MIB)
    late = arena.spawn_idle(evil, 1 * MIB)
    victim = arena.job("victim")
    v = arena.spawn_idle(victim, 32 * MIB)
    for name, p in ((f"a{odd}b", mover),):
        weird = os.path.join(evil.path, name)
        os.mkdir(weird)
        arena._dirs.append(weird)
        with open(os.path.join(weird, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
    assert [c["job"] for c in _rank(arena)] == ["victim", "evil"]
    d = _start(daemon, arena)
    weird = os.path.join(evil.path, f"c{odd}d")     # and one made while it runs
    os.mkdir(weird)
    arena._dirs.append(weird)
    with open(os.path.join(weird, "cgroup.procs"), "w") as f:
        f.write(str(late.pid))
    assert d.ctl("lowmem").returncode == 0
    assert v.wait(timeout=10) == -9
    assert mover.poll() is None and late.poll() is None
    assert "Traceback" not in d.stderr(), d.stderr()


def test_a_thousand_nested_cgroups_do_not_stop_the_kill(arena, daemon):
    evil = arena.job("evil", v2=False)
    arena.spawn_idle(evil, 1 * MIB)
    victim = arena.job("victim")
    v = arena.spawn_idle(victim, 32 * MIB)
    path = evil.path
    for _ in range(1000):
        path = os.path.join(path, "d")
        os.mkdir(path)
        arena._dirs.append(path)
    by_job = {c["job"]: c for c in _rank(arena)}        # it used to exit 1 with a RecursionError
    assert "subtree deeper than 64 levels: not read below that" in by_job["evil"]["reasons"]
    d = _start(daemon, arena)
    assert d.ctl("lowmem").returncode == 0
    assert v.wait(timeout=10) == -9
    assert "Traceback" not in d.stderr(), d.stderr()


def test_a_users_cgroup_named_after_a_protected_one_does_not_protect_their_job(arena, daemon):
    job = arena.job("user-1000.slice", v2=False)
    for p in (job.path, os.path.join(job.path, "cgroup.procs")):
        os.chown(p, NOBODY, NOBODY)
    user = arena.spawn_idle(job, 32 * MIB)
    web = arena.spawn_idle(arena.job("web"), 4 * MIB)
    inner = os.path.join(job.path, "sshd.service")
    subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "mkdir", inner],
                   check=True, timeout=10)
    arena._dirs.append(inner)
    by_job = {c["job"]: c for c in _rank(arena, "--protect", "sshd.service")}
    u = by_job["user-1000.slice"]
    assert u["killable"] and u["reasons"][0] == "normal"
    assert ("protect glob 'sshd.service' ignored below: cgroup 'user-1000.slice/sshd.service' "
            f"owned by uid {NOBODY}") in u["reasons"]
    d = _start(daemon, arena, "--protect", "sshd.service")
    assert d.ctl("lowmem").returncode == 0
    assert user.wait(timeout=10) == -9
    assert web.poll() is None


PIPES = r"""
import fcntl, os, sys, time
target, total, held = int(sys.argv[1]), 0, []
chunk = b"\0" * (1 << 20)
while total < target:
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        fcntl.fcntl(w, 1031, 1 << 20)      # F_SETPIPE_SZ
    except OSError:
        pass
    try:
        while True:
            total += os.write(w, chunk)
    except BlockingIOError:
        pass
    held.append((r, w))
print("ready", flush=True)
time.sleep(3600)
"""


def test_memory_held_in_kernel_buffers_counts_in_the_score(arena):
    # Pipe buffers are kernel memory charged to the job, not one anonymous
    # page: a job holding 96 MiB that way ranks above one with 30 MiB of anon.
    piper, honest = arena.job("piper"), arena.job("honest")
    p = arena.spawn(piper, [sys.executable, "-c", PIPES, str(96 << 20)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    arena.spawn_idle(honest, 30 << 20)
    out = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    ranked = json.loads(out.stdout)
    assert [c["job"] for c in ranked] == ["piper", "honest"], ranked
    assert ranked[0]["score_bytes"] > 90 << 20




def _hopping_job(arena, name: str, v2: bool):
    """A job whose one process (60 MiB) hops between its two child cgroups."""
    job = arena.job(name, v2=v2)
    sides = []
    for side in ("a", "b"):
        dirs = []
        for top in job.cgroups():
            d = os.path.join(top, side)
            os.mkdir(d)
            arena._dirs.append(d)
            dirs.append(d)
        sides.append(",".join(dirs))
    p = arena.spawn(job, [sys.executable, "-c", HOPPER, str(60 * MIB), *sides], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return job, p


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup.kill", "v1-only"])
def test_a_process_hopping_between_its_jobs_cgroups_does_not_make_it_look_empty(arena, daemon, v2):
    """Pid lists are read one cgroup after another: a process moved between
    two of them while they are read is in neither. Its job must not rank as
    empty, nor the kill pass over it to an innocent job."""
    from oomkiller.cgroupfs import Cgroupfs
    from oomkiller.core.rank import Policy, rank
    from oomkiller.killer import Killer

    cg = Cgroupfs()
    policy = Policy(self_pid=os.getpid())
    runs = 4
    for run in range(runs):
        _, hopper = _hopping_job(arena, f"hop{run}", v2)
        quiet = arena.spawn_idle(arena.job(f"quiet{run}"), 12 * MIB)
        globs = (f"hop{run}", f"quiet{run}")
        if run == 0:
            for _ in range(20):
                c = {c.job.name: c for c in rank(cg.jobs(arena.path, globs), policy, 256 << 20).candidates}
                assert c["hop0"].killable and "empty" not in c["hop0"].reasons, c["hop0"].reasons
                assert c["hop0"].score_bytes > c["quiet0"].score_bytes
        ranking = rank(cg.jobs(arena.path, globs), policy, 256 << 20)
        assert ranking.candidates[0].job.name == f"hop{run}", ranking
        attempts = Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=5_000_000).walk(ranking)
        assert [(c.job.name, r.ok) for c, r in attempts] == [(f"hop{run}", True)], attempts
        assert hopper.wait(timeout=10) == -9
        assert quiet.poll() is None

    # and through the daemon's walk
    _, hopper = _hopping_job(arena, "hopd", v2)
    quiet = arena.spawn_idle(arena.job("quietd"), 12 * MIB)
    d = _start(daemon, arena, "--jobs", "hopd", "--jobs", "quietd")
    assert d.ctl("lowmem").returncode == 0
    assert hopper.wait(timeout=10) == -9
    assert quiet.poll() is None
    assert "(skip) job" not in d.stderr() and "Traceback" not in d.stderr(), d.stderr()
