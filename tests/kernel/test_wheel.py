"""The daemon as pip installs it: a wheel built from the checkout, installed in
a fresh venv (with the system's site-packages, where Debian's bcc lives), run
from outside the checkout. The BPF program is package data: it must load."""
from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
import zipfile

import pytest
from kproc import wait_for

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the checkout's build/lib and keeps what an earlier
    # build put there: a module removed since would ship again
    shutil.rmtree(CHECKOUT / "build" / "lib", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(CHECKOUT)], check=True, timeout=300, cwd=tmp)
    (wheel,) = glob.glob(str(tmp / "dist" / "oomkiller-*.whl"))
    venv = tmp / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   timeout=300)
    return wheel, venv


def test_the_wheel_holds_the_daemon_and_its_bpf_program_and_not_the_benchmark(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "oomkiller/bpf/oomkiller.bpf.c" in names and "oomkiller/bpf/oomkiller.h" in names
    assert "oomkiller/core/state.py" in names and "oomkiller/sources/bpf.py" in names
    assert not [n for n in names if n.startswith(("oomkiller_bench/", "tests/"))]


def test_the_installed_daemon_loads_its_bpf_program(installed, arena, tmp_path):
    _, venv = installed
    exe = str(venv / "bin" / "oomkiller")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([exe, "run", "--print-bpf"], capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert out.returncode == 0, out.stderr
    assert str(venv) in out.stdout.splitlines()[0] and "struct oom_event" in out.stdout
    sock = tmp_path / "ctl.sock"
    d = subprocess.Popen([exe, "run", "--domain", arena.path, "--control", str(sock), "--sources", "ebpf,prearm,timer",
                          "--json-log", str(tmp_path / f"rec-{uuid.uuid4().hex[:6]}.jsonl")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/", env=env)
    try:
        wait_for(lambda: sock.exists() or d.poll() is not None, 60, "the control socket")
        info = subprocess.run([exe, "info", "--json", "--control", str(sock)], capture_output=True, text=True,
                              timeout=60, cwd="/", env=env)
        assert info.returncode == 0, info.stderr
        sources = json.loads(info.stdout)["sources"]
        assert sources["ebpf"]["state"] == "live" and sources["prearm"]["state"] == "live", sources
    finally:
        d.terminate()
        _, err = d.communicate(timeout=20)
    assert "Traceback" not in err, err
