"""The Prometheus endpoint: loopback or a Unix socket only, figures from
what the loop published, bounded work per request."""
from __future__ import annotations

import io
import logging
import socket
import sys
import time

import pytest

from trees import killing_walk, short_arena, short_config

from oomkiller import config as cfg
from oomkiller.metrics import Buckets, cumulative, parse_address

prometheus_client = pytest.importorskip("prometheus_client", reason="the optional metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from oomkiller.metrics import MetricsServer  # noqa: E402

MiB = 1 << 20


@pytest.mark.parametrize("value, want", [
    ("127.0.0.1:9127", ("tcp", ("127.0.0.1", 9127))), ("localhost:1", ("tcp", ("127.0.0.1", 1))),
    ("[::1]:9127", ("tcp", ("::1", 9127))), ("127.8.9.10:65535", ("tcp", ("127.8.9.10", 65535))),
    ("/run/oomkiller/metrics.sock", ("unix", "/run/oomkiller/metrics.sock")),
])
def test_loopback_and_socket_addresses(value, want):
    assert parse_address(value) == want
    assert cfg.load(cli={"metrics": value}).metrics == value


@pytest.mark.parametrize("value, why", [
    ("0.0.0.0:9127", "not a loopback address"), ("10.1.2.3:9127", "not a loopback address"),
    ("[::]:9127", "not a loopback address"), ("example.com:9127", "not an IP address"),
    ("127.0.0.1:0", "port must be"), ("127.0.0.1:99999", "port must be"), ("127.0.0.1:x", "port must be"),
    (":9127", "HOST:PORT"), ("metrics.sock", "HOST:PORT"), ("/" + "a" * 200, "107"),
    ("127.0.0.1:9127\n", "control character"), (9127, "not a non-empty string"),
])
def test_anything_else_is_one_line_naming_the_key(value, why):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(cli={"metrics": value})
    msg = str(e.value)
    assert msg.startswith("command line: bad value for 'metrics': ") and why in msg and "\n" not in msg, msg


def test_off_by_default():
    assert cfg.Config().metrics == "" and cfg.load(environ={"OOMKILLER_METRICS": ""}).metrics == ""


def test_buckets_are_cumulative_in_seconds():
    b = Buckets((1000, 10_000))
    for usec in (10, 1000, 1001, 50_000, -5):
        b.observe(usec)
    assert cumulative(b.snapshot()) == [("0.001", 3), ("0.01", 4), ("+Inf", 5)]
    assert b.snapshot()["sum_usec"] == 10 + 1000 + 1001 + 50_000


def _daemon_after_a_kill(proc_tree, v2_tree, monkeypatch):
    from oomkiller.daemon import Daemon
    from oomkiller.model import PressureEvent
    short_arena(proc_tree, v2_tree, (("hog", "hog", 4101, 150),))
    c = short_config(proc_tree, v2_tree)
    out = io.StringIO()
    d = Daemon(c, json_out=out, clock=lambda: 5_000_000_000)

    # the domain's use falls by 100 MiB once it is killed
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MiB))
    rec = d.wake([PressureEvent("timer", "tick", timestamp_usec=4_990_000)])
    d.publish()
    return d, rec


