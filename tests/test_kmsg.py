"""The kernel log's kill line: one escaped ASCII line, rate-limited, written
by its own thread, failures counted."""
from __future__ import annotations

import io
import os
import re
import threading
import time

import pytest

from trees import short_arena, short_config, wait_until

from oomkiller import config as cfg
from oomkiller import report
from oomkiller.kmsg import KMSG_BURST, KernelLog, TokenBucket, open_kmsg
from oomkiller.model import Job, KillResult

MiB = 1 << 20


def _result(name="hog", **kw):
    job = Job(name=name, path="/x/" + name, inode=4028)
    fields = dict(ok=True, dry_run=False, method="cgroup.kill", signalled_pids=(3344, 3346),
                  freed_bytes=172572672, signal_to_empty_usec=5600)
    fields.update(kw)
    return KillResult(job, **fields)


def test_the_line_names_oomkiller_the_job_and_the_bytes_freed():
    line = report.kmsg_line("system.slice/hog.service", _result(), "host", 12 * MiB, 256 * MiB)
    assert line == ("<4>oomkiller: Killed job 'system.slice/hog.service' by cgroup.kill: 2 procs, 164.6M freed "
                    "(172572672 bytes), empty 5.6 ms after the signal; domain 'host' had 12M free of 256M\n")


def test_a_job_that_did_not_empty_and_an_armed_kill_say_so():
    line = report.kmsg_line("hog", _result(left_pids=(3346,), freed_bytes=0), "arena", MiB, 256 * MiB)
    assert "by cgroup.kill: 2 procs, 0B freed (0 bytes), NOT EMPTY: 1 procs left;" in line
    line = report.kmsg_line("hog", None, "arena", MiB, 256 * MiB)
    assert line.startswith("<4>oomkiller: Killed job 'hog' in the kernel at its failed reclaim (armed kill)")


@pytest.mark.parametrize("name", [
    "evil\n<0>kernel: Out of memory: forged",
    "cr\rlf\r\n", "esc\x1b[2Jclear", "bidi\u202etxt.exe", "caf\u00e9/\u30b8\u30e7\u30d6", "nul\x00byte",
    "back\\slash", "x" * 5000, "\ud800lone",
])
def test_a_hostile_name_stays_one_ascii_line(name):
    line = report.kmsg_line(name, _result(name=name), name, MiB, 2 * MiB)
    assert line.endswith("\n") and line.count("\n") == 1
    body = line[:-1]
    assert body.isascii() and body.isprintable(), body
    assert body.startswith("<4>oomkiller: Killed job '") and len(line.encode()) < 900
    assert "<0>" not in body or "\\n<0>" in body


def test_the_bucket_lets_a_burst_through_then_one_every_six_seconds():
    b = TokenBucket(10, 10)
    t = 1_000_000_000
    assert [b.take(t) for _ in range(12)] == [True] * 10 + [False] * 2
    assert not b.take(t + 5_900_000)
    assert b.take(t + 6_000_000) and not b.take(t + 6_000_001)
    assert sum(b.take(t + 600_000_000) for _ in range(20)) == 10      # refilled, never past the burst


def _pipe_log(**kw):
    r, w = os.pipe()
    return KernelLog(opener=lambda: w, **kw), r, w


def test_lines_leave_through_the_writer_and_the_rest_are_counted_as_rate_limited():
    klog, r, w = _pipe_log()
    try:
        sent = [klog.kill(f"<4>oomkiller: Killed job 'j{i}'\n", 1_000_000 + i) for i in range(KMSG_BURST + 3)]
        assert sent == [True] * KMSG_BURST + [False] * 3
        assert wait_until(lambda: klog.stats()["written"] == KMSG_BURST)
        got = os.read(r, 65536).decode()
        assert got.splitlines() == [f"<4>oomkiller: Killed job 'j{i}'" for i in range(KMSG_BURST)]
        assert klog.stats()["rate_limited"] == 3 and klog.stats()["errors"] == 0
    finally:
        klog.close()
        os.close(r)
        os.close(w)


