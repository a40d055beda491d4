"""What a local user, a stuck reader or a full disk does to the daemon:
nothing that stops a kill. Every pressure stays in an arena."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import flood
import pytest
from kproc import DaemonProc, wait_for


@pytest.fixture
def open_folder():
    """A folder under /run that nobody may enter but not write (the daemon
    refuses a socket folder others can write)."""
    folder = pathlib.Path(f"/run/oomk-test-{uuid.uuid4().hex[:8]}")
    folder.mkdir(mode=0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _kill_by_lowmem(d: DaemonProc, arena, name: str) -> float:
    job = arena.job(name)
    p = arena.spawn_idle(job, 4 << 20)
    t = time.monotonic()
    r = d.ctl("lowmem")
    assert r.returncode == 0, r.stderr
    assert p.wait(timeout=10) == -signal.SIGKILL
    return time.monotonic() - t


def test_root_is_served_and_lowmem_kills_while_a_user_floods(arena, open_folder):
    d = DaemonProc(open_folder, "--domain", arena.path, "--redline", "1M", "--sources", "timer",
                   "--post-kill-delay-ms", "0")
    flooder = flood.start(d.sock, 600)
    try:
        time.sleep(1)
        took = [_kill_by_lowmem(d, arena, f"victim{i}") for i in range(3)]
        info = json.loads(d.ctl("info", "--json").stdout)
    finally:
        made = flood.stop(flooder)
        d.stop()
    # the server and writer threads share one malloc arena: their own
    # would each lock a 64 MB reservation under mlockall
    assert info["memory"]["vmlck_bytes"] < 128 << 20, info["memory"]
    assert made > 1000
    assert info["running"] is True, "a user's 'stop' was obeyed"
    assert info["output"]["control"]["refused"] > 0
    assert max(took) < 3.0, took
    assert "Traceback" not in d.stderr()


def test_a_fifo_whose_reader_stalls_never_holds_a_kill(arena, tmp_path):
    fifo = tmp_path / "records.fifo"
    os.mkfifo(fifo)
    # a reader that opens and never reads: the pipe fills after a few records
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    d = DaemonProc(tmp_path, "--domain", arena.path, "--redline", "1M", "--sources", "timer",
                   "--post-kill-delay-ms", "0", "--json-log", str(fifo))
    try:
        took = [_kill_by_lowmem(d, arena, f"victim{i}") for i in range(30)]
        out = json.loads(d.ctl("info", "--json").stdout)["output"]["records"]
        assert out["written"] < 30 and out["queued"] + out["dropped"] > 0, out
    finally:
        d.stop()
        os.close(reader)
    assert max(took) < 3.0, took


def test_a_fifo_with_no_reader_does_not_hang_the_start(arena, tmp_path):
    fifo = tmp_path / "records.fifo"
    os.mkfifo(fifo)
    d = DaemonProc(tmp_path, "--domain", arena.path, "--redline", "1M", "--sources", "timer",
                   "--json-log", str(fifo))
    try:
        assert _kill_by_lowmem(d, arena, "victim") < 3.0
        assert json.loads(d.ctl("info", "--json").stdout)["output"]["records"]["written"] == 0
    finally:
        d.stop()


def test_a_full_disk_loses_records_not_kills(arena, tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        d = DaemonProc(tmp_path, "--domain", arena.path, "--redline", "1M", "--sources", "timer",
                       "--post-kill-delay-ms", "0", "--json-log", str(mnt / "records.jsonl"))
        try:
            took = [_kill_by_lowmem(d, arena, f"victim{i}") for i in range(3)]
            wait_for(lambda: json.loads(d.ctl("info", "--json").stdout)["output"]["records"]["errors"] >= 3,
                     5, "write errors counted")
            assert "No space left" in json.loads(d.ctl("info", "--json").stdout)["output"]["records"]["last_error"]
        finally:
            d.stop()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert max(took) < 3.0, took


def _run_as(uid: int | None, *args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return subprocess.run([sys.executable, "-m", "oomkiller", "run", "--sources", "timer", *args],
                          capture_output=True, text=True, timeout=30, preexec_fn=drop if uid else None,
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, cwd=cwd)


def _one_error_line(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("oomkiller:")]
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_symlink_another_user_planted_is_refused(arena, tmp_path, open_folder):
    shared = open_folder / "shared"
    shared.mkdir()
    shared.chmod(0o1777)            # like /tmp: anyone may make a name there
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    link = shared / "records.jsonl"
    subprocess.run(["setpriv", "--reuid", str(flood.NOBODY), "--regid", str(flood.NOBODY), "--clear-groups",
                    "ln", "-s", str(secret), str(link)], check=True)
    r = _run_as(None, "--domain", arena.path, "--control", str(tmp_path / "ctl.sock"), "--json-log", str(link))
    _one_error_line(r, 2, "json_log", "symlink")
    assert secret.read_text() == "root only\n"
    # their own folder, with their link to a root-only folder in it: refused on the way
    theirs = open_folder / "theirs"
    theirs.mkdir()
    os.chown(theirs, flood.NOBODY, flood.NOBODY)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    subprocess.run(["setpriv", "--reuid", str(flood.NOBODY), "--regid", str(flood.NOBODY), "--clear-groups",
                    "ln", "-s", str(private), str(theirs / "logs")], check=True)
    r = _run_as(None, "--domain", arena.path, "--control", str(tmp_path / "ctl.sock"),
                "--json-log", str(theirs / "logs" / "records.jsonl"))
    _one_error_line(r, 2, "json_log", "owned by uid 65534")
    assert not (private / "records.jsonl").exists()


def test_socket_paths_that_are_not_safe_are_one_line(arena, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    r = _run_as(None, "--domain", arena.path, "--control", str(shared / "ctl.sock"))
    _one_error_line(r, 2, "control_socket", "written by other users")
    (tmp_path / "file.sock").write_text("precious")
    r = _run_as(None, "--domain", arena.path, "--control", str(tmp_path / "file.sock"))
    _one_error_line(r, 2, "control_socket", "not a socket")
    assert (tmp_path / "file.sock").read_text() == "precious"


def test_a_user_without_root_gets_one_line(open_folder):
    # /run/oomkiller-like folder owned by root: nobody may not make its socket there
    r = _run_as(flood.NOBODY, "--control", str(open_folder / "ctl.sock"), "--json-log", "-")
    _one_error_line(r, 2, "control_socket", "Permission denied")
