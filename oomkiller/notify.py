"""systemd's service notification protocol (sd_notify(3)): READY, STATUS,
STOPPING and the watchdog's pings, never in the kill loop's way.

A message is one datagram of ``KEY=value`` lines to the AF_UNIX socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). It is
sent here with ``MSG_DONTWAIT`` from a non-blocking socket: a service manager
that is slow to read (PID 1 under the very memory pressure being relieved)
costs a dropped, counted message, never a wait. Nothing here raises.

Why not a library: Debian's python3-systemd wraps libsystemd's sd_notify(),
which sends with a blocking ``sendmsg`` and is called with the GIL held, so
a full notify queue would freeze every thread of the daemon, the loop
included; the PyPI ``sdnotify`` (last release 2017) also sends blocking and
swallows every error, so none could be counted. The protocol itself is one
of systemd's stable interfaces (systemd.io/PORTABILITY_AND_STABILITY), meant
to be spoken without libsystemd.

Every environment variable may be wrong: a value that cannot be used is
ignored with one warning, and the daemon runs on without that part.
"""
from __future__ import annotations

import errno
import os
import re
import socket
from typing import Callable, Mapping

Warn = Callable[[str], None]

# sun_path holds 108 bytes: a path and its NUL, or an abstract name after its NUL.
SUN_PATH_BYTES = 108
# The loop wakes at least this often when it must (core.timer's floor): a
# watchdog asking for pings more often than this cannot be served.
MIN_PING_USEC = 10_000
# systemd takes WatchdogSec= up to years; past a day it is a typo.
MAX_WATCHDOG_USEC = 86_400_000_000
# `systemctl status` shows STATUS= on one line: keep it short.
MAX_STATUS_CHARS = 300

_DECIMAL = re.compile(r"[0-9]{1,20}", re.ASCII)


def _show(value: str) -> str:
    """An environment value as a warning shows it: escaped, cut short."""
    return repr(value[:120] + ("..." if len(value) > 120 else ""))


