"""oomkiller(8): generated from the argument parser, current, complete, and
rendered by man without a warning; the control commands' help says what
each does."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from oomkiller import cli
from oomkiller import config as cfg

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(CHECKOUT, "deploy", "oomkiller.8")


def rendered() -> str:
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    out = subprocess.run(["man", "--warnings", "-l", PAGE], capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # man's hyphenation and fill are not what is tested
    return re.sub(r"\s+", " ", out.stdout.replace("\u2010", "-").replace("\u2011", "-"))


def test_the_page_is_what_the_parser_makes_now():
    pytest.importorskip("argparse_manpage", reason="argparse-manpage (pyproject's `man` extra) is not installed")
    out = subprocess.run([sys.executable, os.path.join(CHECKOUT, "deploy", "manpage.py"), "--check", PAGE],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_page_renders_with_every_exit_code_the_files_and_the_commands():
    text = rendered()
    assert text.startswith("OOMKILLER(8)")
    exit_status = text[text.index("EXIT STATUS"):text.index("ENVIRONMENT")]
    for name in dir(cfg):
        if name.startswith("EXIT_"):
            assert f" {getattr(cfg, name)} " in exit_status, name
    for section in ("SYNOPSIS", "DESCRIPTION", "CONFIGURATION", "FILES", "ENVIRONMENT"):
        assert f" {section} " in text
    for path in ("/etc/oomkiller/oomkiller.toml", "/run/oomkiller/control.sock"):
        assert path in text[text.index(" FILES "):]
    for name, help_text in cli.CONTROL_HELP.items():
        assert f"COMMAND 'oomkiller {name}'" in text
        assert re.sub(r"\s+", " ", help_text) in text
    assert "--domain host|parent|CGROUP_DIR" in text
    assert "BCC_KERNEL_SOURCE" in text


@pytest.mark.parametrize("name", sorted(cli.CONTROL_HELP))
def test_a_control_commands_help_says_what_it_does(name):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.parser().parse_args([name, "--help"])
    text = re.sub(r"\s+", " ", buf.getvalue())
    assert re.sub(r"\s+", " ", cli.CONTROL_HELP[name]) in text.lower()
    assert f"{name} (talks to the running daemon)" not in text
    assert len(cli.CONTROL_HELP[name].split()) >= 5, "a help that only repeats the name"
    assert "--control SOCKET the daemon's control socket" in text


def test_domain_help_names_parent():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "--help"])
    text = re.sub(r"\s+", " ", buf.getvalue())
    assert "--domain host|parent|CGROUP_DIR" in text and "parent (the cgroup above the daemon's own" in text
