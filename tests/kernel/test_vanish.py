"""Cgroups and processes that vanish during a walk, and whose xattrs count,
on the real kernel, in arenas.

The jobs are listed and ranked through the daemon's own code (``Daemon.jobs``
and its ``rank`` command). A cgroup is removed, or a process reaped, between
the open of one of its files and the read, so the read fails the way the
kernel makes it fail: ENODEV for a cgroup's file, ESRCH for a process's.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from kproc import rmdir_cgroup, wait_for

import oomkiller.files as files_mod
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.config import Config
from oomkiller.daemon import Daemon

MIB = 1 << 20


def _daemon(arena, tmp_path) -> Daemon:
    return Daemon(Config(domain=arena.path, control_socket=str(tmp_path / "unused.sock")))


def _ranking(d: Daemon) -> list[dict]:
    ok, _text, data = d.handle("rank")
    assert ok
    return data["ranking"]


def _remove(arena, job) -> None:
    """Remove an arena job's cgroups (both trees on hybrid hosts); it must be empty."""
    wait_for(lambda: not Cgroupfs().subtree_pids(job.path), 5, f"{job.name} to empty")
    for path in dict.fromkeys((job.v2_path, job.path)):     # one folder on pure v2
        wait_for(lambda: rmdir_cgroup(path), 5, f"{path} to be removed")
        arena._dirs.remove(path)


class RemoveOnRead:
    """Stands in for ``open`` in files, through which the listing reads
    every job's and process's files: the first open of ``target`` opens it
    for real, then runs ``then`` (which removes what the file belongs to),
    and hands back the open file, whose read now fails."""

    def __init__(self, target: str, then) -> None:
        self.target, self.then = target, then
        self.errno: int | None = None
        self.fired = False
        self._open = open

    def __call__(self, path, *args, **kwargs):
        f = self._open(path, *args, **kwargs)
        if os.fspath(path) == self.target and not self.fired:
            self.fired = True
            self.then()
            try:
                os.pread(f.fileno(), 64, 0)
                self.errno = 0
            except OSError as e:
                self.errno = e.errno        # what the listing's read gets next
        return f


def test_a_job_removed_mid_walk_does_not_lose_the_walk(arena, tmp_path, monkeypatch):
    big, mid, doomed = arena.job("big"), arena.job("mid"), arena.job("doomed")
    arena.spawn_idle(big, 40 * MIB)
    arena.spawn_idle(mid, 20 * MIB)
    # the biggest of all, it ends and its cgroup is removed while it is read
    last = arena.spawn_idle(doomed, 60 * MIB)
    d = _daemon(arena, tmp_path)
    assert [c["job"] for c in _ranking(d)] == ["doomed", "big", "mid"]

    def end_it():
        last.kill()
        last.wait()
        _remove(arena, doomed)
    hook = RemoveOnRead(os.path.join(doomed.path, "cgroup.procs"), end_it)
    monkeypatch.setattr(files_mod, "open", hook, raising=False)
    assert sorted(j.name for j in d.jobs()) == ["big", "mid"]
    assert hook.errno == errno.ENODEV, "the cgroup's file did not fail as a removed cgroup's does"
    monkeypatch.undo()
    ranked = _ranking(d)
    assert [(c["job"], c["killable"]) for c in ranked] == [("big", True), ("mid", True)]


def test_an_empty_job_removed_mid_rank_and_a_reaped_process(arena, tmp_path, monkeypatch):
    """The daemon's rank command: one empty job cgroup and one inner cgroup
    removed as they are read (ENODEV), and the biggest job's process reaped
    as its /proc files are read (ESRCH): the others are ranked, the biggest
    job left empty is not killable, and the victim is the next one."""
    small, parent, gone, hog = arena.job("small"), arena.job("parent"), arena.job("gone"), arena.job("hog")
    inner = arena.job("parent/inner")
    arena.spawn_idle(small, 10 * MIB)
    arena.spawn_idle(parent, 30 * MIB)
    h = arena.spawn_idle(hog, 60 * MIB)
    d = _daemon(arena, tmp_path)
    before = {c["job"]: c for c in _ranking(d)}
    assert before["hog"]["killable"] and not before["gone"]["killable"]

    hooks = [RemoveOnRead(os.path.join(gone.path, "cgroup.procs"), lambda: _remove(arena, gone)),
             RemoveOnRead(os.path.join(inner.path, "cgroup.procs"), lambda: _remove(arena, inner)),
             RemoveOnRead(f"/proc/{h.pid}/stat", lambda: (h.kill(), h.wait()))]

    def chain(path, *args, **kwargs):
        for hook in hooks:
            if os.fspath(path) == hook.target:
                return hook(path, *args, **kwargs)
        return open(path, *args, **kwargs)
    monkeypatch.setattr(files_mod, "open", chain, raising=False)
    ranked = _ranking(d)
    monkeypatch.undo()
    assert [h.errno for h in hooks] == [errno.ENODEV, errno.ENODEV, errno.ESRCH]
    assert sorted(c["job"] for c in ranked) == ["hog", "parent", "small"]
    by_job = {c["job"]: c for c in ranked}
    assert not by_job["hog"]["killable"] and "empty" in by_job["hog"]["reasons"]
    assert [c["job"] for c in ranked if c["killable"]] == ["parent", "small"]


