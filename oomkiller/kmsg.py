"""One line per kill in the kernel log (``/dev/kmsg``), off the kill loop.

The kernel log is where an operator's alerting already looks for OOM
kills (``dmesg``, ``journalctl -k``, node-problem-detector, log shippers
reading kern.log). oomd writes ``oomd kill: ...`` there for each kill;
oomkiller writes, per kill of a job::

    <4>oomkiller: Killed job 'NAME' by cgroup.kill: 3 procs, 164.6M freed (172572672 bytes), ...

* ``oomkiller: `` is the syslog identifier (journald files the line under
  ``SYSLOG_IDENTIFIER=oomkiller``, ``journalctl -k`` shows it), and
  ``Killed`` is the word kernel-log alerting keys on (the kernel's own line
  is ``Out of memory: Killed process ...``).
* ``<4>``: warning. oomd writes without a prefix, which the kernel files at
  its default message level, 4 (warning) unless the kernel was built
  otherwise; saying it makes ``dmesg -l warn`` and ``journalctl -k -p
  warning`` show the line everywhere. Lines written from user space are
  filed under the user facility, never the kernel's.
* The job's name is escaped (``report.printable``) and then made ASCII: a
  cgroup name is chosen by whoever made the cgroup, and must not end the
  line, forge another, or reach a console as a control sequence.

A write to ``/dev/kmsg`` can block: the writer may have to print to the
consoles itself (a serial console at 115200 baud is ~11 KB/s). So lines go
through a bounded queue to a writer thread (``output.LineWriter``), and at
most ``KMSG_PER_MINUTE`` a minute leave (a token bucket, ``KMSG_BURST`` at
once): a kill storm does not flood the kernel's ring buffer, which holds
what the next kernel OOM report needs. Lines over the limit are counted
(``rate_limited``), as are write errors (``errors``, ``last_error``):
``info`` shows them under ``output: kmsg``. ``kmsg = false`` turns it off.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Callable

from .output import LineWriter

KMSG_PATH = "/dev/kmsg"

# The kernel's own /dev/kmsg limit (printk.devkmsg=ratelimit, the default)
# is 10 lines per 5 s per open file, and it drops silently. Ours is lower
# and counted: with post_kill_delay_ms at 500 ms a storm could kill 120 jobs
# a minute, and the ring buffer (often 128 KiB) must keep room for the
# kernel's own OOM reports.
KMSG_PER_MINUTE = 10
KMSG_BURST = 10

# Lines waiting for the writer: the bucket lets no more through in a burst.
KMSG_QUEUE = 16

def open_kmsg(path: str = KMSG_PATH) -> int:
    """``/dev/kmsg`` for writing, in the writer thread. Only a character
    device: in a container the path may be a plain file someone put there,
    and appending to it would only fill a disk."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise OSError(errno.ENODEV, f"{path} is not a character device (no kernel log here)")
    except OSError:
        os.close(fd)
        raise
    return fd


class TokenBucket:
    """At most ``per_minute`` a minute, ``burst`` at once; ``take`` is given
    the time, so it never reads a clock itself."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._tokens_x60m = burst * 60_000_000     # tokens, scaled by 60 s in usec
        self._at_usec: int | None = None

    def take(self, now_usec: int) -> bool:
        if self._at_usec is not None:
            elapsed = max(0, now_usec - self._at_usec)
            self._tokens_x60m = min(self.burst * 60_000_000, self._tokens_x60m + elapsed * self.per_minute)
        self._at_usec = now_usec
        if self._tokens_x60m >= 60_000_000:
            self._tokens_x60m -= 60_000_000
            return True
        return False


class KernelLog:
    """Kill lines for the kernel log; ``kill()`` never blocks."""

    def __init__(self, path: str = KMSG_PATH, *, opener: Callable[[], int] | None = None,
                 per_minute: int = KMSG_PER_MINUTE, burst: int = KMSG_BURST) -> None:
        self.path = path
        self._bucket = TokenBucket(per_minute, burst)
        self.rate_limited = 0
        self.writer = LineWriter("kmsg", opener=opener or (lambda: open_kmsg(path)), max_lines=KMSG_QUEUE)

    def kill(self, line: str, now_usec: int) -> bool:
        """Queue one line (``report.kmsg_line``); False if the rate limit
        or a full queue dropped it."""
        if not self._bucket.take(now_usec):
            self.rate_limited += 1
            return False
        before = self.writer.dropped
        self.writer.write(line)
        return self.writer.dropped == before

    def stats(self) -> dict[str, int | str]:
        return {**self.writer.stats(), "rate_limited": self.rate_limited}

    def close(self, timeout_s: float = 1.0) -> None:
        self.writer.close(timeout_s)
