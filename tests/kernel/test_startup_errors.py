"""Every start-up failure a user can meet is one line and a documented exit
code, never a traceback: run as root and as an unprivileged user (nobody,
through setpriv), with the default socket, unsafe or missing folders, bad
record paths, an unreadable config, and no kernel headers at all."""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from oomkiller import config as cfg

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it runs the daemon as root and as nobody")


def env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT), "LC_ALL": "C.UTF-8"}


@pytest.fixture(scope="module")
def as_nobody():
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import oomkiller"], capture_output=True, text=True,
                           env=env(), cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout's Python: {probe.stderr.strip()[-200:]}")
    return NOBODY


def oomkiller(*args: str, user: list[str] = (), timeout: float = 30) -> tuple[int, str]:
    out = subprocess.run([*user, sys.executable, "-m", "oomkiller", *args], capture_output=True, text=True,
                         env=env(), cwd="/", timeout=timeout, stdin=subprocess.DEVNULL)
    return out.returncode, out.stderr


def one_line(stderr: str) -> str:
    """The error: the one line from oomkiller itself (the log's effective
    config line may come first), and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("oomkiller:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def open_dir():
    """A folder nobody may enter and read (pytest's own tmp folders are root's alone)."""
    d = tempfile.mkdtemp(prefix="oomk-startup-", dir="/tmp")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def private_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def test_nobody_with_the_default_socket(as_nobody):
    code, err = oomkiller("run", user=as_nobody)
    assert code == cfg.EXIT_CONFIG
    assert "bad value for 'control_socket'" in one_line(err)


def test_nobody_with_a_record_file_in_a_missing_folder(as_nobody, open_dir):
    sock_dir = open_dir / "nobody"
    sock_dir.mkdir(mode=0o700)
    os.chown(sock_dir, 65534, 65534)
    code, err = oomkiller("run", "--control", str(sock_dir / "c.sock"), "--json-log", "/nonexistent/dir/r.jsonl",
                          user=as_nobody)
    assert code == cfg.EXIT_CONFIG
    assert "bad value for 'json_log': /nonexistent/dir/r.jsonl: No such file or directory" in one_line(err)


def test_nobody_with_a_record_file_it_may_not_write(as_nobody, open_dir):
    code, err = oomkiller("run", "--json-log", str(open_dir / "r.jsonl"), user=as_nobody)
    assert code == cfg.EXIT_CONFIG
    assert f"bad value for 'json_log': {open_dir}/r.jsonl: Permission denied" in one_line(err)


def test_nobody_with_a_config_it_may_not_read(as_nobody, open_dir):
    conf = open_dir / "oomkiller.toml"
    conf.write_text('redline = "5%"\n')
    conf.chmod(0o600)
    code, err = oomkiller("run", "--config", str(conf), user=as_nobody)
    assert code == cfg.EXIT_CONFIG
    assert f"{conf}: permission denied" in one_line(err)


def test_nobody_asking_with_no_daemon(as_nobody, open_dir):
    code, err = oomkiller("info", "--control", str(open_dir / "none.sock"), user=as_nobody)
    assert code == cfg.EXIT_UNREACHABLE
    assert f"no oomkiller daemon at {open_dir}/none.sock: No such file or directory" in one_line(err)


def test_nobody_asking_through_a_folder_closed_to_it(as_nobody, private_dir):
    code, err = oomkiller("info", "--control", str(private_dir / "c.sock"), user=as_nobody)
    assert code == cfg.EXIT_UNREACHABLE
    assert one_line(err) == (f"oomkiller: cannot reach the oomkiller daemon at {private_dir}/c.sock: Permission "
                             "denied: the socket or a folder above it is closed to this user")


def test_a_socket_folder_others_may_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    code, err = oomkiller("run", "--dry-run", "--control", str(shared / "c.sock"))
    assert code == cfg.EXIT_CONFIG
    assert "may be written by other users" in one_line(err)


def test_a_socket_path_that_is_a_file(private_dir):
    (private_dir / "c.sock").write_text("")
    code, err = oomkiller("run", "--dry-run", "--control", str(private_dir / "c.sock"))
    assert code == cfg.EXIT_CONFIG
    assert "is not a socket: refusing to replace it" in one_line(err)


def test_no_kernel_headers_anywhere_is_one_warning_and_the_daemon_runs_on(private_dir):
    # /lib/modules/RELEASE and /usr/src hidden by empty tmpfs mounts in a
    # private mount namespace: no header tree, for this process alone.
    release = os.uname().release
    hide = " && ".join(f"mount -t tmpfs oomk-test-empty {d}" for d in (f"/lib/modules/{release}", "/usr/src")
                       if os.path.isdir(d))
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        pytest.skip("this kernel carries its own headers (CONFIG_IKHEADERS)")
    sock = private_dir / "c.sock"
    cmd = [sys.executable, "-m", "oomkiller", "run", "--dry-run", "--sources", "ebpf,timer", "--control", str(sock),
           "--json-log", str(private_dir / "r.jsonl")]
    d = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          (hide + " && " if hide else "") + 'exec "$@"', "sh", *cmd],
                         env=env(), cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and d.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.poll() is None, "the daemon stopped"
        code, _ = oomkiller("info", "--control", str(sock))
        assert code == cfg.EXIT_OK
    finally:
        d.send_signal(signal.SIGTERM)
        _, err = d.communicate(timeout=30)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "source ebpf unavailable" in ln]
    assert len(lines) == 1, err
    assert f"no kernel headers for {release}" in lines[0] and "linux-headers" in lines[0]
