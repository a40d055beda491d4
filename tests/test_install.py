"""`make install` and `make uninstall`, staged below a DESTDIR in a tmp folder
(never the real /etc or /opt): what each puts and removes, that a second run
changes nothing, and that an operator's config survives both."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
INSTALLED = {
    "opt/oomkiller/bin/oomkiller", "opt/oomkiller/installed",
    "usr/local/sbin/oomkiller",
    "usr/local/lib/systemd/system/oomkiller.service",
    "usr/local/share/man/man8/oomkiller.8",
    "usr/local/share/oomkiller/hooks/notify-desktop", "usr/local/share/oomkiller/hooks/restart-unit",
    "etc/oomkiller/oomkiller.toml",
}
CONF = "etc/oomkiller/oomkiller.toml"


@pytest.fixture(scope="module", autouse=True)
def can_make_a_venv():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip, setuptools, wheel"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"/usr/bin/python3 cannot make a venv and build a wheel offline "
                    f"(python3-venv, python3-setuptools, python3-wheel): {probe.stderr.strip()[-200:]}")


def make(target: str, destdir: pathlib.Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFIX", "SYSCONFDIR", "OPTDIR", "MAKEFLAGS")}
    out = subprocess.run(["make", "-s", "-C", str(CHECKOUT), target, f"DESTDIR={destdir}"],
                         capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def files(root: pathlib.Path) -> set[str]:
    """Everything below root, but the venv's own insides."""
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("opt/oomkiller/") and rel not in INSTALLED:
            continue
        if path.is_file() or path.is_symlink():
            out.add(rel)
    return out


def test_install_then_uninstall_puts_and_removes_exactly_its_files(tmp_path):
    dest = tmp_path / "root"
    out = make("install", dest)
    assert files(dest) == INSTALLED, out.stdout
    for rel in INSTALLED - {"opt/oomkiller/installed", "opt/oomkiller/bin/oomkiller"}:
        assert f"{dest}/{rel}" in out.stdout, f"install did not say it made {rel}"
    assert os.readlink(dest / "usr/local/sbin/oomkiller") == "/opt/oomkiller/bin/oomkiller"
    version = subprocess.run([str(dest / "opt/oomkiller/bin/oomkiller"), "--version"], capture_output=True,
                             text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert version.stdout.startswith("oomkiller "), version.stderr
    unit = (dest / "usr/local/lib/systemd/system/oomkiller.service").read_text()
    assert "\nExecStart=/opt/oomkiller/bin/oomkiller run --config /etc/oomkiller/oomkiller.toml\n" in unit
    shipped = (CHECKOUT / "deploy/oomkiller.service").read_text()
    assert unit.split("[Service]")[1].replace(unit.split("ExecStart=")[1].split("\n")[0], "") == \
        shipped.split("[Service]")[1].replace(shipped.split("ExecStart=")[1].split("\n")[0], ""), \
        "the installed unit differs from the shipped one beyond ExecStart"
    assert (dest / CONF).read_bytes() == (CHECKOUT / "deploy/oomkiller.toml").read_bytes()
    assert (dest / "usr/local/share/man/man8/oomkiller.8").read_bytes() == (CHECKOUT / "deploy/oomkiller.8").read_bytes()

    again = make("install", dest)
    assert again.stdout.strip() == "install: done", again.stdout

    gone = make("uninstall", dest)
    assert list(dest.rglob("*")) == [], gone.stdout
    assert f"removed {dest}/opt/oomkiller" in gone.stdout
    assert make("uninstall", dest).stdout.startswith("uninstall: nothing to remove")


def test_an_operators_config_is_never_overwritten_nor_removed(tmp_path):
    dest = tmp_path / "root"
    make("install", dest)
    edited = (dest / CONF).read_text() + 'redline = "7%"\n'
    (dest / CONF).write_text(edited)
    out = make("install", dest)
    assert f"kept {dest}/{CONF}" in out.stdout and (dest / CONF).read_text() == edited
    out = make("uninstall", dest)
    assert f"kept {dest}/{CONF}: edited since it was installed" in out.stdout
    assert files(dest) == {CONF} and (dest / CONF).read_text() == edited


def test_a_config_that_was_there_first_is_kept_even_when_it_equals_the_shipped_one(tmp_path):
    dest = tmp_path / "root"
    (dest / "etc/oomkiller").mkdir(parents=True)
    shutil.copy(CHECKOUT / "deploy/oomkiller.toml", dest / CONF)
    make("install", dest)
    make("uninstall", dest)
    assert files(dest) == {CONF}


def test_install_replaces_nothing_it_did_not_make(tmp_path):
    dest = tmp_path / "root"
    (dest / "usr/local/sbin").mkdir(parents=True)
    (dest / "usr/local/sbin/oomkiller").symlink_to("/usr/bin/somebody-elses")
    out = make("install", dest, check=False)
    assert out.returncode != 0 and "not ours: not replacing it" in out.stderr
    assert os.readlink(dest / "usr/local/sbin/oomkiller") == "/usr/bin/somebody-elses"
    other = tmp_path / "other"
    (other / "opt/oomkiller").mkdir(parents=True)
    (other / "opt/oomkiller/data").write_text("not ours\n")
    out = make("install", other, check=False)
    assert out.returncode != 0 and "was not made by this script" in out.stderr
    assert (other / "opt/oomkiller/data").read_text() == "not ours\n"
