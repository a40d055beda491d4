"""Running the daemon as a subprocess in tests, and waiting on conditions."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

from oomkiller.model import parse_record


class DaemonProc:
    """``oomkiller run`` in a subprocess, with its control socket and output."""

    def __init__(self, tmp_path, *args: str) -> None:
        os.makedirs(tmp_path, exist_ok=True)
        self.sock = str(tmp_path / "oomkiller.sock")
        self.json_path = tmp_path / "decisions.jsonl"
        self.err_path = tmp_path / "daemon.err"
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "oomkiller", "run", "--control", self.sock,
                                   "--json-log", str(self.json_path), *args],
                                  stdout=subprocess.DEVNULL, stderr=self.err)
        wait_for(lambda: os.path.exists(self.sock) or self.p.poll() is not None, 20, "control socket")
        assert self.p.poll() is None, self.stderr()

    def ctl(self, cmd: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "oomkiller", cmd, "--control", self.sock, *extra],
                              capture_output=True, text=True, timeout=30)

    def records(self) -> list[dict]:
        if not self.json_path.exists():
            return []
        return [parse_record(json.loads(line)) for line in self.json_path.read_text().splitlines() if line]

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text()

    def wait_log(self, text: str, timeout_s: float = 5) -> str:
        """Wait for ``text`` in the daemon's log, and return the log. The log
        lines and the JSON records leave by different writer threads, so a
        record on disk does not mean its lines are."""
        return wait_for(lambda: (lambda e: e if text in e else None)(self.stderr()), timeout_s, repr(text))

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.terminate()
        rc = self.p.wait(timeout=20)
        self.err.close()
        return rc


def wait_for(cond, timeout_s: float, what: str, step_s: float = 0.01):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def rmdir_cgroup(path: str) -> bool:
    """Remove an empty cgroup folder; False while it is busy (a cgroup whose
    last task just exited is, a moment), for ``wait_for``."""
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        return False
    return True


# Moves itself between two cgroups in a tight loop, in every tree given
# (argv: bytes to hold, then the two places' folders, each a comma-separated
# list over the trees), holding its memory; a write that fails (a cgroup
# going away) is passed over.
HOPPER = r"""
import os, sys
held = b"\x5a" * int(sys.argv[1])
sides = [[os.open(d + "/cgroup.procs", os.O_WRONLY) for d in side.split(",")] for side in sys.argv[2:4]]
print("ready", flush=True)
while True:
    for fds in sides:
        for fd in fds:
            try:
                os.write(fd, b"0")
            except OSError:
                pass
"""
