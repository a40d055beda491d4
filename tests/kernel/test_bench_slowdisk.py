"""The false-positive suite's slow disk for real: a run of the ``slow-write``
load (shortened) makes its loop device, throttles it, lets the writer fill
the arena with dirty pages, and leaves no loop device, mount or throttle
rule behind."""
from __future__ import annotations

import dataclasses
import os
import subprocess

from oomkiller_bench import runner, scenarios
from oomkiller_bench.contenders import contenders
from oomkiller_bench.slowdisk import BLKIO_ROOT, BLKIO_RULES

WINDOW_S = 6.0


def _loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=60).stdout


def _rules() -> str:
    with open(os.path.join(BLKIO_ROOT, BLKIO_RULES)) as f:
        return f.read()


def test_a_slow_write_run_throttles_its_own_disk_and_leaves_nothing_behind(tmp_path):
    (cell,) = [c for c in scenarios.cells("short") if c.key == "healthy-slow-write"]
    cell = dataclasses.replace(cell, window_s=WINDOW_S)
    svc = str(tmp_path / "service.dat")
    runner.make_file(svc, scenarios.SERVICE_FILE_BYTES)
    tmpdir = tmp_path / "work"
    tmpdir.mkdir()
    loops_before, rules_before = _loops(), _rules()
    run = runner.Run(cell, contenders()["kernel"], 0, runner.Files(svc, {}), str(tmpdir), None, 1.0, False)
    rec = run.execute()
    assert rec["error"] is None, rec["error"]
    assert rec["slow_disk"] == f"root blkio: {rec['slow_disk'].split()[2]} {4 << 20} B/s", rec["slow_disk"]
    # the writer wrote (an op is a MiB), and nobody killed it
    ops = [int(line.split()[1]) for _, line in run.readers["load"].lines if line.startswith("ops ")]
    assert ops and ops[-1] >= 16, ops[-5:]
    assert rec["killed_by"] == "nobody" and rec["kernel_oom_kills"] == 0, (rec["killed_by"], rec["kills"])
    # everything is gone: the loop device, its mount and its throttle rule
    assert "oomk-slowdisk-" not in _loops() and _loops() == loops_before
    assert _rules() == rules_before
    with open("/proc/self/mountinfo") as f:
        assert "oomk-slowdisk-" not in f.read()
    assert os.listdir(tmpdir) == [] or all(not n.startswith("oomk-slowdisk-") for n in os.listdir(tmpdir))
