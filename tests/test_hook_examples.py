"""The example hooks of deploy/hooks/: shellcheck-clean, and what they do
given the daemon's environment, with loginctl, runuser, notify-send and
systemctl replaced by fakes that log their arguments."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "deploy" / "hooks"
EXAMPLES = sorted(p for p in HOOKS.iterdir() if p.is_file())


def test_the_examples_are_posix_sh_and_executable():
    assert {p.name for p in EXAMPLES} == {"notify-desktop", "restart-unit"}
    for p in EXAMPLES:
        assert p.read_text().startswith("#!/bin/sh\n") and os.access(p, os.X_OK), p


def test_the_examples_are_shellcheck_clean():
    # make setup installs it: missing, this fails rather than passes unseen
    assert shutil.which("shellcheck"), "shellcheck is not installed: run make setup"
    out = subprocess.run(["shellcheck", "-s", "sh", *map(str, EXAMPLES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def fakes(tmp_path):
    """A bin folder of fakes that append their name and arguments to a log."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "log"

    def fake(name: str, body: str = "") -> None:
        (bin_ / name).write_text(f"#!/bin/sh\nprintf '%s' {name} >> {log}\nprintf '|%s' \"$@\" >> {log}\n"
                                 f"echo >> {log}\n{body}")
        os.chmod(bin_ / name, 0o755)

    def run(hook: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run([str(HOOKS / hook)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                              env={"PATH": f"{bin_}:/usr/sbin:/usr/bin:/sbin:/bin", **env})

    def calls() -> list[list[str]]:
        return [line.split("|") for line in log.read_text().splitlines()] if log.exists() else []
    return fake, run, calls


POST = {"OOMKILLER_HOOK": "post_kill", "OOMKILLER_SIGNAL": "KILL"}


# A systemctl that knows a few system units, each in its slice.
SYSTEMCTL = """case $1 in show)
  case $6 in
    web@1.service | web.service | sshd.service | systemd-reboot.service) echo system.slice ;;
    db.service) echo data-db.slice ;;
  esac ;;
esac
"""


def restarts(calls) -> list[list[str]]:
    return [c for c in calls() if c[1] == "restart"]


def test_restart_unit_restarts_the_killed_system_service_and_nothing_else(fakes):
    fake, run, calls = fakes
    fake("systemctl", SYSTEMCTL)
    out = run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/memory/system.slice/web@1.service",
              OOMKILLER_CGROUP_V2="/sys/fs/cgroup/unified/system.slice/web@1.service")
    assert out.returncode == 0, out.stderr
    assert restarts(calls) == [["systemctl", "restart", "--no-block", "--", "web@1.service"]]
    assert calls()[0] == ["systemctl", "show", "-p", "Slice", "--value", "--", "web@1.service"]
    # in nested slices, on a v1 memory hierarchy, and on pure v2
    assert run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/memory/data.slice/data-db.slice/db.service"
               ).returncode == 0
    assert run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/system.slice/web.service").returncode == 0
    assert [c[-1] for c in restarts(calls)] == ["web@1.service", "db.service", "web.service"]
    for cgroup in ("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
                   "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope",
                   "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice", "",
                   # cgroups someone was given, named after system units: not those units'
                   "/sys/fs/cgroup/unified/arena/u1/systemd-reboot.service",
                   "/sys/fs/cgroup/unified/arena/u1/system.slice/sshd.service",
                   "/sys/fs/cgroup/memory/arena/sshd.service",
                   "/elsewhere/system.slice/sshd.service"):
        assert run("restart-unit", **POST, OOMKILLER_CGROUP=cgroup).returncode == 0
    # one in slices the unit does not run in
    out = run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/unified/other.slice/sshd.service")
    assert out.returncode == 1 and "sshd.service runs in system.slice, not in other.slice" in out.stderr
    out = run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/unified/system.slice/gone.service")
    assert out.returncode == 1 and "gone.service runs in no slice, not in system.slice" in out.stderr
    assert run("restart-unit", **{**POST, "OOMKILLER_SIGNAL": "TERM"},
               OOMKILLER_CGROUP="/sys/fs/cgroup/system.slice/web.service").returncode == 0
    assert len(restarts(calls)) == 3
    # a name someone chose is only ever an argument, and a strange one none
    out = run("restart-unit", **POST, OOMKILLER_CGROUP="/sys/fs/cgroup/system.slice/a$(touch x) b.service")
    assert out.returncode == 1 and "restart-unit: not a unit name: a$(touch x) b.service" in out.stderr
    assert len(restarts(calls)) == 3
    out = run("restart-unit", OOMKILLER_HOOK="pre_kill", OOMKILLER_SIGNAL="KILL")
    assert out.returncode == 2 and "a post_kill hook" in out.stderr


