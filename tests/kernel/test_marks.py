"""What a kill leaves behind where other tools look: a line in the kernel
log, read back from /dev/kmsg."""
from __future__ import annotations

import errno
import os
import signal

from kproc import wait_for


class KmsgReader:
    """Records written to the kernel log from now on (as root)."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.records: list[tuple[int, str]] = []

    def read(self) -> list[tuple[int, str]]:
        """(priority with facility, message) of each new record."""
        while True:
            try:
                rec = os.read(self.fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                return self.records
            except OSError as e:
                if e.errno == errno.EPIPE:      # overwritten while we read: go on from the next
                    continue
                raise
            head, _, msg = rec.partition(";")
            self.records.append((int(head.split(",")[0]), msg.split("\n")[0]))

    def close(self) -> None:
        os.close(self.fd)


def test_a_kill_writes_one_line_to_the_kernel_log(arena, daemon):
    job = arena.job("hog")
    hog = arena.spawn_idle(job, 16 << 20)
    kmsg = KmsgReader()
    try:
        d = daemon("--domain", arena.path, "--redline", "1M")
        assert d.ctl("lowmem").returncode == 0
        assert hog.wait(timeout=20) == -signal.SIGKILL

        def ours():
            return [(p, m) for p, m in kmsg.read() if m.startswith("oomkiller: Killed job 'hog' by ")]
        ((prio, msg),) = wait_for(ours, 5, "the kill line in /dev/kmsg")
        # written from user space at warning: facility user (1), level 4
        assert prio == (1 << 3) | 4, prio
        assert " procs, " in msg and " freed (" in msg and " bytes), empty " in msg, msg
        info = d.ctl("info").stdout
        assert "kmsg: written=1, dropped=0, errors=0, queued=0, rate_limited=0" in info, info
    finally:
        kmsg.close()


def test_kmsg_false_writes_nothing(arena, daemon, monkeypatch):
    job = arena.job("hog")
    hog = arena.spawn_idle(job, 16 << 20)
    monkeypatch.setenv("OOMKILLER_KMSG", "false")
    kmsg = KmsgReader()
    try:
        d = daemon("--domain", arena.path, "--redline", "1M")
        assert d.ctl("lowmem").returncode == 0
        assert hog.wait(timeout=20) == -signal.SIGKILL
        wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"], 5, "the kill record")
        assert not [m for _, m in kmsg.read() if m.startswith("oomkiller: ")]
        assert "kmsg:" not in d.ctl("info").stdout
    finally:
        kmsg.close()
