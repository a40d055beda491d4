"""What a kill leaves behind where other tools look: a line in the kernel
log, read back from /dev/kmsg, and systemd-oomd's xattrs on the killed
job's unit cgroup, read back from cgroupfs."""
from __future__ import annotations

import errno
import os
import signal

from kproc import wait_for

from oomkiller.marks import KILL, OOMS


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
        # (the kernel log is the machine's: lines of other daemons in other arenas may be there)
        name = os.path.basename(arena.path)
        assert not [m for _, m in kmsg.read() if m.startswith("oomkiller: ") and name in m]
        assert "kmsg:" not in d.ctl("info").stdout
    finally:
        kmsg.close()


def _xattrs(path: str) -> dict[str, bytes]:
    return {k: os.getxattr(path, k) for k in os.listxattr(path) if k.startswith("user.oomd_")}


def test_a_kill_marks_the_job_as_systemd_oomd_does(arena, daemon):
    job = arena.job("hog")
    hogs = [arena.spawn_idle(job, 8 << 20) for _ in range(2)]
    d = daemon("--domain", arena.path, "--redline", "1M")
    assert d.ctl("lowmem").returncode == 0
    assert [h.wait(timeout=20) for h in hogs] == [-signal.SIGKILL] * 2
    marked = job.v2_path or job.path        # its v2 cgroup where it has one
    wait_for(lambda: _xattrs(marked).get(KILL), 5, "user.oomd_kill")
    assert _xattrs(marked) == {OOMS: b"1", KILL: b"2"}
    assert "marks: marked=2, dropped=0, gone=0, refused=0, errors=0, queued=0" in d.ctl("info").stdout
    for other in {arena.path, arena.v2_path} - {""}:
        assert _xattrs(other) == {}, other


def test_a_job_inside_a_unit_marks_the_unit_where_systemd_reads_them(arena, daemon):
    unit = arena.job("app.service")
    payload = arena.job("app.service/payload")
    worker = arena.spawn_idle(payload, 8 << 20)
    d = daemon("--domain", arena.path, "--redline", "1M", "--jobs", "payload")
    assert d.ctl("lowmem").returncode == 0
    assert worker.wait(timeout=20) == -signal.SIGKILL
    unit_cg = unit.v2_path or unit.path
    wait_for(lambda: _xattrs(unit_cg).get(KILL), 5, "user.oomd_kill on the unit")
    assert _xattrs(unit_cg) == {OOMS: b"1", KILL: b"1"}
    assert _xattrs(payload.v2_path or payload.path) == {}


def test_cgroup_marks_false_and_a_dry_run_mark_nothing(arena, daemon, monkeypatch):
    job = arena.job("hog")
    hog = arena.spawn_idle(job, 8 << 20)
    d = daemon("--domain", arena.path, "--redline", "1M", "--dry-run")
    assert d.ctl("lowmem").returncode == 0
    wait_for(lambda: [r for r in d.records() if r.get("result") == "dry_run"], 5, "the dry run's record")
    d.stop()
    monkeypatch.setenv("OOMKILLER_CGROUP_MARKS", "0")
    d = daemon("--domain", arena.path, "--redline", "1M")
    assert d.ctl("lowmem").returncode == 0
    assert hog.wait(timeout=20) == -signal.SIGKILL
    wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"], 5, "the kill record")
    assert _xattrs(job.v2_path or job.path) == {}
    assert "marks:" not in d.ctl("info").stdout