def test_restart_unit_restarts_the_unit_named_in_a_copy(fakes, tmp_path):
    fake, _run, calls = fakes
    fake("systemctl")
    copy = tmp_path / "restart-app"
    copy.write_text((HOOKS / "restart-unit").read_text().replace('\nUNIT=""\n', '\nUNIT="app.service"\n'))
    os.chmod(copy, 0o755)
    subprocess.run([str(copy)], env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", **POST,
                                     "OOMKILLER_CGROUP": "/sys/fs/cgroup/system.slice/hog.scope"}, check=True)
    assert calls() == [["systemctl", "restart", "--no-block", "--", "app.service"]]


SESSIONS = {   # id: (Type, Active, Name, User)
    "2": ("wayland", "yes", "alice", "1000"),
    "3": ("x11", "yes", "alice", "1000"),        # a second one of hers: one notification
    "5": ("tty", "yes", "bob", "1001"),          # no screen
    "7": ("x11", "no", "carol", "1002"),         # not active
    "9": ("wayland", "yes", "dave", "1003"),     # no bus
}


def _loginctl_body() -> str:
    lines = "\n".join(f"{i} {u[3]} {u[2]} seat0 tty{i}" for i, u in SESSIONS.items())
    shows = "\n".join(f"  {i}) printf 'Active=%s\\nName=%s\\nType=%s\\nUser=%s\\n' {u[1]} {u[2]} {u[0]} {u[3]} ;;"
                      for i, u in SESSIONS.items())
    return (f"case $1 in\nlist-sessions) cat <<'X'\n{lines}\nX\n;;\n"
            f"show-session) case $2 in\n{shows}\n  *) exit 1 ;;\n  esac ;;\nesac\n")


def test_notify_desktop_tells_each_graphical_user_once_through_their_bus(fakes, tmp_path):
    fake, run, calls = fakes
    fake("loginctl", _loginctl_body())
    fake("runuser")
    fake("notify-send")
    run_user = tmp_path / "run-user"
    (run_user / "1000").mkdir(parents=True)
    bus = socket.socket(socket.AF_UNIX)
    bus.bind(str(run_user / "1000" / "bus"))
    try:
        out = run("notify-desktop", **POST, NOTIFY_DESKTOP_RUN_USER=str(run_user),
                  OOMKILLER_JOB="system.slice/<b>&hog.service", OOMKILLER_FREED_BYTES=str(1536 << 10))
    finally:
        bus.close()
    assert out.returncode == 1      # dave could not be told
    assert f"notify-desktop: dave (uid 1003) has no session bus at {run_user}/1003/bus" in out.stderr
    runuser = [c for c in calls() if c[0] == "runuser"]
    assert runuser == [["runuser", "-u", "alice", "--", "env", f"DBUS_SESSION_BUS_ADDRESS=unix:path={run_user}/1000/bus",
                        "timeout", "2", "notify-send", "-a", "oomkiller", "-u", "critical", "-i", "dialog-warning",
                        "Low memory: <b>&hog.service was killed",
                        "That freed 1.5 MiB. (system.slice/&lt;b&gt;&amp;hog.service, by oomkiller)"]]


def test_notify_desktop_says_what_is_missing(fakes, tmp_path):
    fake, _run, _calls = fakes
    fake("loginctl", "exit 0\n")
    out = subprocess.run([str(HOOKS / "notify-desktop")], capture_output=True, text=True, timeout=30,
                         env={"PATH": str(tmp_path / "bin"), **POST})    # a loginctl, no notify-send
    assert out.returncode == 1
    assert out.stderr == "notify-desktop: notify-send not found (notify-send is in libnotify-bin)\n"
