"""A local user who floods the control socket, for the abuse tests.

Runs as an unprivileged uid (``nobody``) and, until its time is up, keeps
up to ``CONNS`` connections open that are silent, dribble a byte at a time,
or send garbage (the payloads that once crashed the daemon), reconnecting
as the daemon closes them. It stops by itself; the test also kills it by pid.
"""
from __future__ import annotations

import os
import subprocess
import sys

NOBODY = 65534

FLOODER = r"""
import os, random, signal, socket, sys, time
path, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def finish(*_):
    global end
    end = 0
signal.signal(signal.SIGTERM, finish)
garbage = [b'{"cmd":[]}\n', b'{"cmd":{}}\n', b"[" * 4000, b"\xff" * 100, b'{"cmd": "stop"}\n',
           b'{"cmd": "lowmem"}\n', b"x" * 8000]
end = time.monotonic() + seconds
held = []
made = 0
while time.monotonic() < end:
    while len(held) < conns:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            s.close()
            time.sleep(0.001)
            break
        made += 1
        kind = made % 3
        if kind == 2:
            try:
                s.send(random.choice(garbage))
            except OSError:
                pass
        held.append((s, kind))
    keep = []
    for s, kind in held:
        try:
            if kind == 1:
                s.send(b"{")            # dribble
            if s.recv(1 << 16, socket.MSG_DONTWAIT) == b"":
                s.close()               # the daemon let it go: make another
                continue
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        keep.append((s, kind))
    held = keep
    time.sleep(0.01)
print(made, flush=True)
"""


def start(sock: str, seconds: float, conns: int = 200) -> subprocess.Popen:
    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    return subprocess.Popen(["/usr/bin/python3", "-I", "-c", FLOODER, sock, str(seconds), str(conns)],
                            stdout=subprocess.PIPE, text=True, preexec_fn=drop, cwd="/")


def stop(p: subprocess.Popen) -> int:
    """Connections the flooder made (0 if it had to be killed)."""
    if p.poll() is None:
        p.terminate()
    try:
        out, _ = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate(timeout=5)
    return int(out.strip() or 0)


if __name__ == "__main__":
    p = start(sys.argv[1], float(sys.argv[2]))
    print(stop(p) if p.wait() is not None else 0)