def _scrape(connect, request=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> tuple[int, bytes]:
    s = connect()
    s.settimeout(5)
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _values(body: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_a_scrape_shows_what_the_decision_record_says(tmp_path, proc_tree, v2_tree, monkeypatch):
    (tmp_path / "run").mkdir(mode=0o755)
    path = str(tmp_path / "run" / "metrics.sock")
    d, rec = _daemon_after_a_kill(proc_tree, v2_tree, monkeypatch)
    srv = MetricsServer(path, lambda: d.published)
    srv.start()
    try:
        def unix():
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        code, body = _scrape(unix)
        assert code == 200
        v = _values(body)
        assert v[("oomkiller_kills_total", (("method", "cgroup.kill"), ("result", "emptied")))] == 1
        assert v[("oomkiller_freed_bytes_total", ())] == rec.freed_bytes == 100 * MiB
        assert v[("oomkiller_domain_total_bytes", ())] == rec.snapshot["total_bytes"] == 256 * MiB
        assert v[("oomkiller_domain_free_bytes", ())] == rec.snapshot["free_bytes"]
        assert v[("oomkiller_redline_bytes", ())] == rec.redline_bytes
        assert v[("oomkiller_wakes_total", (("source", "timer"),))] == 1
        assert v[("oomkiller_signal_to_empty_seconds_count", ())] == 1
        assert v[("oomkiller_signal_to_empty_seconds_bucket", (("le", "0.0025"),))] == 0
        assert v[("oomkiller_signal_to_empty_seconds_bucket", (("le", "0.005"),))] == 1
        assert v[("oomkiller_event_to_decision_seconds_sum", ())] == rec.timings_usec["event_to_decision"] / 1e6
        assert v[("oomkiller_armed_kills_total", ())] == 0 and v[("oomkiller_kernel_oom_kills_total", ())] == 0
        assert v[("oomkiller_resident_bytes", ())] > 1 * MiB
        assert ("oomkiller_locked_bytes", ()) in v
        assert _scrape(unix, b"GET /other HTTP/1.0\r\n\r\n")[0] == 404
        assert _scrape(unix, b"\x00\xff garbage\r\n\r\n")[0] == 400
        try:        # closed with the rest of the request unread: the reply may be lost to a reset
            code = _scrape(unix, b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n")[0]
        except ConnectionResetError:
            code = None
        assert code in (431, None)
        assert srv.stats()["served"] == 1 and srv.stats()["refused"] == 3
        d.metrics = srv
        assert "metrics: listen=" in d.info()[0]
    finally:
        srv.close()


def test_a_silent_client_holds_the_endpoint_at_most_a_second(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = MetricsServer(f"127.0.0.1:{port}", lambda: None)
    srv.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        t0 = time.monotonic()
        code, body = _scrape(lambda: socket.create_connection(("127.0.0.1", port)))
        took = time.monotonic() - t0
        assert code == 200 and b"oomkiller_resident_bytes" in body and b"oomkiller_up" not in body
        assert took < 3 * 1.0 + 1.0, took        # each silent one gets 1 s, then the scrape is served
        assert srv.stats()["timed_out"] == 3
        for s in silent:
            s.close()
    finally:
        srv.close()


def test_without_prometheus_client_one_warning_and_the_daemon_runs_on(monkeypatch, caplog):
    from oomkiller import cli
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    caplog.set_level(logging.WARNING, logger="oomkiller")
    server, why = cli._metrics_server(cfg.load(cli={"metrics": "127.0.0.1:9127"}), lambda: None)
    assert server is None and "prometheus_client is not installed" in why
    assert [r.getMessage() for r in caplog.records] == [f"OOM: metrics = 127.0.0.1:9127: no endpoint: {why}"]


def test_a_socket_path_that_is_not_safe_is_a_config_error(tmp_path):
    from oomkiller import cli
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(cfg.ConfigError, match="bad value for 'metrics': .*may be written by other users"):
        cli._metrics_server(cfg.load(cli={"metrics": str(tmp_path / "open" / "m.sock")}), lambda: None)


def test_every_kind_of_kill_is_exported_at_zero_before_the_first(proc_tree, v2_tree):
    """A counter series that first appears at 1 shows no increase(): the
    first kill of a host would pass unseen by an alert on it."""
    from prometheus_client.core import CounterMetricFamily
    from oomkiller.daemon import Daemon
    from oomkiller.metrics import KILL_KINDS, families
    short_arena(proc_tree, v2_tree, (("hog", "hog", 4101, 150),))
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=lambda: 5_000_000_000)
    d.publish()
    (kills,) = [f for f in families(d.published, {}) if f.name == "oomkiller_kills"]
    assert isinstance(kills, CounterMetricFamily)
    rows = {(s.labels["method"], s.labels["result"]): s.value for s in kills.samples}
    assert rows == dict.fromkeys(KILL_KINDS, 0) and ("cgroup.kill", "emptied") in rows
    d.published["kills"] = {("signal", "emptied"): 2}
    (kills,) = [f for f in families(d.published, {}) if f.name == "oomkiller_kills"]
    rows = {(s.labels["method"], s.labels["result"]): s.value for s in kills.samples}
    assert rows[("signal", "emptied")] == 2 and rows[("cgroup.kill", "emptied")] == 0 and len(rows) == len(KILL_KINDS)