def test_a_blocked_kernel_log_never_holds_up_the_caller():
    # The writer thread is stuck in its write (printk pressure): the caller
    # only queues, and what does not fit is dropped and counted.
    release = threading.Event()

    def stuck() -> int:
        release.wait(10)
        raise OSError(5, "stuck")
    klog = KernelLog(opener=stuck, per_minute=100_000, burst=100_000)
    try:
        t0 = time.monotonic()
        sent = [klog.kill("<4>oomkiller: Killed job 'x'\n", 1_000 + i) for i in range(200)]
        assert time.monotonic() - t0 < 0.5
        assert sent.count(False) >= 200 - 17 and klog.stats()["dropped"] == sent.count(False)
    finally:
        release.set()
        klog.close()


def test_write_failures_are_counted_with_their_reason(tmp_path):
    klog = KernelLog(str(tmp_path / "no-such-kmsg"))
    try:
        klog.kill("<4>oomkiller: Killed job 'x'\n", 1)
        assert wait_until(lambda: klog.stats()["errors"] == 1)
        assert "No such file" in klog.stats()["last_error"]
    finally:
        klog.close()


def test_only_a_character_device_is_opened_never_a_file_or_a_symlink(tmp_path):
    plain = tmp_path / "kmsg"
    plain.write_text("")
    with pytest.raises(OSError, match="not a character device"):
        open_kmsg(str(plain))
    assert plain.read_text() == ""
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    with pytest.raises(OSError) as e:
        open_kmsg(str(link))
    assert e.value.errno == 40      # ELOOP: O_NOFOLLOW
    os.close(open_kmsg("/dev/null"))


def test_kmsg_is_on_by_default_and_a_bad_value_is_one_line():
    assert cfg.Config().kmsg and not cfg.load(environ={"OOMKILLER_KMSG": "off"}).kmsg
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'kmsg': not a boolean: 'maybe'$"):
        cfg.load(cli={"kmsg": "maybe"})




def _short_daemon(proc_tree, v2_tree, klog, **conf):
    from oomkiller.daemon import Daemon
    # the job's cgroup name holds a newline: the kernel-log line must not
    short_arena(proc_tree, v2_tree, (("hog\nfake", "hog", 4101, 150),))
    c = short_config(proc_tree, v2_tree, **conf)
    return Daemon(c, json_out=io.StringIO(), clock=lambda: 5_000_000_000, kernel_log=klog)


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_daemon_writes_a_line_per_kill_and_none_for_a_dry_run(proc_tree, v2_tree, monkeypatch, dry_run):
    from oomkiller.model import PressureEvent
    klog, r, w = _pipe_log()
    try:
        d = _short_daemon(proc_tree, v2_tree, klog, dry_run=dry_run)

        def walk(ranking, still_short=None, past_gone=True):
            c = ranking.killable()[0]
            return [(c, KillResult(c.job, ok=True, dry_run=dry_run, method="cgroup.kill", signalled_pids=(4101,),
                                   signal_to_empty_usec=2000))]
        monkeypatch.setattr(d.killer, "walk", walk)
        d.wake([PressureEvent("timer", "tick", timestamp_usec=5_000_000)])
        assert d.info()[1]["output"]["kmsg"]["rate_limited"] == 0
        if dry_run:
            time.sleep(0.1)
            assert klog.stats()["written"] == 0
            return
        assert wait_until(lambda: klog.stats()["written"] == 1)
        line = os.read(r, 4096).decode()
        assert re.fullmatch(r"<4>oomkiller: Killed job 'hog\\nfake' by cgroup\.kill: 1 procs, \S+ freed \(\d+ bytes\), "
                            r"empty 2\.0 ms after the signal; domain '/arena' had 6M free of 256M\n", line), line
        assert "kmsg: written=1, dropped=0, errors=0, queued=0, rate_limited=0" in d.info()[0]
    finally:
        klog.close()
        os.close(r)
        os.close(w)
