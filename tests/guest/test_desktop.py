"""A logged-in user's apps are jobs each, on the shipped defaults.

A user with a lingering session (``loginctl enable-linger``) runs two apps
the way a desktop does, as scopes of their service manager's ``app.slice``
(``systemd-run --user --scope``): a quiet one and a hog. A system service
runs beside them. The deployed daemon, on the shipped config, must kill the
hog's scope and nothing else of the user's: not their other app, not their
service manager, not the whole ``user.slice``. ``oomkiller rank`` must print
the walk the daemon then takes. And no other OOM killer may be enabled or
running beside it.
"""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys

import pytest

from guestlib import (MIB, Daemon, kernel_oom_kills, main_pids, sh, show, start_idle, stop_test_units,
                      wait_for)
from oomkiller_bench.arena import HOG_SOURCE, IDLE_SOURCE

USER = "oomkt-user"
OTHER_OOM_KILLERS = ("earlyoom.service", "nohang.service", "nohang-desktop.service", "oomd.service",
                     "systemd-oomd.service")


@pytest.fixture(scope="module")
def user():
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        sh("useradd", "--create-home", "--shell", "/bin/sh", USER)
    uid = pwd.getpwnam(USER).pw_uid
    sh("loginctl", "enable-linger", USER)
    manager = f"user@{uid}.service"
    wait_for(lambda: show(manager, "ActiveState")["ActiveState"] == "active", 120, f"{manager} to start", 0.5)
    wait_for(lambda: os.path.exists(f"/run/user/{uid}/bus"), 60, "the user's bus", 0.2)
    yield uid
    sh("loginctl", "disable-linger", USER, check=False)
    sh("loginctl", "terminate-user", USER, check=False)


class App:
    """An app of the user's, in a scope of its own in their app.slice."""

    def __init__(self, uid: int, name: str, source: str, *args) -> None:
        env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": f"/run/user/{uid}",
               "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{uid}/bus"}
        self.unit = f"app-{name}.scope"
        # the checkout lands at /opt/oomkiller at boot (deploy/vm): the hog
        # and idle sources need nothing from it, the interpreter is Debian's
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups", "--reset-env", "env",
             *(f"{k}={v}" for k, v in env.items()),
             "systemd-run", "--user", "--quiet", "--scope", "--slice=app.slice", f"--unit={self.unit}", "--",
             "/usr/bin/python3", "-c", source, *map(str, args)],
            stdout=subprocess.PIPE, text=True)
        self.cgroup_rel = (f"user.slice/user-{uid}.slice/user@{uid}.service/app.slice/{self.unit}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def ranked(out: str) -> set[tuple[str, str, bool]]:
    return {(c["job"], c["class"], c["killable"]) for c in json.loads(out)}


def test_a_users_hog_scope_dies_and_nothing_else_of_theirs(user):
    for unit in OTHER_OOM_KILLERS:
        state = sh("systemctl", "is-enabled", unit, check=False).stdout.strip()
        assert state in ("disabled", "masked", ""), f"{unit} is {state}"
    for unit in OTHER_OOM_KILLERS[:-1]:
        assert sh("systemctl", "is-active", unit, check=False).stdout.strip() != "active", unit
    uid = user
    oom_before = kernel_oom_kills()
    quiet = App(uid, "oomkt-quiet", IDLE_SOURCE, 24 * MIB)
    service = start_idle("oomkt-beside", 40 * MIB)
    # systemd-oomd is installed here for the benchmark, disabled; its socket
    # starts it when a user's manager reports to it, as on any desktop that
    # has it. The daemon must say so; then it is stopped, so that the kill
    # below is the daemon's alone.
    sh("systemctl", "start", "systemd-oomd.service")
    daemon = Daemon().start()
    hog = None
    try:
        oomd_pid = int(show("systemd-oomd.service", "MainPID")["MainPID"])
        assert [oomd_pid, "systemd-oomd"] in daemon.info()["other_oom_killers"]
        wait_for(lambda: f"another OOM killer is running: systemd-oomd (pid {oomd_pid})" in daemon.journal(), 10,
                 "the warning about systemd-oomd")
        sh("systemctl", "stop", "systemd-oomd.socket", "systemd-oomd.service")
        assert quiet.proc.stdout.readline().strip() == "ready"
        services = main_pids()
        manager_pid = int(show(f"user@{uid}.service", "MainPID")["MainPID"])
        # The shipped defaults: each app scope a job, never the user as a whole.
        rank = subprocess.run([sys.executable, "-m", "oomkiller", "rank", "--json"], capture_output=True,
                              text=True, timeout=120)
        assert rank.returncode == 0, rank.stderr
        before = ranked(rank.stdout)
        names = {n for n, *_ in before}
        assert quiet.cgroup_rel in names and "system.slice/oomkt-beside.service" in names
        user_tree = f"user.slice/user-{uid}.slice/user@{uid}.service"
        assert not {"user.slice", f"user.slice/user-{uid}.slice", user_tree, user_tree + "/app.slice"} & names
        # A hog of the user's grows (about 200 MB/s) until the daemon acts,
        # on real pressure on the whole guest.
        hog = App(uid, "oomkt-hog", HOG_SOURCE, 4 * MIB, 0.02, 0)
        rec = wait_for(daemon.kills, 180, "the daemon's kill", 0.2)[0]
        assert rec["victim"]["job"] == hog.cgroup_rel, rec["victim"]
        assert hog.proc.wait(timeout=30) == -signal.SIGKILL
        assert kernel_oom_kills() == oom_before, "the kernel's OOM killer acted"
        # nothing else of the user's, and nothing of the system's
        assert quiet.proc.poll() is None
        assert int(show(f"user@{uid}.service", "MainPID")["MainPID"]) == manager_pid
        assert service.active() and main_pids() == services and daemon.alive()
        assert len(daemon.kills()) == 1
        # `rank` printed the daemon's own walk (it asked the daemon): the
        # record holds the walk's first 16 jobs, the hog first, and the
        # others are rank's, in the same classes.
        walk = [(c["job"], c["class"], c["killable"]) for c in rec["ranking"]]
        assert walk[0] == (hog.cgroup_rel, "normal", True)
        assert set(walk[1:]) <= before and len(walk) == min(16, len(before) + 1), (walk, before)
        mine = [c for c in json.loads(rank.stdout) if c["job"] == "system.slice/oomkiller.service"]
        assert [(c["class"], c["reasons"][0]) for c in mine] == [("protect", "holds oomkiller itself")]
    finally:
        daemon.stop()
        sh("systemctl", "stop", "systemd-oomd.socket", "systemd-oomd.service", check=False)
        for app in (quiet, hog):
            if app is not None:
                app.close()
        stop_test_units()
        sh("systemctl", "reset-failed", check=False)
