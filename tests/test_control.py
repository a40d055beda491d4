import os
import socket
import stat
import time

import pytest
from hypothesis import given, settings, strategies as st

from oomkiller import control
from oomkiller.config import EXIT_DENIED, EXIT_UNREACHABLE
from oomkiller.control import COMMANDS, ControlError, ControlServer, SocketPathError, parse_request, request


@pytest.fixture
def server(tmp_path):
    seen = []

    def handle(cmd):
        seen.append(cmd)
        if cmd == "rank":
            raise OSError("a cgroup vanished")
        return True, f"did {cmd}", {"n": len(seen)}
    srv = ControlServer(str(tmp_path / "ctl.sock"), handle)
    srv.start()
    yield srv, seen
    srv.close()


def test_round_trip(server):
    srv, seen = server
    assert request(srv.path, "info") == {"ok": True, "text": "did info", "data": {"n": 1}}
    assert request(srv.path, "lowmem")["text"] == "did lowmem"
    assert seen == ["info", "lowmem"]


def test_the_socket_is_made_with_its_mode(server):
    srv, _ = server
    assert stat.S_IMODE(os.lstat(srv.path).st_mode) == 0o666


def test_unknown_command_and_malformed_request(server):
    srv, seen = server
    with pytest.raises(ControlError, match="unknown command 'reboot'"):
        request(srv.path, "reboot")
    assert parse_request(b"not json\n", 0)[0]["error"].startswith("malformed request")
    assert seen == []


def test_a_failing_command_is_an_error_reply_and_the_server_goes_on(server):
    srv, _ = server
    with pytest.raises(ControlError, match="'rank' failed in the daemon: a cgroup vanished"):
        request(srv.path, "rank")
    assert request(srv.path, "info")["ok"]


@pytest.mark.parametrize("payload", [b'{"cmd":[]}\n', b'{"cmd":{}}\n', b"[" * 4000 + b"\n", b"\xff\xfe\n",
                                     b'{"cmd": "info"', b'"info"\n', b"null\n", b"\n", b"x" * 10000])
def test_hostile_requests_get_an_error_or_nothing_and_the_server_lives(server, payload):
    srv, seen = server
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(srv.path)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        reply = b""
    s.close()
    assert reply == b"" or b'"ok": false' in reply
    assert request(srv.path, "info")["ok"] and seen == ["info"]


def test_changes_need_root():
    reply, cmd = parse_request(b'{"cmd": "stop"}\n', 1000)
    assert reply["denied"] and "only root" in reply["error"] and cmd is None
    assert parse_request(b'{"cmd": "info"}\n', 1000) == (None, "info")
    reply, cmd = parse_request(b'{"cmd": "rank"}\n', 1000)
    assert reply["denied"] and cmd is None
    assert parse_request(b'{"cmd": "stop"}\n', 0) == (None, "stop")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([0, 1000]))
def test_any_bytes_give_a_command_or_an_error(data, uid):
    reply, cmd = parse_request(data, uid)
    assert (reply is None) != (cmd is None)
    assert cmd is None or cmd in COMMANDS


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                    max_leaves=20))
def test_any_json_gives_a_command_or_an_error(value):
    import json
    reply, cmd = parse_request(json.dumps({"cmd": value}).encode() + b"\n", 0)
    assert (cmd == value) if isinstance(value, str) and value in COMMANDS else (cmd is None and not reply["ok"])


def test_silent_and_dribbling_clients_do_not_hold_anyone(server):
    srv, _ = server
    held = []
    for i in range(60):         # more than root may hold: the oldest are closed
        s = socket.socket(socket.AF_UNIX)
        s.connect(srv.path)
        held.append(s)
        if i % 2:
            try:
                s.sendall(b'{"cmd": ')         # and then nothing
            except BrokenPipeError:
                pass
    t = time.monotonic()
    assert request(srv.path, "info")["ok"]
    assert time.monotonic() - t < 1.0
    for s in held:
        s.close()


def test_a_user_holds_only_a_few_connections(server, monkeypatch):
    srv, _ = server
    monkeypatch.setattr(control, "peer_uid", lambda conn: 65534)
    held = [socket.socket(socket.AF_UNIX) for _ in range(control.PER_UID_CONNECTIONS + 6)]
    for s in held:
        s.connect(srv.path)
    time.sleep(0.05)
    assert request(srv.path, "info")["ok"]      # the newest is served
    assert srv.stats()["open"] <= control.PER_UID_CONNECTIONS
    assert srv.stats()["refused"] >= 6
    for s in held:
        s.close()


def test_no_daemon(tmp_path):
    with pytest.raises(ControlError) as e:
        request(str(tmp_path / "none.sock"), "info")
    assert e.value.exit_code == EXIT_UNREACHABLE and "no oomkiller daemon" in str(e.value)


def test_stale_socket_is_replaced_but_live_one_is_not(tmp_path, server):
    srv, _ = server
    with pytest.raises(RuntimeError, match="another oomkiller"):
        ControlServer(srv.path, lambda c: (True, "", {}))
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    ControlServer(str(stale), lambda c: (True, "", {})).close()
    assert not stale.exists()
    assert EXIT_DENIED == 4


