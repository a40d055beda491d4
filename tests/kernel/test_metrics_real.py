"""The metrics endpoint scraped after a real kill in an arena, its figures
checked against the decision record."""
from __future__ import annotations

import os
import signal
import socket

import pytest
from kproc import wait_for

pytest.importorskip("prometheus_client", reason="the optional metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _scrape(path: str) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", head
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(body.decode()) for smp in fam.samples}


def test_a_scrape_after_a_real_kill_matches_the_decision_record(arena, daemon, tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.sock")
    monkeypatch.setenv("OOMKILLER_METRICS", path)
    job = arena.job("hog")
    hog = arena.spawn_idle(job, 24 << 20)
    d = daemon("--domain", arena.path, "--redline", "1M")
    wait_for(lambda: os.path.exists(path), 20, "the metrics socket")
    assert ("oomkiller_freed_bytes_total", ()) in _scrape(path)     # served before any kill
    assert d.ctl("lowmem").returncode == 0
    assert hog.wait(timeout=20) == -signal.SIGKILL
    (rec,) = wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"], 5, "the kill record")
    (attempt,) = rec.attempts
    v = wait_for(lambda: (lambda m: m if m.get(("oomkiller_freed_bytes_total", ())) else None)(_scrape(path)),
                 5, "the kill in the metrics")
    assert v[("oomkiller_freed_bytes_total", ())] == rec.freed_bytes > 16 << 20
    assert v[("oomkiller_kills_total", (("method", attempt["method"]), ("result", "emptied")))] == 1
    assert v[("oomkiller_signal_to_empty_seconds_count", ())] == 1
    assert v[("oomkiller_signal_to_empty_seconds_sum", ())] == attempt["signal_to_empty_usec"] / 1e6
    assert v[("oomkiller_event_to_decision_seconds_sum", ())] == rec.timings_usec["event_to_decision"] / 1e6
    assert v[("oomkiller_domain_total_bytes", ())] == rec.snapshot["total_bytes"] == 256 << 20
    assert v[("oomkiller_redline_bytes", ())] == rec.redline_bytes == 1 << 20
    assert v[("oomkiller_wakes_total", (("source", "control"),))] >= 1
    assert v[("oomkiller_locked_bytes", ())] > 0 and v[("oomkiller_resident_bytes", ())] > 0
    if ("oomkiller_ebpf_events_lost_total", ()) in v:
        assert v[("oomkiller_ebpf_events_lost_total", ())] >= 0
    assert "metrics: listen=" in d.ctl("info").stdout
