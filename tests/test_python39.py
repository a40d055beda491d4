"""The package on the oldest Python it claims (pyproject: requires-python
>= 3.9, tomli before 3.11): this plain tier, run again under a Python 3.9
interpreter in a venv of its own with pytest, hypothesis and tomli.

The interpreter is taken from $OOMKILLER_PYTHON39, pyenv's versions or PATH;
without one the test skips and says so. The venv is kept in build/ and
reused while it works."""
from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
VENV = CHECKOUT / "build" / "venv-py39"
PACKAGES = ("pytest", "hypothesis", "tomli")


def python39() -> str | None:
    candidates = [os.environ.get("OOMKILLER_PYTHON39", "")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9.*/bin/python3.9")), reverse=True)
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.9.*/bin/python3.9"), reverse=True)
    candidates.append(shutil.which("python3.9") or "")
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return None


def venv_python(base: str) -> str:
    py = str(VENV / "bin" / "python")
    probe = [py, "-c", "import sys, pytest, hypothesis, tomli; assert sys.version_info[:2] == (3, 9)"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=300)
    out = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.skip(f"could not install {', '.join(PACKAGES)} for Python 3.9: {out.stderr.strip()[-300:]}")
    return py


@pytest.mark.skipif(sys.version_info < (3, 10), reason="this is the Python 3.9 run itself")
def test_the_plain_tier_passes_on_python_3_9():
    base = python39()
    if base is None:
        pytest.skip("no Python 3.9 interpreter (set OOMKILLER_PYTHON39, or install 3.9.x with pyenv)")
    py = venv_python(base)
    # Not the tiers that need root, nor the install test, which builds with
    # the system's Python whatever runs it, nor the manifests' check, which
    # reads YAML files, not the package (its tool is in the main venv).
    out = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                          "--ignore=tests/kernel", "--ignore=tests/vm", "--ignore=tests/guest",
                          "--deselect=tests/test_install.py", "--deselect=tests/test_manifests.py"],
                         cwd=CHECKOUT, capture_output=True, text=True, timeout=900,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    tail = "\n".join(out.stdout.splitlines()[-30:])
    assert out.returncode == 0, tail + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1], tail
