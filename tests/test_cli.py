import subprocess
import sys


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
