"""Log lines at their real priority: ``<N>`` prefixes on stderr only when
stderr is the journal's stream (``$JOURNAL_STREAM`` names its device and
inode), log_level from every config origin, and the daemon as systemd runs
it: READY and STATUS on its notify socket, priorities on its stderr."""
from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from oomkiller import config as cfg
from trees import short_arena, short_config

from oomkiller.output import LEVELS, NOTICE, PriorityFormatter, setup_logging, stderr_is_journal, syslog_priority

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def stream_id(path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_priorities_are_syslogs():
    assert [syslog_priority(LEVELS[w]) for w in cfg.LOG_LEVELS] == [7, 6, 5, 4, 3]
    assert syslog_priority(logging.CRITICAL) == 2
    assert tuple(LEVELS) == cfg.LOG_LEVELS


def test_only_the_stream_journal_stream_names_is_the_journal(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("")
    b.write_text("")
    warnings: list[str] = []
    with open(a, "w") as fa:
        assert stderr_is_journal({"JOURNAL_STREAM": stream_id(a)}, fa.fileno(), warnings.append)
        # inherited by a process whose stderr went elsewhere: not the journal, and nothing wrong
        assert not stderr_is_journal({"JOURNAL_STREAM": stream_id(b)}, fa.fileno(), warnings.append)
        assert not stderr_is_journal({}, fa.fileno(), warnings.append)
        assert not stderr_is_journal({"JOURNAL_STREAM": stream_id(a)}, 987, warnings.append)   # no such fd
    assert warnings == []


@pytest.mark.parametrize("value", ["abc", "1:2:3", "12:", ":5", "1" * 30 + ":1", "\u0661:\u0662", " 1:2",
                                   "1:2\n<0>forged"])
def test_a_journal_stream_that_is_not_device_inode_is_one_warning(tmp_path, value):
    warnings: list[str] = []
    assert not stderr_is_journal({"JOURNAL_STREAM": value}, 2, warnings.append)
    assert len(warnings) == 1 and "JOURNAL_STREAM" in warnings[0] and "\n" not in warnings[0], warnings


def test_every_line_of_a_message_carries_its_priority():
    rec = logging.LogRecord("oomkiller", logging.ERROR, __file__, 1, "first\nsecond", (), None)
    assert PriorityFormatter("%(message)s").format(rec) == "<3>first\n<3>second"
    rec = logging.LogRecord("oomkiller", NOTICE, __file__, 1, "killed", (), None)
    assert PriorityFormatter("%(message)s").format(rec) == "<5>killed"


def test_log_level_filters_and_no_prefix_off_the_journal():
    out = io.StringIO()
    log = logging.getLogger("oomkiller")
    saved = log.handlers[:], log.propagate, log.level
    try:
        setup_logging(logging.WARNING, stream=out)
        log.info("OOM: info")
        log.log(NOTICE, "OOM: notice")
        log.warning("OOM: warning")
        assert out.getvalue() == "OOM: warning\n"
    finally:
        # later tests read the log through caplog, on the root logger
        log.handlers[:], log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])


@pytest.mark.parametrize("origin", ["toml", "env", "flag"])
def test_log_level_is_read_from_every_origin(tmp_path, origin):
    toml = tmp_path / "c.toml"
    toml.write_text('log_level = "Warning"\n' if origin == "toml" else "")
    env = {"OOMKILLER_LOG_LEVEL": "warning"} if origin == "env" else {}
    cli = {"log_level": "warning"} if origin == "flag" else {}
    assert cfg.load(cli=cli, config_file=str(toml), environ=env).log_level == "warning"
    assert cfg.load().log_level == "info"


@pytest.mark.parametrize("value", ["loud", "", 3, True, ["info"], "in\nfo", "crit"])
def test_a_bad_log_level_is_one_line(tmp_path, value):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(cli={"log_level": value})
    assert "'log_level'" in str(e.value) and "\n" not in str(e.value)
    assert "one of debug, info, notice, warning, error" in str(e.value) or "not a log level" in str(e.value)


# -- the daemon as systemd runs it ------------------------------------------------------

