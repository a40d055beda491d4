"""What setup leaves on the host: no OOM killer but the one under test.

The benchmark's contenders come from deploy/setup-bench.sh, masked; Debian's
packages would otherwise enable and start them as services."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

UNITS = ("earlyoom.service", "nohang.service", "nohang-desktop.service", "lxcfs.service")
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("unit", UNITS)
def test_no_other_oom_killer_is_enabled(unit):
    if shutil.which("systemctl") is None:
        return      # no systemd: nothing can start them at boot
    state = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True).stdout.strip()
    assert state in ("masked", ""), f"{unit} is {state}: setup must leave it masked"


def test_no_other_oom_killer_is_running():
    for name in ("earlyoom", "nohang"):
        out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
        assert out == [], f"{name} runs as pid {out}: setup must not start it"


def test_the_daemons_setup_installs_no_other_oom_killer():
    text = (CHECKOUT / "deploy" / "setup-host.sh").read_text()
    apt = next(line for line in text.splitlines() if line.startswith("APT_PACKAGES="))
    assert not any(p in apt for p in ("earlyoom", "nohang", "lxcfs", "stress-ng")), apt


def test_the_daemons_setup_writes_nothing_into_lib_modules():
    # bcc is pointed at /usr/src's headers by the daemon (BCC_KERNEL_SOURCE);
    # tests/kernel/test_bpf.py compiles that way with /lib/modules hidden.
    text = (CHECKOUT / "deploy" / "setup-host.sh").read_text()
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in commands if "/lib/modules" in line and any(
        word in line for word in ("ln ", "mkdir", "cp ", "install ", "> "))], commands
