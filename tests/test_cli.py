import os
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "oomkiller", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_malformed_config_is_one_clear_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('sleep_ms = "fast"\n')
    r = run("run", "--config", str(f), "--control", str(tmp_path / "s"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"oomkiller: config error: {f}: bad value for 'sleep_ms': not an integer: 'fast'"]


def test_bad_redline_flag(tmp_path):
    r = run("run", "--redline", "plenty", "--control", str(tmp_path / "s"))
    assert r.returncode == 2 and "command line: bad value for 'redline'" in r.stderr


def test_bad_domain(tmp_path):
    r = run("rank", "--domain", "/no/such/cgroup")
    assert r.returncode == 2 and "bad value for 'domain'" in r.stderr and "not a cgroup folder" in r.stderr


def test_control_without_daemon(tmp_path):
    r = run("info", "--control", str(tmp_path / "none.sock"))
    assert r.returncode == 3 and "no oomkiller daemon" in r.stderr


def test_version():
    from oomkiller import __version__
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"oomkiller {__version__}"


@pytest.fixture
def listener(tmp_path):
    """A control server where a config file says the daemon's socket is."""
    from oomkiller.control import ControlServer
    srv = ControlServer(str(tmp_path / "elsewhere.sock"), lambda cmd: (True, f"did {cmd}", {"cmd": cmd}))
    srv.start()
    yield srv
    srv.close()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOMKILLER_")}
    env.update(extra)
    return env


def test_control_commands_find_the_socket_the_config_file_names(tmp_path, listener):
    conf = tmp_path / "oomkiller.toml"
    conf.write_text(f'redline = "5%"\ncontrol_socket = "{listener.path}"\n')
    for args, env in ((["info", "--config", str(conf)], _env()), (["info"], _env(OOMKILLER_CONFIG=str(conf)))):
        r = run(*args, env=env)
        assert (r.returncode, r.stdout.strip()) == (0, "did info"), r.stderr
    # the flag and the environment come first, as for the daemon
    none = str(tmp_path / "none.sock")
    r = run("info", "--config", str(conf), "--control", none, env=_env())
    assert r.returncode == 3 and none in r.stderr
    r = run("info", "--config", str(conf), env=_env(OOMKILLER_CONTROL_SOCKET=none))
    assert r.returncode == 3 and none in r.stderr


@pytest.mark.parametrize("text,problem", [
    ("control_socket = \n", "not valid TOML"),
    ('control_socket = "relative.sock"\n', "bad value for 'control_socket': 'relative.sock' is not an absolute path"),
    ("control_socket = 7\n", "bad value for 'control_socket'"),
])
def test_a_bad_config_file_for_a_control_command_is_one_clear_error(tmp_path, text, problem):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    for args, env in ((["info", "--config", str(conf)], _env()), (["stop"], _env(OOMKILLER_CONFIG=str(conf)))):
        r = run(*args, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and problem in r.stderr and str(conf) in r.stderr, r.stderr
    r = run("info", "--config", str(tmp_path / "missing.toml"), env=_env())
    assert r.returncode == 2 and r.stderr.strip().endswith("missing.toml: no such config file"), r.stderr
