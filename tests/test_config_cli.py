"""`oomkiller rank --config BAD` in a real process: exit 2, one line, no
traceback, and no hang (a FIFO or a device must not be waited on)."""
from __future__ import annotations

import os
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