def _make(kind, path, tmp_path):
    if kind == "file":
        path.write_text("precious")
    elif kind == "symlink":
        (tmp_path / "target").write_text("precious")
        path.symlink_to(tmp_path / "target")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "folder":
        path.mkdir()


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling symlink", "folder"])
def test_only_a_socket_is_ever_replaced(tmp_path, kind):
    path = tmp_path / "ctl.sock"
    _make(kind, path, tmp_path)
    with pytest.raises(SocketPathError, match="exists and is not a socket"):
        ControlServer(str(path), lambda c: (True, "", {}))
    assert os.path.lexists(path)
    if kind in ("file", "symlink"):
        assert (tmp_path / ("target" if kind == "symlink" else "ctl.sock")).read_text() == "precious"


def test_bad_socket_paths_are_one_clear_error(tmp_path):
    (tmp_path / "afile").write_text("")
    for path, why in [(str(tmp_path / "afile" / "ctl.sock"), "cannot make the folder"),
                      (str(tmp_path / ("x" * 120)), "longer than 107 bytes"),
                      (str(tmp_path / "a\0b"), "NUL")]:
        with pytest.raises(SocketPathError, match=why):
            ControlServer(path, lambda c: (True, "", {}))


def test_a_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SocketPathError, match="may be written by other users"):
        ControlServer(str(shared / "ctl.sock"), lambda c: (True, "", {}))
    assert not (shared / "ctl.sock").exists()


def test_a_socket_of_another_kind_is_one_clear_error(tmp_path):
    path = tmp_path / "dgram.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    try:
        with pytest.raises(SocketPathError, match="another kind"):
            ControlServer(str(path), lambda c: (True, "", {}))
    finally:
        s.close()


@pytest.mark.parametrize("reply", [b"[]\n", b'"x"\n', b"null\n", b"[" * 5000 + b"\n",
                                   b'{"ok": true, "data": []}\n', b'{"ok": true, "text": 7}\n',
                                   b'{"ok": false, "error": {}}\n'])
def test_a_reply_that_is_not_an_object_is_one_error(tmp_path, reply):
    import threading
    path = str(tmp_path / "fake.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()
    t = threading.Thread(target=answer)
    t.start()
    with pytest.raises(ControlError, match="no valid reply"):
        request(path, "info", timeout_s=5)
    t.join()
    srv.close()


def test_a_user_opening_connections_fast_is_cut_off_before_any_work(server, monkeypatch):
    srv, seen = server
    monkeypatch.setattr(control, "peer_uid", lambda conn: 65534)
    monkeypatch.setattr(control, "PER_UID_RATE", 5)
    answered = 0
    for _ in range(20):
        try:
            request(srv.path, "info", timeout_s=2)
            answered += 1
        except ControlError:
            pass
    assert 5 <= answered < 20 and srv.stats()["refused"] > 0


def test_a_reply_that_trickles_ends_at_one_deadline(tmp_path):
    import threading
    path = str(tmp_path / "slow.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    stop = threading.Event()

    def answer():
        conn, _ = srv.accept()
        conn.recv(4096)
        while not stop.is_set():        # a byte every 0.2 s, never a newline
            try:
                conn.sendall(b" ")
            except OSError:
                break
            stop.wait(0.2)
        conn.close()
    t = threading.Thread(target=answer)
    t.start()
    t0 = time.monotonic()
    with pytest.raises(ControlError, match="no whole reply within 1 s"):
        request(path, "info", timeout_s=1)
    assert time.monotonic() - t0 < 2
    stop.set()
    t.join()
    srv.close()


def test_while_the_loop_wakes_the_server_waits_a_round_at_most_hold_max(tmp_path):
    """``hold`` (the kill loop woke): a round already under way gives way
    before its next accept, the next waits for ``release``, and a hold
    longer than HOLD_MAX_S still lets a round through, so root is answered
    while the loop kills."""
    seen = []
    srv = ControlServer(str(tmp_path / "ctl.sock"), lambda cmd: seen.append(cmd) or (True, cmd, {}))
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(srv.path)
        c.sendall(b'{"cmd": "info"}\n')
        srv.hold()
        srv.serve_once(0.5, yield_to_hold=True)     # a round that gives way: nothing accepted
        assert not srv._conns and seen == []
        srv.release()
        srv.serve_once(0.5, yield_to_hold=True)     # accepted
        srv.serve_once(0.5, yield_to_hold=True)     # read and answered
        assert seen == ["info"] and c.recv(4096).startswith(b'{"ok": true')
        c.close()
        # the thread: held, a request waits about HOLD_MAX_S, not for the release
        srv.hold()
        srv.start()
        t = time.monotonic()
        assert request(srv.path, "info")["ok"]
        assert time.monotonic() - t < control.CLIENT_DEADLINE_S + 5 * control.HOLD_MAX_S
        assert srv.held
    finally:
        srv.release()
        srv.close()
