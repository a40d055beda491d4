"""The control socket's client side: what ``oomkiller info``, ``rank`` and
the other control commands need to ask the daemon (``control`` is the
server). Kept to a few standard modules: a control command answers in
milliseconds, so nothing here pulls in the daemon, its sources or the config
parser."""
from __future__ import annotations

import json
import socket
import time
from .exitcodes import EXIT_DENIED, EXIT_FAILURE, EXIT_UNREACHABLE
from .text import printable

TYPE_CHECKING = False       # typing costs a control command 2 ms
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONTROL_SOCKET = "/run/oomkiller/control.sock"
DEFAULT_CONFIG_FILE = "/etc/oomkiller/oomkiller.toml"
MAX_SOCKET_PATH_BYTES = 107         # sun_path is 108 bytes with its NUL
# A reply larger than this is not the daemon's (a ranking of 10,000 jobs is
# a few MiB).
MAX_REPLY_BYTES = 16 << 20


class ControlError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def request(path: str, cmd: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one command to the daemon and return its reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                s.connect(path)
                break
            except BlockingIOError:
                # The listen backlog is full (a flood from other users): the
                # daemon is there, keep knocking until the deadline.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            # One deadline for the whole reply, and a bound on its size:
            # whatever answers on the socket may trickle or never stop.
            left = deadline - time.monotonic()
            if left <= 0 or len(data) > MAX_REPLY_BYTES:
                raise ControlError(f"{path}: no whole reply within {timeout_s:g} s and {MAX_REPLY_BYTES >> 20} MiB",
                                   EXIT_FAILURE)
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise ControlError(f"{path}: no whole reply within {timeout_s:g} s and {MAX_REPLY_BYTES >> 20} MiB",
                                   EXIT_FAILURE) from None
            if not chunk:
                break
            data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise ControlError(f"no oomkiller daemon at {path}: {e.strerror}", EXIT_UNREACHABLE) from None
    except PermissionError as e:
        raise ControlError(f"cannot reach the oomkiller daemon at {path}: {e.strerror}: the socket or a "
                           "folder above it is closed to this user", EXIT_UNREACHABLE) from None
    except OSError as e:
        raise ControlError(f"cannot reach the oomkiller daemon at {path}: {e.strerror or e}",
                           EXIT_UNREACHABLE) from None
    finally:
        s.close()
    try:
        reply = json.loads(data.decode())
    except (ValueError, RecursionError):
        reply = None
    if (not isinstance(reply, dict) or not isinstance(reply.get("data", {}), dict)
            or not isinstance(reply.get("text", ""), str) or not isinstance(reply.get("error", ""), str)):
        raise ControlError(f"{path}: the daemon sent no valid reply (busy with other clients?)", EXIT_FAILURE)
    if not reply.get("ok"):
        raise ControlError(printable(reply.get("error", "failed")),
                           EXIT_DENIED if reply.get("denied") else EXIT_FAILURE)
    return reply
