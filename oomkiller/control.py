"""The control socket: ``oomkiller info / start / stop / print / lowmem``.

One JSON request line in, one JSON reply line out, over a Unix stream socket.
Anyone who can reach the socket may ask for ``info``; ``rank`` (a scan of every
job) and the commands that change the daemon need the peer to be root,
checked with SO_PEERCRED.

The server runs in its own thread, never in the kill loop: every connection
is non-blocking state in one epoll set, with ``CLIENT_DEADLINE_S`` to send its
request and read its reply, and each user other than root may hold at most
``PER_UID_CONNECTIONS`` at once (a new one closes that user's oldest), so a flood of
silent, dribbling or garbage connections costs the loop nothing and root is
still served. Requests that change the daemon only set its flags and nudge
the loop; the loop does the rest.

The socket path is handled as an attacker would try it: its folder must be
writable by its owner only (root or the daemon's user), only a stale socket
is ever replaced (never a file, a symlink or a folder), and the socket gets
its mode from the umask at ``bind``, so it is never visible with another.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from typing import Any, Callable

from .client import ControlError, request  # noqa: F401 - the client side, for whoever imports it from here
from .output import LoopHold, start_thread

log = logging.getLogger("oomkiller")

ANYONE = frozenset({"info"})
COMMANDS = ANYONE | {"rank", "start", "stop", "print", "lowmem"}
MAX_REQUEST_BYTES = 4096
# A real client sends its one line at once and reads its reply at once.
CLIENT_DEADLINE_S = 0.2
# Open connections a user other than root may hold; root's own limit.
PER_UID_CONNECTIONS = 4
ROOT_CONNECTIONS = 32
LISTEN_BACKLOG = 1024       # the kernel caps it at net.core.somaxconn
# While the kill loop wakes (``hold``), the server waits before its next
# round, at most this long a round: the loop's reads each give the GIL away,
# and a flood of connections the server accepts and refuses could keep it
# up to the interpreter's switch interval every time (a user flooding the
# socket cost 1-4 of 20 races against the kernel). Under a client's
# deadline, so that root is still answered while the loop kills.
HOLD_MAX_S = 0.05
# Connections a user other than root may open per second; more are closed
# as they are accepted, before any work is done for them.
PER_UID_RATE = 100
SUN_PATH_MAX = 107

Handler = Callable[[str], "tuple[bool, str, dict[str, Any]]"]


class SocketPathError(ValueError):
    """The control socket cannot be made at this path (the message says why)."""


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def parse_request(data: bytes, uid: int) -> tuple[dict[str, Any] | None, str | None]:
    """The first line of ``data`` as a command ``uid`` may run: ``(None, cmd)``,
    or ``(error reply, None)``. Total: any bytes give one or the other."""
    line = data.split(b"\n", 1)[0]
    try:
        req = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        req = None
    cmd = req.get("cmd") if isinstance(req, dict) else None
    if not isinstance(cmd, str):
        return {"ok": False, "error": 'malformed request: expected one JSON line like {"cmd": "info"}'}, None
    if cmd not in COMMANDS:
        shown = cmd if len(cmd) <= 40 else cmd[:40] + "..."
        return {"ok": False, "error": f"unknown command {shown!r} (known: {', '.join(sorted(COMMANDS))})"}, None
    if cmd not in ANYONE and uid != 0:
        return {"ok": False, "denied": True, "error": f"'{cmd}' changes or scans the daemon: only root may run it"}, None
    return None, cmd


class _Conn:
    __slots__ = ("sock", "uid", "deadline", "inbuf", "outbuf")

    def __init__(self, sock: socket.socket, uid: int, deadline: float) -> None:
        self.sock = sock
        self.uid = uid
        self.deadline = deadline
        self.inbuf = b""
        self.outbuf = b""


class ControlServer(LoopHold):
    """Listens on ``path``; ``handle(cmd) -> (ok, text, data)`` does the work,
    in the server's thread (``start()``), so it must only read the daemon's
    state or set its flags."""

    def __init__(self, path: str, handle: Handler) -> None:
        self.path = path
        self.handle = handle
        self.served = 0
        self.refused = 0
        self.timed_out = 0
        self._conns: dict[int, _Conn] = {}
        self._per_uid: collections.Counter = collections.Counter()
        self._rate: collections.Counter = collections.Counter()
        self._rate_second = 0
        self.sock = _bind(path)
        self.sock.setblocking(False)
        self._sel: selectors.BaseSelector | None = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = None
        self._stopping = False
        # the kill loop's hold: the server finishes what it is reading or
        # writing and waits, at most HOLD_MAX_S a round
        LoopHold.__init__(self)
        self._yield = False     # this round gives way to a hold that starts in it

    def fileno(self) -> int:
        return self.sock.fileno()

    def stats(self) -> dict[str, int]:
        return {"served": self.served, "refused": self.refused, "timed_out": self.timed_out,
                "open": len(self._conns)}

    # -- the server thread ----------------------------------------------------------
    def start(self) -> None:
        self._thread = start_thread(self.serve_forever, "oomkiller-control")

    def serve_forever(self) -> None:
        while not self._stopping:
            # released: this round gives way again to the next hold; held
            # past HOLD_MAX_S: this round runs whole, so that the server
            # goes on while the loop kills
            released = self._go.wait(HOLD_MAX_S)
            try:
                self.serve_once(self._next_timeout(), yield_to_hold=released)
            except Exception:
                # Nothing a client sends may end the server: log and go on.
                log.exception("OOM: control server error")
                time.sleep(0.01)

    def serve_once(self, timeout_s: float | None, yield_to_hold: bool = False) -> None:
        self._yield = yield_to_hold
        for key, mask in self._sel.select(timeout_s):
            if self._yield and self.held:
                break       # the loop woke: what is ready is ready again next round
            if key.fileobj is self.sock:
                self._accept()
            elif key.fileobj == self._stop_r:
                self._stopping = True
            else:
                conn = key.data
                try:
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    elif mask & selectors.EVENT_WRITE:
                        self._write(conn)
                except OSError:
                    self._drop(conn)
        self._expire()

    def _next_timeout(self) -> float | None:
        if not self._conns:
            return None
        return max(0.0, min(c.deadline for c in self._conns.values()) - time.monotonic())

    def _accept(self) -> None:
        for _ in range(LISTEN_BACKLOG):
            if self._yield and self.held:
                return
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: shed the oldest non-root connection
                    # so root can still get in.
                    self._shed()
                    return
                raise
            try:
                uid = peer_uid(sock)
            except OSError:
                sock.close()
                continue
            if uid != 0 and not self._rate_ok(uid):
                self.refused += 1
                sock.close()
                continue
            cap = ROOT_CONNECTIONS if uid == 0 else PER_UID_CONNECTIONS
            if self._per_uid[uid] >= cap:
                # The newest wins: a real client speaks at once, so the
                # oldest of this user's connections is the one to let go.
                self.refused += 1
                self._drop(min((c for c in self._conns.values() if c.uid == uid), key=lambda c: c.deadline))
            sock.setblocking(False)
            conn = _Conn(sock, uid, time.monotonic() + CLIENT_DEADLINE_S)
            self._conns[sock.fileno()] = conn
            self._per_uid[uid] += 1
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _rate_ok(self, uid: int) -> bool:
        """At most PER_UID_RATE new connections a second for a user other than root."""
        second = int(time.monotonic())
        if self._rate_second != second:
            self._rate_second = second
            self._rate.clear()
        self._rate[uid] += 1
        return self._rate[uid] <= PER_UID_RATE

    def _read(self, conn: _Conn) -> None:
        chunk = conn.sock.recv(MAX_REQUEST_BYTES)
        conn.inbuf += chunk
        if b"\n" not in conn.inbuf and chunk and len(conn.inbuf) < MAX_REQUEST_BYTES:
            return
        if not conn.inbuf.strip():
            self._drop(conn)
            return
        error, cmd = parse_request(conn.inbuf[:MAX_REQUEST_BYTES], conn.uid)
        if error is None:
            try:
                ok, text, data = self.handle(cmd)
                reply = {"ok": ok, "text": text, "data": data}
            except Exception as e:
                log.exception("OOM: control command %s failed", cmd)
                reply = {"ok": False, "error": f"'{cmd}' failed in the daemon: {e}"}
        else:
            reply = error
        self.served += 1
        conn.outbuf = json.dumps(reply).encode() + b"\n"
        conn.sock.shutdown(socket.SHUT_RD)
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        conn.outbuf = conn.outbuf[n:]
        if not conn.outbuf:
            self._drop(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.timed_out += 1
            self._drop(conn)

    def _shed(self) -> None:
        others = [c for c in self._conns.values() if c.uid != 0]
        if others:
            self._drop(min(others, key=lambda c: c.deadline))

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        self._per_uid[conn.uid] -= 1
        if self._per_uid[conn.uid] <= 0:
            del self._per_uid[conn.uid]
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def stop(self) -> None:
        """End the server thread (the socket stays until ``close``)."""
        self._stopping = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def close(self) -> None:
        if self._sel is None:
            return
        self.stop()
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._sel.close()
        self._sel = None
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass


def _bind(path: str) -> socket.socket:
    """A listening socket at ``path``, or SocketPathError / RuntimeError."""
    if "\0" in path:
        raise SocketPathError(f"{path!r}: a NUL byte in the path")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise SocketPathError(f"{path}: longer than {SUN_PATH_MAX} bytes, the most a Unix socket path may have")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        st = os.stat(folder)
    except OSError as e:
        raise SocketPathError(f"cannot make the folder {folder}: {e.strerror}"
                              + (" (run as root, or choose --control)" if e.errno == errno.EACCES else "")) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"{folder} is not a folder")
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise SocketPathError(f"{folder} may be written by other users (owner uid {st.st_uid}, mode "
                              f"{stat.S_IMODE(st.st_mode):o}): someone could replace the socket; choose a folder "
                              f"only its owner can write, like /run/oomkiller")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise SocketPathError(f"{path}: {e.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(f"{path} exists and is not a socket: refusing to replace it")
        if _listening(path):
            raise RuntimeError(f"{path}: another oomkiller is listening there")
        os.unlink(path)         # left behind by a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Anyone may connect (info is for everyone; the rest is checked per
    # request): 0666 from the start, not set after the name is visible.
    old = os.umask(0o111)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise SocketPathError(f"{path}: {e.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(LISTEN_BACKLOG)
    return sock


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True             # a full backlog: someone is there
    except OSError as e:
        if e.errno == errno.EPROTOTYPE:
            raise SocketPathError(f"{path} is a socket of another kind (datagram or seqpacket): "
                                  "refusing to replace it") from None
        raise SocketPathError(f"{path}: {e.strerror}") from None
    finally:
        probe.close()
    return True
