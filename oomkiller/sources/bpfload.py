"""Compile, load and attach the BPF program in a short-lived child process.

bcc's compiler (libLLVM, libclang: about 60 MB mapped by ``import bcc`` alone,
over 100 MB resident while it compiles) is needed once, at start. So the
daemon never imports bcc: it runs ``python -m oomkiller.sources.bpfload``
with its own interpreter, sends it the program and its cflags over a
socketpair, and gets back, with SCM_RIGHTS, the file descriptors that keep
the program alive: the perf events that hold its tracepoint attachments (an
attachment lives while a descriptor of its event is open) and the maps the
daemon reads and writes, with a JSON description of them. The child then
exits without running bcc's clean-up, which would detach the probes.

A loader that fails, dies or does not answer within its timeout makes the
source unavailable with one line saying why, as a missing bcc does.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

from . import SourceUnavailable

# The maps the daemon uses; a map left out by a cflag (no pre-arm, no
# domain filter) is left out of the answer. The program's own maps stay
# alive through the program, which its attachments hold.
MAPS = ("events", "counters", "domain_cg", "armed", "armed_cg")
LOAD_TIMEOUT_S = 60.0
REAP_TIMEOUT_S = 5.0
MAX_MESSAGE_BYTES = 65536
MAX_FDS = 64
# The checkout or site-packages folder that holds the oomkiller package.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bcc_missing(error: str) -> str:
    return (f"python module bcc not importable ({error}): install Debian's python3-bpfcc and run "
            "with /usr/bin/python3 or a venv made with --system-site-packages "
            "(the PyPI package named bcc is unrelated)")


def check_bcc() -> None:
    """SourceUnavailable if the loader's interpreter (this one) has no bcc to
    import; found without importing it."""
    try:
        found = importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError) as e:
        raise SourceUnavailable(bcc_missing(str(e))) from None
    if not found:
        raise SourceUnavailable(bcc_missing("No module named 'bcc'"))


# -- the daemon's side ---------------------------------------------------------
def load(request: dict, timeout_s: float = LOAD_TIMEOUT_S,
         command: list[str] | None = None) -> tuple[dict, list[int]]:
    """Run the loader on ``request`` (``src``, ``cflags``, ``kernel_source``)
    and return its description of the program and the descriptors it sent,
    which the caller then owns. SourceUnavailable on any failure.

    ``command`` (tests) replaces ``python -m oomkiller.sources.bpfload``;
    the socket's descriptor is added as its last argument."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        argv = command or [sys.executable, "-m", "oomkiller.sources.bpfload"]
        proc = subprocess.Popen([*argv, str(child.fileno())],
                                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, cwd="/", env=env)
    except OSError as e:
        parent.close()
        raise SourceUnavailable(f"cannot start the BPF loader {argv[0]}: {e.strerror or e}") from None
    finally:
        child.close()
    fds: list[int] = []
    try:
        end = time.monotonic() + timeout_s
        parent.settimeout(timeout_s)
        parent.sendall(json.dumps(request).encode())
        parent.settimeout(max(0.001, end - time.monotonic()))
        msg, fds, flags, _addr = socket.recv_fds(parent, MAX_MESSAGE_BYTES, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except socket.timeout:
        _close_all(fds)
        _kill(proc)
        raise SourceUnavailable(f"the BPF loader did not answer within {timeout_s:g} s: killed it") from None
    except OSError as e:
        _close_all(fds)
        _kill(proc)
        raise SourceUnavailable(f"the BPF loader failed: {e.strerror or e}") from None
    finally:
        parent.close()
    status = _reap(proc)
    try:
        if not msg:
            raise SourceUnavailable(f"the BPF loader {_how(status)} without an answer")
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise SourceUnavailable("the BPF loader's answer was cut short")
        try:
            reply = json.loads(msg)
        except ValueError:
            raise SourceUnavailable("the BPF loader's answer is not JSON") from None
        if not isinstance(reply, dict):
            raise SourceUnavailable("the BPF loader's answer is not a JSON object")
        if "error" in reply:
            raise SourceUnavailable(str(reply["error"]))
        if reply.get("fds") != len(fds):
            raise SourceUnavailable(f"the BPF loader sent {len(fds)} descriptors, said {reply.get('fds')}")
    except SourceUnavailable:
        _close_all(fds)
        raise
    return reply, fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _kill(proc: subprocess.Popen) -> None:
    """The loader is ours: end it by its pid and reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except OSError:
            pass
    _reap(proc)


def _reap(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None


def _how(status: int | None) -> str:
    if status is None:
        return "did not exit"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


# -- the loader's side -----------------------------------------------------------
def compile_and_attach(request: dict) -> tuple[dict, list[int]]:
    """bcc.BPF on the request; the description and descriptors to send."""
    from .bpf import CapturedError, explain, with_captured_stderr
    try:
        import bcc  # Debian's python3-bpfcc
    except ImportError as e:
        raise SourceUnavailable(bcc_missing(str(e))) from None
    import ctypes
    if request.get("kernel_source"):
        # bcc reads it with getenv() as it compiles; this process is the compile's alone
        os.environ["BCC_KERNEL_SOURCE"] = request["kernel_source"]
    src, cflags = request["src"], [str(f) for f in request["cflags"]]
    try:
        b = with_captured_stderr(lambda: bcc.BPF(src_file=src.encode(), cflags=cflags))
    except CapturedError as e:
        raise SourceUnavailable(explain(e)) from None
    fds: list[int] = []
    maps = {}
    for name in MAPS:
        try:
            table = b.get_table(name)
        except KeyError:
            continue
        # bcc's Leaf of a per-CPU map is the array of all CPUs' values; sLeaf one
        leaf = getattr(table, "sLeaf", table.Leaf)
        maps[name] = {"fd": len(fds), "type": int(table.ttype), "key_size": ctypes.sizeof(table.Key),
                      "value_size": ctypes.sizeof(leaf), "max_entries": int(table.max_entries)}
        fds.append(table.map_fd)
    tracepoints = {}
    for tp, fd in sorted(b.tracepoint_fds.items()):
        tracepoints[tp.decode() if isinstance(tp, bytes) else str(tp)] = len(fds)
        fds.append(fd)
    # The programs themselves: their attachments keep them loaded, but a
    # descriptor of each lets the daemon be seen holding them (what
    # `bpftool prog show --pid`, and the benchmark's run-time figures, read).
    progs = {}
    for name, fn in sorted(b.funcs.items()):
        if getattr(fn, "fd", -1) >= 0:
            progs[name.decode() if isinstance(name, bytes) else str(name)] = len(fds)
            fds.append(fn.fd)
    return {"maps": maps, "tracepoints": tracepoints, "progs": progs, "fds": len(fds)}, fds


def main(argv: list[str]) -> int:
    try:
        sock = socket.socket(fileno=int(argv[1]))
    except (IndexError, ValueError, OSError) as e:
        print(f"oomkiller BPF loader: run by the daemon with its socket's descriptor ({e})", file=sys.stderr)
        return 2
    fds: list[int] = []
    try:
        reply, fds = compile_and_attach(json.loads(sock.recv(MAX_MESSAGE_BYTES)))
    except SourceUnavailable as e:
        reply = {"error": str(e)}
    except Exception as e:      # noqa: BLE001 - one line to the daemon, not a traceback
        reply = {"error": f"the BPF loader failed: {type(e).__name__}: {e}"}
    try:
        socket.send_fds(sock, [json.dumps(reply).encode()], fds)
        status = 0
    except OSError:
        status = 1              # the daemon is gone: the program goes with this process
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a normal exit: bcc's atexit clean-up disables the tracepoint
    # events, which the daemon now holds.
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
