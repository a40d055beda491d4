"""A control command imports only what it needs to ask the daemon: not the
daemon, its sources, bcc, pyroute2, psutil or the config parser. Seen from
outside, in a fresh interpreter, through ``python -X importtime`` (one line
per module imported)."""
import os
import subprocess
import sys

import pytest

from oomkiller.control import ControlServer

# What a control command must not import, by module name (a name ending in
# "." stands for the package and everything in it).
HEAVY = ("bcc", "bcc.", "pyroute2", "pyroute2.", "psutil", "psutil.", "oomkiller.daemon", "oomkiller.sources",
         "oomkiller.sources.", "oomkiller.config", "tomllib", "tomli", "oomkiller.model", "oomkiller.cgroupfs",
         "oomkiller.procfs", "oomkiller.core", "oomkiller.core.", "oomkiller.killer", "logging")


@pytest.fixture
def daemon_socket(tmp_path):
    seen = []

    def handle(cmd):
        seen.append(cmd)
        return True, f"answered {cmd}", {"ranking": [{"job": "a"}]} if cmd == "rank" else {"n": 1}
    srv = ControlServer(str(tmp_path / "ctl.sock"), handle)
    srv.start()
    yield srv.path, seen
    srv.close()


def imported_by(*args):
    """(completed process, the modules it imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OOMKILLER_", "PYTHON"))}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "oomkiller", *args], capture_output=True,
                       text=True, timeout=60, env=env, cwd=root)
    modules = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "oomkiller.cli" in modules, r.stderr[-2000:]
    return r, modules


def heavy_among(modules):
    return sorted(m for m in modules for h in HEAVY if (m.startswith(h) if h.endswith(".") else m == h))


@pytest.mark.parametrize("cmd", ["info", "start", "stop", "print", "lowmem"])
def test_a_control_command_imports_nothing_heavy(daemon_socket, cmd):
    path, seen = daemon_socket
    r, modules = imported_by(cmd, "--control", path)
    assert r.returncode == 0 and r.stdout.strip() == f"answered {cmd}", r.stderr[-2000:]
    assert seen == [cmd]
    assert heavy_among(modules) == []


def test_info_as_json_imports_nothing_heavy(daemon_socket):
    path, _ = daemon_socket
    r, modules = imported_by("info", "--json", "--control", path)
    assert r.returncode == 0 and '"n": 1' in r.stdout
    assert heavy_among(modules) == []


def test_rank_answered_by_the_daemon_imports_nothing_heavy(daemon_socket):
    try:
        with open("/proc/cmdline", "rb") as f:
            if b"oomkiller." in f.read().lower():
                pytest.skip("oomkiller.* words on this kernel's command line: rank reads its config first")
    except OSError:
        pass
    path, seen = daemon_socket
    r, modules = imported_by("rank", "--json", "--control", path)
    assert r.returncode == 0 and '"job": "a"' in r.stdout, r.stderr[-2000:]
    assert seen == ["rank"]
    assert heavy_among(modules) == []


def test_help_imports_nothing_heavy():
    r, modules = imported_by("--help")
    assert r.returncode == 0 and "info" in r.stdout
    assert heavy_among(modules) == []


def test_the_list_catches_what_run_imports(tmp_path):
    """The check itself: a command that does import the config and the
    daemon's modules is caught."""
    r, modules = imported_by("rank", "--domain", "/no/such/cgroup")
    assert r.returncode == 2
    assert "oomkiller.config" in heavy_among(modules)
