"""The daemon's side of the BPF loader: whatever the child does, one clear
SourceUnavailable or the descriptors it sent, never a hang or a leak."""
from __future__ import annotations

import os
import sys

import pytest

from oomkiller.sources import SourceUnavailable, bpfload

# A stand-in loader: reads the request, then acts as argv[1] says.
FAKE = r"""
import json, os, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[-1]))
req = json.loads(sock.recv(65536))
how = sys.argv[1]
if how == "hang":
    time.sleep(60)
elif how == "exit":
    sys.exit(3)
elif how == "garbage":
    sock.send(b"\xff not json")
elif how == "error":
    sock.send(json.dumps({"error": "BPF program failed to compile: " + req["src"]}).encode())
elif how == "miscount":
    r, w = os.pipe()
    socket.send_fds(sock, [json.dumps({"maps": {}, "tracepoints": {}, "fds": 5}).encode()], [r, w])
elif how == "ok":
    r, w = os.pipe()
    socket.send_fds(sock, [json.dumps({"maps": {}, "tracepoints": {"a/b": 0}, "fds": 2, "echo": req}).encode()],
                    [r, w])
"""


def fake(how: str) -> list[str]:
    return [sys.executable, "-c", FAKE, how]


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_the_descriptors_and_the_description_come_back():
    reply, fds = bpfload.load({"src": "x.c", "cflags": ["-DX"]}, 30, command=fake("ok"))
    try:
        assert reply["echo"] == {"src": "x.c", "cflags": ["-DX"]}
        assert reply["tracepoints"] == {"a/b": 0}
        assert len(fds) == 2
        os.write(fds[1], b"y")
        assert os.read(fds[0], 1) == b"y"       # the child's pipe, alive after it exited
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("how, why", [
    ("exit", "the BPF loader exited with status 3 without an answer"),
    ("garbage", "the BPF loader's answer is not JSON"),
    ("error", "BPF program failed to compile: x.c"),
    ("miscount", "the BPF loader sent 2 descriptors, said 5"),
])
def test_a_loader_that_fails_is_one_line_and_leaks_nothing(how, why):
    before = open_fds()
    with pytest.raises(SourceUnavailable) as e:
        bpfload.load({"src": "x.c"}, 30, command=fake(how))
    assert str(e.value) == why
    assert open_fds() <= before


def test_a_loader_that_does_not_answer_is_killed_at_the_timeout():
    before = open_fds()
    with pytest.raises(SourceUnavailable, match="did not answer within 0.5 s: killed it"):
        bpfload.load({"src": "x.c"}, 0.5, command=fake("hang"))
    assert open_fds() <= before


def test_a_loader_that_cannot_start_is_one_line():
    with pytest.raises(SourceUnavailable, match="cannot start the BPF loader /nonexistent/python"):
        bpfload.load({}, 5, command=["/nonexistent/python"])


def test_a_missing_bcc_is_found_without_importing_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "bcc", raising=False)
    with pytest.raises(SourceUnavailable, match="python module bcc not importable .*python3-bpfcc"):
        bpfload.check_bcc()


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


@pytest.mark.parametrize("reply", [
    # a descriptor described as a map that is not one (a tracepoint's, a pipe)
    {"maps": {"events": {"fd": 0, "type": 4, "key_size": 4, "value_size": 4}}, "tracepoints": {"a/b": 1}},
    # maps and tracepoints of the wrong shape
    {"maps": [], "tracepoints": {}},
    {"maps": {}, "tracepoints": ["a/b"]},
    {"maps": {"events": "x"}, "tracepoints": {}},
])
def test_an_answer_that_does_not_fit_is_unavailable_and_every_descriptor_is_closed(reply):
    """What the daemon takes over from the loader: a descriptor it cannot
    use is closed, not kept (a tracepoint's would keep the program
    attached), and an answer of the wrong shape is an error the source
    reports, not an exception that stops the daemon's start."""
    from oomkiller.sources.bpf import BpfSource
    r, w = os.pipe()
    src = BpfSource()
    with pytest.raises((SourceUnavailable, OSError, ValueError, KeyError, TypeError)):
        src._adopt(reply, [r, w])
    src.close()
    assert _closed(r) and _closed(w)
    assert not src.live
