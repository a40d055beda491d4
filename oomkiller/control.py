"""The control socket: ``oomkiller info / start / stop / print / lowmem``.

One JSON request line in, one JSON reply line out, over a Unix stream socket.
Anyone who can reach the socket may ask for ``info``; ``rank`` (a scan of every
job) and the commands that change the daemon need the peer to be root,
checked with SO_PEERCRED. A client gets ``CLIENT_DEADLINE_S`` in all to send
its request: the loop that serves it is the one that kills.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any, Callable

ANYONE = frozenset({"info"})
COMMANDS = ANYONE | {"rank", "start", "stop", "print", "lowmem"}
MAX_REQUEST_BYTES = 4096
# A client that connects and then dribbles must not stall the loop for
# long: a real client sends its one line at once.
CLIENT_DEADLINE_S = 0.2


class ControlError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Listens on ``path``; ``handle(cmd) -> (ok, text, data)`` does the work."""

    def __init__(self, path: str, handle: Callable[[str], tuple[bool, str, dict[str, Any]]]) -> None:
        self.path = path
        self.handle = handle
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)         # left behind by a daemon that died
            else:
                probe.close()
                raise RuntimeError(f"{path}: another oomkiller is listening there")
            finally:
                probe.close()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o666)   # anyone may read; changes are checked per request
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept_one(self) -> str | None:
        """Serve one waiting client; return the command it ran, if any."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        with conn:
            deadline = time.monotonic() + CLIENT_DEADLINE_S
            try:
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST_BYTES:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    conn.settimeout(left)
                    chunk = conn.recv(MAX_REQUEST_BYTES)
                    if not chunk:
                        break
                    data += chunk
                reply, cmd = self._reply(data, peer_uid(conn))
                conn.sendall(json.dumps(reply).encode() + b"\n")
                return cmd
            except OSError:
                return None

    def _reply(self, data: bytes, uid: int) -> tuple[dict[str, Any], str | None]:
        try:
            cmd = json.loads(data.decode()).get("cmd")
        except (ValueError, AttributeError, UnicodeDecodeError):
            return {"ok": False, "error": "malformed request: expected one JSON line"}, None
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(sorted(COMMANDS))})"}, None
        if cmd not in ANYONE and uid != 0:
            return {"ok": False, "denied": True, "error": f"'{cmd}' changes the daemon: only root may do that"}, None
        ok, text, extra = self.handle(cmd)
        return {"ok": ok, "text": text, "data": extra}, cmd

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def request(path: str, cmd: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one command to the daemon and return its reply."""
    from .config import EXIT_DENIED, EXIT_FAILURE, EXIT_UNREACHABLE
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise ControlError(f"no oomkiller daemon at {path}: {e.strerror}", EXIT_UNREACHABLE) from None
    except OSError as e:
        raise ControlError(f"{path}: {e}", EXIT_UNREACHABLE) from None
    finally:
        s.close()
    try:
        reply = json.loads(data.decode())
    except ValueError:
        raise ControlError(f"{path}: the daemon sent no valid reply", EXIT_FAILURE) from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "failed"), EXIT_DENIED if reply.get("denied") else EXIT_FAILURE)
    return reply
