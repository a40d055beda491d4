import threading

import pytest

from oomkiller.config import EXIT_DENIED, EXIT_UNREACHABLE
from oomkiller.control import ControlError, ControlServer, request


@pytest.fixture
def server(tmp_path):
    seen = []

    def handle(cmd):
        seen.append(cmd)
        return True, f"did {cmd}", {"n": len(seen)}
    srv = ControlServer(str(tmp_path / "ctl.sock"), handle)
    stop = threading.Event()

    def loop():
        import select
        while not stop.is_set():
            if select.select([srv.fileno()], [], [], 0.05)[0]:
                srv.accept_one()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv, seen
    stop.set()
    t.join()
    srv.close()


def test_round_trip(server):
    srv, seen = server
    assert request(srv.path, "info") == {"ok": True, "text": "did info", "data": {"n": 1}}
    assert request(srv.path, "lowmem")["text"] == "did lowmem"
    assert seen == ["info", "lowmem"]


def test_unknown_command_and_malformed_request(server):
    srv, seen = server
    with pytest.raises(ControlError, match="unknown command 'reboot'"):
        request(srv.path, "reboot")
    assert srv._reply(b"not json\n", 0)[0]["error"].startswith("malformed request")
    assert seen == []


def test_changes_need_root(server):
    srv, seen = server
    reply, cmd = srv._reply(b'{"cmd": "stop"}\n', 1000)
    assert reply["denied"] and "only root" in reply["error"] and cmd is None
    reply, cmd = srv._reply(b'{"cmd": "info"}\n', 1000)
    assert reply["ok"] and cmd == "info"
    reply, cmd = srv._reply(b'{"cmd": "rank"}\n', 1000)
    assert reply["denied"] and cmd is None


def test_a_silent_client_does_not_hold_the_loop(server):
    import socket
    import time
    srv, seen = server
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.path)
    s.sendall(b'{"cmd": ')         # and then nothing
    t = time.monotonic()
    assert request(srv.path, "info")["ok"]
    assert time.monotonic() - t < 2
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
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    ControlServer(str(stale), lambda c: (True, "", {})).close()
    assert EXIT_DENIED == 4
