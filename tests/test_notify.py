"""systemd notifications (oomkiller.notify) over real AF_UNIX datagram
sockets: what arrives, that a send never waits, and that every environment
value that cannot be used is one warning, never a traceback."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from oomkiller.notify import MIN_PING_USEC, Notifier


def receiver(address) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2)
    return s


def notifier(env: dict[str, str], pid: int | None = None) -> tuple[Notifier, list[str]]:
    warnings: list[str] = []
    return Notifier(env, pid=pid, warn=warnings.append), warnings


@pytest.fixture
def sock_path(tmp_path):
    path = str(tmp_path / "notify")
    s = receiver(path)
    yield path, s
    s.close()


def test_no_notify_socket_is_a_no_op():
    n, warnings = notifier({})
    assert not n.enabled and n.send("READY=1") is False
    n.ready("x", 0)
    assert n.ping(10**12) is False and n.next_ping_usec is None
    assert (n.sent, n.errors, warnings) == (0, 0, [])


def test_ready_status_and_stopping_arrive_on_a_path_socket(sock_path):
    path, s = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path})
    n.ready("watching host", 0)
    assert s.recv(4096) == b"READY=1\nSTATUS=watching host"
    n.status("kills 1")
    assert s.recv(4096) == b"STATUS=kills 1"
    n.stopping("bye")
    assert s.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    assert (n.sent, n.errors, warnings) == (3, 0, [])


def test_an_abstract_socket(tmp_path):
    name = f"oomkiller-test-{os.getpid()}-{time.monotonic_ns()}"
    s = receiver(b"\0" + name.encode())
    try:
        n, warnings = notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("abstract", 0)
        assert s.recv(4096) == b"READY=1\nSTATUS=abstract"
        assert warnings == []
    finally:
        s.close()


def test_a_status_cannot_forge_another_assignment(sock_path):
    path, s = sock_path
    n, _ = notifier({"NOTIFY_SOCKET": path})
    n.status("job 'x\nREADY=1\nMAINPID=1'")
    data = s.recv(4096)
    assert data.count(b"\n") == 0 and data.startswith(b"STATUS=job 'x\\nREADY=1")
    n.status("y" * 5000)
    assert len(s.recv(8192)) <= len("STATUS=") + 300


def test_watchdog_pings_at_half_the_period(sock_path):
    path, s = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert (n.watchdog_usec, n.ping_interval_usec) == (4_000_000, 2_000_000)
    assert n.next_ping_usec is None and n.ping(10**9) is False     # not before READY
    n.ready("up", 1_000_000)
    assert s.recv(4096) == b"READY=1\nSTATUS=up\nWATCHDOG=1"
    assert n.ping(2_999_999) is False
    assert n.ping(3_000_000) is True and s.recv(4096) == b"WATCHDOG=1"
    assert n.next_ping_usec == 5_000_000
    assert warnings == []


@pytest.mark.parametrize("value, why", [
    ("relative/notify", "not an absolute path"),
    ("@", "needs a name"),
    ("vsock:2:1234", "not an absolute path"),
    ("/" + "a" * 200, "takes at most 107"),
    ("@" + "b" * 200, "takes at most 107"),
    ("/run/a\0b", "NUL"),
])
def test_a_notify_socket_that_cannot_be_used_is_one_warning(value, why):
    n, warnings = notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_usec == 0
    assert len(warnings) == 1 and why in warnings[0] and "NOTIFY_SOCKET" in warnings[0], warnings
    n.ready("x", 0)
    assert n.ping(10**12) is False and n.errors == 0


@pytest.mark.parametrize("usec", ["abc", "0", "-5", "1e6", " 100", "99999999999999999999999", "\u0661\u0662\u0663",
                                  "100000000000000"])
def test_a_watchdog_period_that_is_not_one_is_one_warning(sock_path, usec):
    path, _ = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec})
    assert n.enabled and n.watchdog_usec == 0 and n.ping_interval_usec == 0
    assert len(warnings) == 1 and "WATCHDOG_USEC" in warnings[0], warnings


@pytest.mark.parametrize("pid, said", [("1", "another process"), ("x", "not a process id"), ("0", "not a process id")])
def test_a_watchdog_for_another_process_is_not_ours(sock_path, pid, said):
    path, _ = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": pid}, pid=4242)
    assert n.watchdog_usec == 0 and len(warnings) == 1 and said in warnings[0], warnings


def test_a_watchdog_shorter_than_the_loop_can_serve_is_capped(sock_path):
    path, _ = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2"})
    assert n.ping_interval_usec == MIN_PING_USEC and len(warnings) == 1


def test_a_receiver_that_never_reads_costs_no_wait(sock_path):
    path, s = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path})

    def waited(*_):
        raise AssertionError("a send waited for the reader")
    old = signal.signal(signal.SIGALRM, waited)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        t0 = time.monotonic()
        for _ in range(5000):
            n.send("STATUS=" + "z" * 200)
        took = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # A blocking send would wait here for a reader that never comes.
    assert took < 2.0, took
    assert n.errors > 0 and n.sent + n.errors == 5000
    assert n.last_error.startswith("EAGAIN")
    assert len(warnings) == 1, warnings           # then only counted
    assert n.stats()["errors"] == n.errors


def test_a_receiver_that_went_away_is_counted(sock_path):
    path, s = sock_path
    n, warnings = notifier({"NOTIFY_SOCKET": path})
    s.close()
    os.unlink(path)
    for _ in range(3):
        assert n.send("WATCHDOG=1") is False
    assert n.errors == 3 and len(warnings) == 1 and "not delivered" in warnings[0]