def one_line(text: str) -> str:
    """``text`` as one line of a notify message: a newline would start
    another assignment (``READY=1``, ``MAINPID=``...), so control characters
    are escaped; cut at MAX_STATUS_CHARS."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= MAX_STATUS_CHARS else out[:MAX_STATUS_CHARS - 3] + "..."


def socket_address(value: str) -> bytes:
    """``$NOTIFY_SOCKET`` as a sockaddr_un path; ValueError says why not."""
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise ValueError("it holds a NUL byte")
    if raw.startswith(b"@"):
        if len(raw) < 2:
            raise ValueError("an abstract socket needs a name after '@'")
        addr = b"\0" + raw[1:]
        if len(addr) > SUN_PATH_BYTES:
            raise ValueError(f"the name is {len(raw) - 1} bytes; an abstract name takes at most {SUN_PATH_BYTES - 1}")
        return addr
    if not raw.startswith(b"/"):
        raise ValueError("not an absolute path or an abstract '@name' (vsock: addresses are not supported)")
    if len(raw) >= SUN_PATH_BYTES:
        raise ValueError(f"the path is {len(raw)} bytes; a socket path takes at most {SUN_PATH_BYTES - 1}")
    return raw


def watchdog_usec(environ: Mapping[str, str], pid: int, warn: Warn) -> int:
    """The watchdog period systemd asks of this process, or 0: none asked,
    or asked of another process (``$WATCHDOG_PID``), or a value that is not a
    period (warned about)."""
    value = environ.get("WATCHDOG_USEC")
    if value is None:
        return 0
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or not 0 < int(value) <= MAX_WATCHDOG_USEC:
        warn(f"ignoring WATCHDOG_USEC={_show(str(value))}: not a period of 1 to {MAX_WATCHDOG_USEC} microseconds; "
             "no watchdog pings")
        return 0
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        if not isinstance(owner, str) or not _DECIMAL.fullmatch(owner) or int(owner) == 0:
            warn(f"ignoring the watchdog: WATCHDOG_PID={_show(str(owner))} is not a process id; no watchdog pings")
            return 0
        if int(owner) != pid:
            warn(f"ignoring the watchdog: WATCHDOG_PID={owner} is another process (this is {pid}); "
                 "no watchdog pings")
            return 0
    return int(value)


class Notifier:
    """Notifications to the service manager named by ``environ``
    (``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``, ``$WATCHDOG_PID``).

    With no ``NOTIFY_SOCKET`` every call is a no-op. Sends never block and
    never raise: each failure is counted (``stats()``), and the first of each
    kind is warned about."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None,
                 warn: Warn | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._warn = warn or (lambda _msg: None)
        self.address: bytes | None = None
        self._sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0
        self.last_error = ""
        self._warned: set[int] = set()
        self.watchdog_usec = 0
        self.ping_interval_usec = 0
        self._next_ping_usec: int | None = None
        value = environ.get("NOTIFY_SOCKET")
        if value:
            try:
                self.address = socket_address(value)
            except ValueError as e:
                self._warn(f"ignoring NOTIFY_SOCKET={_show(value)}: {e}; no readiness or watchdog notifications")
        wd = watchdog_usec(environ, os.getpid() if pid is None else pid, self._warn)
        if wd and self.address is None:
            if not value:
                self._warn("ignoring WATCHDOG_USEC: no NOTIFY_SOCKET to send the pings to")
            wd = 0
        if self.address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError as e:
                self._warn(f"cannot make a socket for systemd notifications: {e.strerror or e}")
                self.address, wd = None, 0
        if wd:
            self.watchdog_usec = wd
            # sd_watchdog_enabled(3): ping at half the period.
            self.ping_interval_usec = wd // 2
            if self.ping_interval_usec < MIN_PING_USEC:
                self._warn(f"WATCHDOG_USEC={wd} asks for pings more often than every {MIN_PING_USEC // 1000} ms, "
                           f"as often as the loop can promise: pinging every {MIN_PING_USEC // 1000} ms")
                self.ping_interval_usec = MIN_PING_USEC

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=value`` lines; True if it left."""
        if self._sock is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "backslashreplace")
        try:
            self._sock.sendto(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self.address)
        except OSError as e:
            self.errors += 1
            self.last_error = f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e}"
            if e.errno not in self._warned and len(self._warned) < 16:
                self._warned.add(e.errno)
                self._warn(f"systemd notification not delivered ({self.last_error}); further failures like it "
                           "are only counted")
            return False
        self.sent += 1
        return True

    def ready(self, status: str, now_usec: int) -> None:
        """READY=1 with the first STATUS and the first watchdog ping."""
        lines = ["READY=1", f"STATUS={one_line(status)}"]
        if self.ping_interval_usec:
            lines.append("WATCHDOG=1")
            self._next_ping_usec = now_usec + self.ping_interval_usec
        self.send(*lines)

    def status(self, status: str) -> None:
        self.send(f"STATUS={one_line(status)}")

    def stopping(self, status: str) -> None:
        self._next_ping_usec = None
        self.send("STOPPING=1", f"STATUS={one_line(status)}")

    @property
    def next_ping_usec(self) -> int | None:
        """When the next ping is due (None: no watchdog, or not ready yet)."""
        return self._next_ping_usec

    def ping(self, now_usec: int) -> bool:
        """WATCHDOG=1 if one is due at ``now_usec``. Call it from the loop
        itself, so that a loop that stops stops the pings."""
        due = self._next_ping_usec
        if due is None or now_usec < due:
            return False
        self._next_ping_usec = now_usec + self.ping_interval_usec
        return self.send("WATCHDOG=1")

    def stats(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {"sent": self.sent, "errors": self.errors,
                                     "watchdog_ms": self.watchdog_usec // 1000}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
