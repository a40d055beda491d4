"""`oomkiller rank --config BAD` in a real process: exit 2, one line, no
traceback, and no hang (a FIFO or a device must not be waited on)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rank(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OOMKILLER_")}
    # A hang fails the test through TimeoutExpired.
    return subprocess.run([sys.executable, "-m", "oomkiller", "rank", *args], capture_output=True, text=True,
                          errors="replace", timeout=30, cwd=ROOT, env={**clean, **env})


def bad_inputs(tmp):
    binary = tmp / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    utf16 = tmp / "utf16.toml"
    utf16.write_bytes("sleep_ms = 5\n".encode("utf-16"))
    deep = tmp / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    huge = tmp / "huge.toml"
    huge.write_text(f'redline = "{"9" * 400}"\n')
    big = tmp / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    fifo = tmp / "fifo.toml"
    os.mkfifo(fifo)
    return {"binary": binary, "utf16": utf16, "deep": deep, "huge size": huge, "2 MiB": big, "fifo": fifo,
            "directory": tmp, "/dev/zero": "/dev/zero", "missing": tmp / "missing.toml"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", ["binary", "utf16", "deep", "huge size", "2 MiB", "fifo", "directory",
                                  "/dev/zero", "missing"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_bad_config_file_is_one_line_and_exit_2(inputs, name, how):
    path = str(inputs[name])
    r = rank("--config", path) if how == "flag" else rank(OOMKILLER_CONFIG=path)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"oomkiller: config error: {path}"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_foreign_environment_warns_and_the_bad_value_is_still_the_error():
    r = rank(OOMKILLER_SERVICE_HOST="10.0.0.7", OOMKILLER_PORT="tcp://10.0.0.7:80", OOMKILLER_SLEEP_MS="soon")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "oomkiller: warning: environment: ignoring unknown variable 'OOMKILLER_SERVICE_HOST'",
        "oomkiller: warning: environment: ignoring unknown variable 'OOMKILLER_PORT'",
        "oomkiller: config error: environment: bad value for 'OOMKILLER_SLEEP_MS': not an integer: 'soon'"]


def test_non_utf8_argument_is_one_line():
    r = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--domain", b"/x\xff".decode("utf-8", "surrogateescape")],
                       capture_output=True, timeout=30, cwd=ROOT)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and b"Traceback" not in r.stderr
    assert lines[0].startswith(b"oomkiller: config error: command line: bad value for 'domain'")


def test_a_control_command_finds_the_socket_as_the_daemon_does(tmp_path):
    from oomkiller.config import Config, client_control_socket
    named, default = tmp_path / "named.toml", tmp_path / "default.toml"
    named.write_text('control_socket = "/run/named.sock"\nredline = "no such size"\n')   # other keys: the daemon's
    default.write_text('control-socket = "/run/default.sock"\n')
    missing = str(tmp_path / "none.toml")

    def sock(**kw):
        kw.setdefault("default_file", str(default))
        return client_control_socket(**kw)
    assert sock(flag="/run/flag.sock", config_file=str(named),
                environ={"OOMKILLER_CONTROL_SOCKET": "/run/env.sock"}) == "/run/flag.sock"
    assert sock(config_file=str(named), environ={"OOMKILLER_CONTROL_SOCKET": "/run/env.sock"}) == "/run/env.sock"
    assert sock(config_file=str(named), environ={"OOMKILLER_CONFIG": str(default)}) == "/run/named.sock"
    assert sock(environ={"OOMKILLER_CONFIG": str(named)}) == "/run/named.sock"
    assert sock() == "/run/default.sock"
    assert sock(default_file=missing) == Config.control_socket
    (tmp_path / "plain.toml").write_text('sleep_ms = 10\n')
    assert sock(config_file=str(tmp_path / "plain.toml")) == Config.control_socket


def test_a_bad_way_to_the_control_socket_is_a_config_error(tmp_path):
    from oomkiller.config import ConfigError, client_control_socket
    bad = tmp_path / "bad.toml"
    bad.write_text("[[[\n")
    for kw, problem in ((dict(flag="rel.sock"), "command line: bad value for '--control'"),
                        (dict(environ={"OOMKILLER_CONTROL_SOCKET": "x" * 200}), "OOMKILLER_CONTROL_SOCKET"),
                        (dict(config_file=str(bad)), "not valid TOML"),
                        (dict(environ={"OOMKILLER_CONFIG": str(tmp_path / "none.toml")}),
                         "none.toml (named by OOMKILLER_CONFIG): no such config file"),
                        (dict(default_file=str(bad)), "not valid TOML")):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            client_control_socket(**kw)


def test_a_default_config_file_this_user_cannot_read_is_passed_over_with_a_warning(tmp_path, monkeypatch):
    from oomkiller import config
    default = tmp_path / "default.toml"
    default.write_text('control_socket = "/run/default.sock"\n')
    monkeypatch.setattr(config.os, "access", lambda path, mode: path != str(default))
    warned = []
    assert config.client_control_socket(default_file=str(default), warn=warned.append) == config.Config.control_socket
    assert warned == [f"{default}: permission denied: the control socket is taken to be {config.Config.control_socket}"]
