"""Hooks: which files may be one, how a run is fed, bounded and ended, and
that the kill loop never waits on one (beyond pre_kill_wait_ms). Orderings
are shown by files the hooks write and counters, never by how long
something took."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from trees import short_arena, short_config

from oomkiller import config as cfg
from oomkiller.hooks import OUTPUT_TAIL_BYTES, POST_KILL, PRE_KILL, Hooks, environment, hook_problem, trigger_word
from oomkiller.model import EventKind, KillResult, PressureEvent, Source, parse_record

MiB = 1 << 20
EUID = os.geteuid()


def wait_for(cond, what: str, timeout_s: float = 20.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hookdir(tmp_path):
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    return d


def script(d, name: str, body: str, mode: int = 0o755) -> str:
    path = d / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def runners():
    made = []

    def make(*args, **kw):
        h = Hooks(*args, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def inputs(stdin: bytes = b'{"event":"oom_decision"}\n', **env):
    return lambda: (stdin, {"PATH": "/usr/bin:/bin", **env})


# -- which file may be a hook ----------------------------------------------------------------

def test_a_hook_must_be_an_executable_file_that_only_its_owner_can_change(hookdir, tmp_path):
    ok = script(hookdir, "ok", "exit 0\n")
    assert hook_problem(ok) is None
    assert hook_problem(str(hookdir / "missing")) == f"{hookdir}/missing: no such file"
    assert hook_problem(str(hookdir)).endswith(": a directory, not a program")
    assert hook_problem(script(hookdir, "plain", "exit 0\n", 0o644)).endswith("not executable (chmod 755 it)")
    assert "writable by group or others (mode 0775)" in hook_problem(script(hookdir, "gw", "exit 0\n", 0o775))
    assert "writable by group or others (mode 0757)" in hook_problem(script(hookdir, "ow", "exit 0\n", 0o757))
    # a folder on the way that others may write to: the hook could be replaced
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    inside = script(open_dir, "h", "exit 0\n")
    assert hook_problem(inside) == (f"{inside}: folder {open_dir} is writable by group or others (mode 0777), "
                                    "who could replace the hook")
    # ... unless it is sticky (as /tmp): only an entry's owner may replace it
    os.chmod(open_dir, 0o1777)
    assert hook_problem(inside) is None
    # a link is judged by what it leads to, and the folders of both
    link = hookdir / "link"
    link.symlink_to(script(hookdir, "gw2", "exit 0\n", 0o775))
    assert f"{link} (that is {hookdir}/gw2): writable by group" in hook_problem(str(link))
    assert hook_problem("relative/hook") == "relative/hook: not an absolute path"


@pytest.mark.skipif(EUID != 0, reason="needs root to give a file to another user")
def test_a_hook_owned_by_another_user_is_refused_when_the_daemon_runs_as_root(hookdir):
    theirs = script(hookdir, "theirs", "exit 0\n")
    os.chown(theirs, 65534, 65534)
    assert hook_problem(theirs) == (f"{theirs}: owned by uid 65534; a hook runs with the daemon's privileges, so it "
                                    "must be owned by root")
    # a daemon running as that user may run its own
    assert hook_problem(theirs, euid=65534) is None
    os.chown(hookdir, 65534, 65534)
    mine = script(hookdir, "mine", "exit 0\n")
    assert "folder " + str(hookdir) + " is owned by uid 65534, who could replace the hook" in hook_problem(mine)


@pytest.mark.skipif(EUID != 0, reason="needs root to give a link to another user")
def test_a_link_on_the_way_that_another_user_owns_is_refused(hookdir, tmp_path):
    # A sticky folder as /tmp: the hook's path named there before anything
    # was put at it (or after a cleaner removed it) is anyone's to make: a
    # link of theirs to a root-owned program (a shell, fed the record with
    # its job names on stdin) passed every check on what the link led to.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "notify"
    link.symlink_to("/bin/sh")
    os.lchown(link, 65534, 65534)
    assert hook_problem(str(link)) == (f"{link}: symbolic link {link} is owned by uid 65534, who could point it at "
                                       "another program; it must be owned by root")
    # ... also as a folder on the way, and further along a chain of links
    hook = script(hookdir, "ok", "exit 0\n")
    theirs = sticky / "dir"
    theirs.symlink_to(hookdir)
    os.lchown(theirs, 65534, 65534)
    assert "symbolic link " + str(theirs) + " is owned by uid 65534" in hook_problem(f"{theirs}/ok")
    chain = hookdir / "chain"
    chain.symlink_to(link)
    assert "symbolic link " + str(link) + " is owned by uid 65534" in hook_problem(str(chain))
    # the daemon's own (root's) links are fine, where no one else may replace them
    os.lchown(link, 0, 0)
    assert hook_problem(str(link)) is None
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    via = open_dir / "via"
    via.symlink_to(hook)
    assert "folder " + str(open_dir) + " is writable by group or others" in hook_problem(str(via))


def test_the_file_run_is_the_one_checked_not_where_a_link_leads_later(hookdir, tmp_path, runners):
    good = script(hookdir, "good", f"echo good > {tmp_path}/ran\n")
    other = script(hookdir, "other", f"echo other > {tmp_path}/ran\n")
    link = hookdir / "link"
    link.symlink_to(good)

    def make():
        # between the check and the start, the link is pointed elsewhere
        link.unlink()
        link.symlink_to(other)
        return inputs()()
    h = runners(post_kill=str(link))
    done = h.submit(POST_KILL, make)
    assert done is not None and done.wait(20)
    assert (tmp_path / "ran").read_text() == "good\n"


def test_hook_keys_are_read_like_the_others_and_checked_at_start(hookdir):
    ok = script(hookdir, "ok", "exit 0\n")
    conf = cfg.load(cli={"post_kill": ok, "hook_timeout_ms": 250},
                    environ={"OOMKILLER_PRE_KILL": ok, "OOMKILLER_PRE_KILL_WAIT_MS": "100"})
    assert (conf.pre_kill, conf.post_kill, conf.hook_timeout_ms, conf.pre_kill_wait_ms) == (ok, ok, 250, 100)
    conf.check_hooks()
    assert cfg.Config().pre_kill == cfg.Config().post_kill == "" and cfg.Config().pre_kill_wait_ms == 0
    cfg.Config().check_hooks()      # none set: nothing to check
    with pytest.raises(cfg.ConfigError, match=r"^environment: bad value for 'OOMKILLER_POST_KILL': 'hook.sh' is not "
                                              r"an absolute path$"):
        cfg.load(environ={"OOMKILLER_POST_KILL": "hook.sh"})
    with pytest.raises(cfg.ConfigError, match=r"'pre_kill_wait_ms': 20000 is outside 0..10000"):
        cfg.load(cli={"pre_kill_wait_ms": 20000})
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'post_kill': .*/gw: writable by group"):
        cfg.load(cli={"post_kill": script(hookdir, "gw", "exit 0\n", 0o775)}).check_hooks()
    # not from the kernel command line: a boot entry must not name a program to run as root
    warned = []
    assert cfg.load(cmdline=f"oomkiller.post_kill={ok}", warn=warned.append).post_kill == ""
    assert "a key read only from the config file, environment or flags" in warned[0]


def test_the_daemon_refuses_to_start_with_a_hook_it_must_not_run(hookdir, tmp_path):
    gw = script(hookdir, "gw", "exit 0\n", 0o775)
    out = subprocess.run([sys.executable, "-m", "oomkiller", "run", "--control", str(tmp_path / "c.sock"),
                          "--post-kill", gw, "--dry-run"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "OOMKILLER_PROTECT_SELF": "0"})
    assert out.returncode == cfg.EXIT_CONFIG, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (f"oomkiller: config error: command line: bad value for "
                                                   f"'post_kill': {gw}: writable by group or others (mode 0775); "
                                                   "anyone who can write it could run commands with the daemon's "
                                                   "privileges (chmod go-w it)")
    assert not os.path.exists(tmp_path / "c.sock")


# -- a run ----------------------------------------------------------------------------------

def test_a_hook_gets_the_record_on_stdin_a_clean_environment_cwd_root_and_no_other_descriptor(hookdir, tmp_path,
                                                                                               runners):
    out = tmp_path / "out"
    path = script(hookdir, "record", f"""cat > {out}.stdin