def _arena(proc_tree, v2_tree) -> None:
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(4101, "hog", anon_kb=150 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/hog\n")
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{100 * MiB}\n", memory__stat="anon 1\n")
    v2_tree.cgroup("arena/hog", (4101,), memory__stat=f"anon {150 * MiB}\nshmem 0\n")


def run_daemon(tmp_path, proc_tree, v2_tree, env: dict[str, str], *args: str, journal: bool = True):
    """``oomkiller run`` on fixture trees, with PSI asked for and missing (a
    warning), its stderr a file that JOURNAL_STREAM names (or not), and a
    notify socket; stopped by SIGTERM after READY. (stderr lines, datagrams)"""
    _arena(proc_tree, v2_tree)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    err_path = tmp_path / "stderr"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OOMKILLER_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
    with open(err_path, "w") as err:
        stream = {"JOURNAL_STREAM": stream_id(err_path)} if journal else {}
        p = subprocess.Popen(
            [sys.executable, "-m", "oomkiller", "run", "--proc-root", str(proc_tree.root), "--cgroup-root",
             str(v2_tree.root), "--domain", "arena", "--sources", "psi,timer", "--control",
             str(tmp_path / "control.sock"), "--json-log", str(tmp_path / "records.jsonl"), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
            env={**clean, "OOMKILLER_PROTECT_SELF": "false", "NOTIFY_SOCKET": str(tmp_path / "notify"),
                 "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "", **stream, **env})
    got = []
    try:
        got.append(notify.recv(4096).decode())
        assert got[0].startswith("READY=1\n"), got
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        notify.settimeout(0.5)
        while True:
            try:
                got.append(notify.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        notify.close()
    return err_path.read_text().splitlines(), got


def test_under_systemd_each_line_has_its_priority_and_ready_comes_with_a_status(tmp_path, proc_tree, v2_tree):
    lines, got = run_daemon(tmp_path, proc_tree, v2_tree, {"OOMKILLER_BOGUS": "1"})
    assert lines and all(line[:3] in ("<3>", "<4>", "<5>", "<6>", "<7>") for line in lines), lines
    assert "<4>oomkiller: warning: environment: ignoring unknown variable 'OOMKILLER_BOGUS'" in lines
    assert any(line.startswith("<4>OOM: source psi unavailable: ") for line in lines), lines
    assert any(line.startswith("<6>OOM: effective config ") for line in lines), lines
    # WATCHDOG_PID set but empty: not a pid, so no watchdog, with a warning
    assert any(line.startswith("<4>OOM: ignoring the watchdog: WATCHDOG_PID=''") for line in lines), lines
    ready = got[0].split("\n")
    assert ready[0] == "READY=1" and "WATCHDOG=1" not in ready
    assert ready[1].startswith("STATUS=watching /arena, redline 5% (12.8M), sources timer (psi unavailable)")
    assert got[-1] == "STOPPING=1\nSTATUS=stopping after 0 kills"
    assert "Traceback" not in "\n".join(lines)


def test_log_level_from_the_environment_and_no_prefix_when_stderr_is_not_the_journal(tmp_path, proc_tree, v2_tree):
    lines, got = run_daemon(tmp_path, proc_tree, v2_tree, {"OOMKILLER_LOG_LEVEL": "warning"}, journal=False)
    assert any(line.startswith("OOM: source psi unavailable: ") for line in lines), lines
    assert not any(line.startswith("<") for line in lines), lines
    assert not any("effective config" in line for line in lines), lines     # info: below the level
    assert got[0].startswith("READY=1\n")


def test_a_bad_log_level_flag_is_exit_2_with_a_prefixed_line_under_the_journal(tmp_path):
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        r = subprocess.run([sys.executable, "-m", "oomkiller", "run", "--log-level", "loud"], cwd=ROOT, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=err,
                           env={**os.environ, "JOURNAL_STREAM": stream_id(err_path)})
    assert r.returncode == 2
    assert err_path.read_text().splitlines() == [
        "<3>oomkiller: config error: command line: bad value for 'log_level': not a log level: 'loud' "
        "(one of debug, info, notice, warning, error)"]


# -- a kill's lines at their priorities ---------------------------------------------------

def _short_daemon(proc_tree, v2_tree, **conf):
    from oomkiller.daemon import Daemon
    short_arena(proc_tree, v2_tree)
    c = short_config(proc_tree, v2_tree, **conf)
    return Daemon(c, json_out=io.StringIO(), clock=lambda: 5_000_000_000)


def _levels(caplog) -> dict[str, int]:
    return {r.getMessage(): r.levelno for r in caplog.records}


def test_a_kill_is_a_notice_and_the_walk_info(proc_tree, v2_tree, caplog):
    from oomkiller.model import PressureEvent
    d = _short_daemon(proc_tree, v2_tree, dry_run=True)
    caplog.set_level(logging.DEBUG, logger="oomkiller")
    d.wake([PressureEvent("timer", "tick", timestamp_usec=5_000_000)])
    levels = _levels(caplog)
    outcome = [m for m in levels if m.startswith("OOM: would kill job 'hog'")]
    assert outcome and levels[outcome[0]] == NOTICE, levels
    assert levels["OOM: Finding a job to kill..."] == logging.INFO


def test_a_failed_kill_is_an_error_and_one_that_did_not_empty_a_warning(proc_tree, v2_tree, caplog, monkeypatch):
    from oomkiller.model import KillResult, PressureEvent
    d = _short_daemon(proc_tree, v2_tree)

    def walk(ranking, still_short=None, past_gone=True):
        first, second = [c for c in ranking.candidates if c.killable][:2]
        return [(first, KillResult(first.job, ok=False, dry_run=False, method="cgroup.kill", error="gone")),
                (second, KillResult(second.job, ok=True, dry_run=False, method="cgroup.kill", signalled_pids=(4102,),
                                    left_pids=(4102,), error="1 procs left after 5000 ms"))]
    monkeypatch.setattr(d.killer, "walk", walk)
    caplog.set_level(logging.DEBUG, logger="oomkiller")
    d.wake([PressureEvent("timer", "tick", timestamp_usec=5_000_000)])
    levels = _levels(caplog)
    failed = [m for m in levels if m.startswith("OOM:   (fail) job")]
    assert failed and levels[failed[0]] == logging.ERROR, levels
    signalled = [m for m in levels if m.startswith("OOM: signalled job 'web'")]
    assert signalled and levels[signalled[0]] == logging.WARNING, levels