@pytest.mark.parametrize("owner", [65534, 0])
def test_an_omit_xattr_counts_only_on_a_root_owned_job(arena, tmp_path, owner):
    """systemd-oomd's rule: a user who owns a cgroup can set its xattrs, so
    those of a cgroup not owned by root are not honoured. They are read on
    the job's memory cgroup: on hybrid hosts the v1 one, whose cgroupfs
    takes user xattrs (and a chown) as cgroup2 does."""
    job, other = arena.job("marked"), arena.job("other")
    os.setxattr(job.path, "user.oomd_omit", b"1")
    os.chown(job.path, owner, owner)
    marked = arena.spawn_idle(job, 40 * MIB)
    arena.spawn_idle(other, 10 * MIB)
    by_job = {c["job"]: c for c in _ranking(_daemon(arena, tmp_path))}
    m = by_job["marked"]
    if owner:
        assert m["killable"] and m["reasons"][0] == "normal"
        assert f"user.oomd_omit ignored: cgroup owned by uid {owner}" in m["reasons"]
    else:
        assert not m["killable"] and m["reasons"][0] == "protect: xattr user.oomd_omit"
    assert by_job["other"]["killable"]
    # `oomkiller rank` says the same
    out = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", arena.path, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (cli,) = [c for c in json.loads(out.stdout) if c["job"] == "marked"]
    assert (cli["killable"], cli["reasons"][0]) == (m["killable"], m["reasons"][0])
    assert marked.poll() is None


def test_a_removed_domain_is_one_warning_and_the_daemon_comes_back_to_it(arena, daemon):
    dom = arena.job("dom")
    d = daemon("--domain", dom.path, "--redline", "1M", "--sleep-ms", "50", "--sources", "timer,memcg,psi")
    info = json.loads(d.ctl("info", "--json").stdout)
    assert info["domain_state"] == "live" and info["sources"]["psi"]["files"] == 2     # the host's, the domain's
    for path in dict.fromkeys((dom.path, dom.v2_path)):
        os.rmdir(path)
    wait_for(lambda: "GONE" in d.ctl("info").stdout, 5, "info to say the domain is gone")
    import time
    time.sleep(1)       # 20 timer wakes on a gone domain
    err = d.stderr()
    assert err.count("is gone") == 1 and "Traceback" not in err, err
    assert d.p.poll() is None
    for path in dict.fromkeys((dom.path, dom.v2_path)):
        os.mkdir(path)
    wait_for(lambda: json.loads(d.ctl("info", "--json").stdout)["domain_state"] == "live", 5, "the domain back")
    # the PSI trigger on the old cgroup's memory.pressure is replaced by one on the new one's
    info = json.loads(d.ctl("info", "--json").stdout)
    assert info["sources"]["psi"]["files"] == 2, info["sources"]
    assert not [k for k in info["sources"] if k.startswith("psi fd")], info["sources"]
    victim = arena.job("dom/victim")
    p = arena.spawn_idle(victim, 8 * MIB)
    assert d.ctl("lowmem").returncode == 0
    assert p.wait(timeout=10) == -9
    d.wait_log("is back: watching it again")


def test_the_domains_memory_files_held_open_read_the_charge_of_now(arena, tmp_path):
    """The domain's memory.stat and usage are read through descriptors kept
    open (one pread each per wake): a real cgroup's file read again from
    its start says what is charged now."""
    d = _daemon(arena, tmp_path)
    assert d.domain._held is not None
    before = d.domain.snapshot(1).used_bytes
    p = arena.spawn_idle(arena.job("grows"), 40 * MIB)
    wait_for(lambda: d.domain.snapshot(2).used_bytes >= before + 30 * MIB, 10, "the new charge to show")
    assert len(d.domain._held._held) >= 2
    p.kill()
    p.wait()