env > {out}.env
pwd > {out}.cwd
cat /proc/$$/oom_score_adj > {out}.adj
ls -l /proc/$$/fd
""")
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_r, True)
    with open("/proc/self/oom_score_adj") as f:
        adj = f.read()
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")      # the daemon runs at -1000; raising it needs no privilege
        outcomes = []
        h = runners(post_kill=path, on_outcome=outcomes.append)
        h.post_kill(inputs(b'{"x": 1}\n', OOMKILLER_JOB="hog"))
        wait_for(lambda: h.ok == 1, "the hook's run")
    finally:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(adj)
        os.close(leak_r)
        os.close(leak_w)
    assert (tmp_path / "out.stdin").read_bytes() == b'{"x": 1}\n'
    env = dict(line.split("=", 1) for line in (tmp_path / "out.env").read_text().splitlines())
    assert {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_", "OLDPWD")} == \
        {"PATH": "/usr/bin:/bin", "OOMKILLER_JOB": "hog"}
    assert (tmp_path / "out.cwd").read_text() == "/\n"
    # 0, 1 and 2, and the shell's own descriptor of its script (listed by
    # a child, with no redirection for which the shell would save one)
    fds = {int(line.split(" -> ")[0].split()[-1]): line.split(" -> ")[1]
           for line in outcomes[0].stdout_tail.decode().splitlines() if " -> " in line}
    assert {0, 1, 2} <= set(fds) and leak_r not in fds
    assert {fd: target for fd, target in fds.items() if fd > 2 and target != path} == {}
    assert (tmp_path / "out.adj").read_text() == "0\n"
    assert h.stats() == {"post_kill": path, "ran": 1, "ok": 1, "failed": 0, "timed_out": 0, "dropped": 0,
                         "queued": 0}


def test_a_hook_that_exits_1_is_logged_at_warning_with_its_stderr(hookdir, runners, caplog):
    path = script(hookdir, "fails", "echo 'about to fail' ; echo 'cannot reach the bus' >&2 ; exit 1\n")
    h = runners(post_kill=path)
    with caplog.at_level(logging.WARNING, logger="oomkiller"):
        h.post_kill(inputs())
        wait_for(lambda: h.failed == 1, "the failure counted")
    assert h.stats()["last_error"] == "post_kill: exit status 1"
    (rec,) = [r for r in caplog.records if path in r.getMessage()]
    assert rec.levelno == logging.WARNING
    assert rec.getMessage() == f"OOM: post_kill hook {path} failed: exit status 1: cannot reach the bus"


def test_a_hook_that_hangs_is_killed_with_its_process_group_at_its_limit(hookdir, tmp_path, runners):
    pidfile = tmp_path / "child.pid"
    path = script(hookdir, "hangs", f"sleep 3600 &\necho $! > {pidfile}\nwait\n")
    outcomes = []
    h = runners(post_kill=path, timeout_ms=300, on_outcome=outcomes.append)
    h.post_kill(inputs())
    wait_for(lambda: h.timed_out == 1, "the hook's timeout")
    child = int(pidfile.read_text())
    # its child, in its process group, went with it (reparented, then reaped)
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or _state(child) == "Z", "the hook's child gone")
    assert outcomes[0].status == "timed_out"
    assert outcomes[0].detail == "killed at hook_timeout_ms (300 ms)"
    assert h.stats()["failed"] == 0 and h.stats()["last_error"] == "post_kill: killed at hook_timeout_ms (300 ms)"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_what_a_hook_leaves_behind_in_its_group_ends_with_it(hookdir, tmp_path, runners):
    pidfile = tmp_path / "child.pid"
    path = script(hookdir, "leaves", f"sleep 3600 &\necho $! > {pidfile}\nexit 0\n")
    h = runners(post_kill=path)
    h.post_kill(inputs())
    wait_for(lambda: h.ok == 1, "the hook's exit")
    child = int(pidfile.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or _state(child) == "Z", "its child gone")


def test_a_chatty_hook_and_one_that_never_reads_its_stdin_hold_nothing_up(hookdir, runners):
    outcomes = []
    chatty = script(hookdir, "chatty", "head -c 20000000 /dev/zero | tr '\\0' x\nhead -c 5000000 /dev/zero >&2\n")
    deaf = script(hookdir, "deaf", "exec true\n")
    h = runners(pre_kill=deaf, post_kill=chatty, on_outcome=outcomes.append)
    h.post_kill(inputs())
    h.submit(PRE_KILL, inputs(b"y" * (4 * MiB)))
    wait_for(lambda: h.ok == 2, "both runs")
    assert len(outcomes[0].stdout_tail) == len(outcomes[0].stderr_tail) == OUTPUT_TAIL_BYTES
    assert outcomes[0].stdout_tail == b"x" * OUTPUT_TAIL_BYTES


def test_a_flood_of_runs_is_dropped_and_counted_past_the_queue(hookdir, tmp_path, runners):
    started, release = tmp_path / "started", tmp_path / "release"
    path = script(hookdir, "slow", f"echo x >> {started}\nwhile [ ! -e {release} ]; do sleep 0.01; done\n")
    h = runners(post_kill=path, max_queue=2)
    h.post_kill(inputs())
    wait_for(lambda: started.exists(), "the first run to start")
    for _ in range(5):
        h.post_kill(inputs())       # 2 fit in the queue behind the running one
    assert h.stats()["dropped"] == 3 and h.stats()["queued"] == 2
    release.touch()
    wait_for(lambda: h.ok == 3, "the queued runs")
    assert started.read_text() == "x\n" * 3


def test_a_hook_changed_after_the_start_is_checked_again_before_each_run(hookdir, runners, caplog):
    path = script(hookdir, "later", "exit 0\n")
    h = runners(post_kill=path)
    os.chmod(path, 0o777)
    with caplog.at_level(logging.WARNING, logger="oomkiller"):
        h.post_kill(inputs())
        wait_for(lambda: h.failed == 1, "the refusal")
    assert h.ran == 0 and "not run: " in h.stats()["last_error"] and "writable by group or others" in caplog.text


def test_pre_kill_waits_for_the_hook_at_most_pre_kill_wait_ms(hookdir, tmp_path, runners):
    done = tmp_path / "done"
    fast = script(hookdir, "fast", f"cat > /dev/null\necho ok > {done}\n")
    h = runners(pre_kill=fast, pre_kill_wait_ms=10_000)
    assert h.pre_kill(inputs()) is True and done.exists()       # it finished before pre_kill returned
    release = tmp_path / "release"
    slow = script(hookdir, "slow", f"while [ ! -e {release} ]; do sleep 0.01; done\n")
    h = runners(pre_kill=slow, pre_kill_wait_ms=50)
    assert h.pre_kill(inputs()) is False                        # returned at the bound, the hook still running
    assert h.ok == 0 and h.timed_out == 0
    release.touch()
    wait_for(lambda: h.ok == 1, "the hook's end")
    # 0 (the default): no wait at all
    h = runners(pre_kill=slow)
    assert h.pre_kill_wait_s == 0 and h.pre_kill(inputs()) is False


def test_close_kills_a_running_hook(hookdir, tmp_path, runners):
    pidfile = tmp_path / "pid"
    path = script(hookdir, "forever", f"echo $$ > {pidfile}\nexec sleep 3600\n")
    h = runners(post_kill=path)
    h.post_kill(inputs())
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the hook to start"))
    h.close()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", "the hook killed")
    assert h.timed_out == 1 and h.stats()["last_error"] == "post_kill: killed as the daemon stopped"


def test_the_environment_says_what_was_decided():
    rec = {"decision": "free below redline", "domain": "/arena", "redline_bytes": 13421772,
           "snapshot": {"free_bytes": 6 * MiB, "total_bytes": 256 * MiB}}
    env = environment(POST_KILL, "KILL", rec, trigger="redline", job_name="hog\\nx", cgroup="/cg/hog\nx",
                      cgroup_v2="", score_bytes=150 * MiB, result="killed", freed_bytes=MiB,
                      pids=tuple(range(1000, 1100)))
    assert env["OOMKILLER_PIDS"].split() == [str(p) for p in range(1000, 1064)] and env["OOMKILLER_PROCS"] == "100"
    assert {k: v for k, v in env.items() if k != "OOMKILLER_PIDS"} == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "OOMKILLER_HOOK": "post_kill",
        "OOMKILLER_SIGNAL": "KILL", "OOMKILLER_TRIGGER": "redline", "OOMKILLER_REASON": "free below redline",
        "OOMKILLER_DOMAIN_NAME": "/arena", "OOMKILLER_JOB": "hog\\nx", "OOMKILLER_CGROUP": "/cg/hog\nx",
        "OOMKILLER_CGROUP_V2": "", "OOMKILLER_SCORE_BYTES": str(150 * MiB), "OOMKILLER_FREE_BYTES": str(6 * MiB),
        "OOMKILLER_TOTAL_BYTES": str(256 * MiB), "OOMKILLER_REDLINE_BYTES": "13421772", "OOMKILLER_RESULT": "killed",
        "OOMKILLER_FREED_BYTES": str(MiB), "OOMKILLER_PROCS": "100"}
    # none is a config key: a hook that runs `oomkiller rank` must not configure it
    assert not {k for k in env if k[len("OOMKILLER_"):].lower() in cfg.config_keys()}
    pre = environment(PRE_KILL, "TERM", rec, trigger="term_redline", job_name="hog", cgroup="/cg/hog", cgroup_v2="",
                      score_bytes=1)
    assert "OOMKILLER_RESULT" not in pre and pre["OOMKILLER_SIGNAL"] == "TERM"
    assert [trigger_word(d) for d in ("free below redline", "thrashing: refaults ...", "memory stall 61% >= 60%")] \
        == ["redline", "thrash", "stall"]
    assert trigger_word("simulated lowmem", simulated=True) == "lowmem"


# -- in the daemon: the kill loop never waits on a hook -------------------------------------------

def _daemon(proc_tree, v2_tree, hooks, **conf):
    from oomkiller.daemon import Daemon
    if not (v2_tree.root / "arena").exists():
        short_arena(proc_tree, v2_tree)
    c = short_config(proc_tree, v2_tree, **conf)
    return Daemon(c, json_out=io.StringIO(), clock=lambda: 5_000_000_000, hooks=hooks)


def _fake_walk(d, seen: list, check=lambda: None):
    """The killer's walk without a kernel: the first job is 'signalled'
    after the before-signal call, as the real killer makes it."""
    def walk(ranking, still_short=None, past_gone=True):
        c = ranking.killable()[0]
        if d.killer.before_signal is not None:
            d.killer.before_signal(c.job)
        seen.append(check())
        return [(c, KillResult(c.job, ok=True, dry_run=False, method="cgroup.kill", signalled_pids=(4101,),
                               signal_to_empty_usec=1000))]
    return walk


def test_a_hanging_pre_kill_does_not_hold_the_kill_and_post_kill_gets_the_record(proc_tree, v2_tree, hookdir,
                                                                                   tmp_path, runners, monkeypatch):
    release, pre_started, pre_done = tmp_path / "release", tmp_path / "pre_started", tmp_path / "pre_done"
    post_out = tmp_path / "post"
    pre = script(hookdir, "pre", f"cat > {pre_started}\nwhile [ ! -e {release} ]; do sleep 0.01; done\n"
                                 f"echo done > {pre_done}\n")
    post = script(hookdir, "post", f"cat > {post_out}.json\nenv > {post_out}.env\n")
    hooks = runners(pre_kill=pre, post_kill=post, timeout_ms=60_000)
    d = _daemon(proc_tree, v2_tree, hooks)
    seen: list = []
    monkeypatch.setattr(d.killer, "walk", _fake_walk(d, seen, lambda: pre_done.exists()))
    record = d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
    # the kill is done and the wake returned; the pre_kill hook has not finished
    assert record.result == "killed" and seen == [False] and not pre_done.exists()
    pre_record = parse_record(json.loads(wait_for(lambda: pre_started.exists() and pre_started.read_text(),
                                                  "pre_kill's stdin")))
    assert pre_record.victim["job"] == "hog" and pre_record.result == "" and pre_record.attempts == ()
    assert "hog" in [c["job"] for c in pre_record.ranking] and pre_record.snapshot["free_bytes"] >= 0
    assert not (tmp_path / "post.json").exists()       # post_kill waits its turn behind pre_kill
    release.touch()
    wait_for(lambda: hooks.ok == 2, "both hooks")
    assert pre_done.exists()
    written = d.json_out.getvalue().splitlines()[-1]
    assert (tmp_path / "post.json").read_text() == written + "\n"
    env = dict(line.split("=", 1) for line in (tmp_path / "post.env").read_text().splitlines())
    assert {k: env[k] for k in ("OOMKILLER_HOOK", "OOMKILLER_SIGNAL", "OOMKILLER_TRIGGER", "OOMKILLER_JOB",
                                "OOMKILLER_RESULT", "OOMKILLER_PIDS", "OOMKILLER_CGROUP")} == {
        "OOMKILLER_HOOK": "post_kill", "OOMKILLER_SIGNAL": "KILL", "OOMKILLER_TRIGGER": "redline",
        "OOMKILLER_JOB": "hog", "OOMKILLER_RESULT": "killed", "OOMKILLER_PIDS": "4101",
        "OOMKILLER_CGROUP": str(v2_tree.root / "arena" / "hog")}
    assert d.info()[1]["output"]["hooks"]["ok"] == 2
    d.publish()
    assert d.published["hooks"] == {"ok": 2, "failed": 0, "timed_out": 0, "dropped": 0}


def test_the_record_and_its_lines_are_made_after_the_signal_unless_pre_kill_needs_them(proc_tree, v2_tree, hookdir,
                                                                                        tmp_path, runners,
                                                                                        monkeypatch):
    # Every process's line, the candidates and the snapshot as a dict are
    # milliseconds on a slow machine: the kill does not wait for them.
    from oomkiller import report
    real = report.lowmem_lines
    for hook, signalled in (("post_kill", True), ("pre_kill", False)):
        seen: list = []
        made: list = []

        def lines(*a, **kw):
            made.append(bool(seen))         # the fake walk's signal came first
            return real(*a, **kw)
        monkeypatch.setattr(report, "lowmem_lines", lines)
        hooks = runners(**{hook: script(hookdir, hook, "cat > /dev/null\n")})
        d = _daemon(proc_tree, v2_tree, hooks)
        monkeypatch.setattr(d.killer, "walk", _fake_walk(d, seen))
        record = d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
        assert record.result == "killed" and record.victim["job"] == "hog", record
        assert made == [signalled], hook
        assert "hog" in [c["job"] for c in record.ranking] and record.snapshot["free_bytes"] >= 0
        wait_for(lambda: hooks.ok == 1, hook)


def test_pre_kill_wait_ms_lets_the_kill_wait_for_a_quick_hook_and_not_for_a_slow_one(proc_tree, v2_tree, hookdir,
                                                                                    tmp_path, runners, monkeypatch):
    done = tmp_path / "done"
    quick = script(hookdir, "quick", f"cat > /dev/null\necho ok > {done}\n")
    d = _daemon(proc_tree, v2_tree, runners(pre_kill=quick, pre_kill_wait_ms=10_000))
    seen: list = []
    monkeypatch.setattr(d.killer, "walk", _fake_walk(d, seen, done.exists))
    d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
    assert seen == [True]           # the signal came after the hook had finished
    release = tmp_path / "release"
    slow = script(hookdir, "slow", f"while [ ! -e {release} ]; do sleep 0.01; done\necho ok > {done}.slow\n")
    hooks = runners(pre_kill=slow, pre_kill_wait_ms=20, timeout_ms=60_000)
    d = _daemon(proc_tree, v2_tree, hooks)
    seen = []
    monkeypatch.setattr(d.killer, "walk", _fake_walk(d, seen, lambda: (tmp_path / "done.slow").exists()))
    d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
    assert seen == [False]          # signalled at the bound, the hook still running
    release.touch()
    wait_for(lambda: hooks.ok == 1, "the slow hook's end")


def test_no_hook_runs_in_a_dry_run(proc_tree, v2_tree, hookdir, tmp_path, runners, monkeypatch):
    ran = tmp_path / "ran"
    path = script(hookdir, "h", f"echo x >> {ran}\n")
    hooks = runners(pre_kill=path, post_kill=path)
    d = _daemon(proc_tree, v2_tree, hooks, dry_run=True)
    assert d.hooks is None and d.killer.before_signal is None
    record = d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
    assert record.result == "dry_run"
    hooks.close()
    assert hooks.ran == 0 and not ran.exists()


def test_the_armed_kill_runs_post_kill_only(proc_tree, v2_tree, hookdir, tmp_path, runners, monkeypatch):
    import dataclasses
    ran = tmp_path / "ran"
    pre = script(hookdir, "pre", f"echo pre >> {ran}\n")
    post = script(hookdir, "post", f"echo \"post $OOMKILLER_TRIGGER\" >> {ran}\n")
    hooks = runners(pre_kill=pre, post_kill=post)
    d = _daemon(proc_tree, v2_tree, hooks)
    hog = next(j for j in d.jobs() if j.name == "hog")
    d.state = dataclasses.replace(d.state, armed=hog)
    seen: list = []
    monkeypatch.setattr(d.killer, "walk", _fake_walk(d, seen))
    record = d.wake([PressureEvent(Source.EBPF, EventKind.ARMED_KILL, pid=4101, timestamp_usec=5_000_000)])
    assert record.decision == "armed kill in the kernel" and record.result == "killed"
    wait_for(lambda: hooks.ok == 1, "post_kill")
    hooks.close()
    assert ran.read_text() == "post armed\n"


# -- a child that leaves the hook's session ------------------------------------------------------

ESCAPER = """#!/bin/sh
{python} -c 'import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
open("{pidfile}.part", "w").write(str(os.getpid()))
os.rename("{pidfile}.part", "{pidfile}")
time.sleep(600)' &
while [ ! -e {pidfile} ]; do sleep 0.01; done
exit 0
"""

RUNNER = """
import sys, time
from oomkiller.hooks import POST_KILL, Hooks
h = Hooks("", sys.argv[1], timeout_ms=10000, subreaper=sys.argv[2] == "1")
done = h.submit(POST_KILL, lambda: (b"{}", {"PATH": "/usr/bin:/bin"}))
assert done is not None and done.wait(30)
print(h.subreaper, h.orphans_killed, flush=True)
h.close()
"""


@pytest.mark.parametrize("subreaper", [True, False])
def test_a_child_that_leaves_the_hooks_session_is_ended_by_a_subreaper(hookdir, tmp_path, subreaper):
    # The group kill at the hook's exit cannot reach a process that made a
    # session of its own; as a child subreaper the daemon inherits it and
    # ends it. (Run in a process of its own: a test runner must not be one.)
    pidfile = tmp_path / "escaped.pid"
    hook = script(hookdir, "escaper", ESCAPER.format(python=sys.executable, pidfile=pidfile)[len("#!/bin/sh\n"):])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", RUNNER, hook, "1" if subreaper else "0"], capture_output=True,
                       text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    pid = int(pidfile.read_text())
    try:
        if subreaper:
            # (1, or 2 when the first child was still exiting as the hook ended)
            flag, killed = r.stdout.split()
            assert flag == "True" and int(killed) in (1, 2), r.stdout
            assert not os.path.exists(f"/proc/{pid}"), "the escaped child outlived its hook"
        else:
            # without it, the escaped child runs on: what the subreaper is for
            assert r.stdout.split() == ["False", "0"], r.stdout
            assert os.path.exists(f"/proc/{pid}")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
