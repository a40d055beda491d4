"""Without a usable bcc the daemon says so once and runs on PSI and the timer."""
from __future__ import annotations

import json
import signal

from kproc import DaemonProc


def test_no_bcc_falls_back_to_psi_and_the_timer(arena, tmp_path, monkeypatch):
    # A `bcc` that cannot be imported shadows Debian's for the daemon only.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bcc.py").write_text("raise ImportError('libbcc.so.0: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    job = arena.job("victim")
    victim = arena.spawn_idle(job, 20 << 20)
    d = DaemonProc(tmp_path / "d", "--domain", arena.path, "--redline", "1M")
    try:
        info = json.loads(d.ctl("info", "--json").stdout)
        src = info["sources"]
        assert src["ebpf"]["state"] == "unavailable"
        assert "python module bcc not importable" in src["ebpf"]["why"]
        assert "python3-bpfcc" in src["ebpf"]["why"]
        assert src["prearm"] == {"state": "unavailable", "why": "needs the ebpf source"}
        assert src["psi"]["state"] == "live" and src["timer"]["state"] == "live"
        assert src["memcg"]["state"] == "live"
        text = d.ctl("info").stdout
        assert "    ebpf: unavailable (why=python module bcc not importable" in text
        err = d.wait_log("source ebpf unavailable")
        assert err.count("source ebpf unavailable") == 1
        # and it still kills
        assert d.ctl("lowmem").returncode == 0
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        assert d.stop() == 0
