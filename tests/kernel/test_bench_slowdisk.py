"""The false-positive suite's slow disk for real: a run of the ``slow-write``
load (shortened) makes its loop device, throttles it, lets the writer fill
the arena with dirty pages, and leaves no loop device, mount or throttle
rule behind."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import threading

from oomkiller_bench import runner, scenarios
from oomkiller_bench.contenders import contenders
from oomkiller_bench.slowdisk import BLKIO_READ_RULES, BLKIO_ROOT, BLKIO_RULES

WINDOW_S = 6.0


def _loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=60).stdout


def _rules(*names: str) -> str:
    out = ""
    for name in names or (BLKIO_RULES, BLKIO_READ_RULES):
        with open(os.path.join(BLKIO_ROOT, name)) as f:
            out += f.read()
    return out


def test_a_slow_write_run_throttles_its_own_disk_and_leaves_nothing_behind(tmp_path):
    (cell,) = [c for c in scenarios.cells("short") if c.key == "healthy-slow-write"]
    cell = dataclasses.replace(cell, window_s=WINDOW_S)
    svc = str(tmp_path / "service.dat")
    runner.make_file(svc, scenarios.SERVICE_FILE_BYTES)
    tmpdir = tmp_path / "work"
    tmpdir.mkdir()
    loops_before, rules_before = _loops(), _rules()
    run = runner.Run(cell, contenders()["kernel"], 0, runner.Files(svc, {}), str(tmpdir), None, 1.0, False)
    seen_rules: list[str] = []
    stop = threading.Event()

    def watch() -> None:        # the rule on the loop device, while the run lasts
        while not stop.wait(0.2):
            seen_rules.extend(line.strip() for line in _rules(BLKIO_RULES).splitlines()
                              if line.strip() and line not in rules_before)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        rec = run.execute()
    finally:
        stop.set()
        t.join(5)
    assert rec["error"] is None, rec["error"]
    assert rec["slow_disk"] == f"root blkio: {rec['slow_disk'].split()[2]} writes {4 << 20} B/s", rec["slow_disk"]
    # the writer wrote (an op is a MiB), as slowly as the disk takes it once
    # the arena is full of dirty pages: unthrottled it wrote 320 MiB in 0.2 s
    # (to the window's end: then the throttle is lifted before the writer is killed)
    ops = [int(w[1]) for w in (line.split() for _, line in run.readers["load"].lines)
           if w[0] == "ops" and int(w[2]) <= rec["t_end_usec"]]
    most = (cell.limit_bytes >> 20) + (4 * (WINDOW_S + 8))
    assert ops and 16 <= ops[-1] <= most, (ops[-5:], most)
    assert seen_rules and all(r.endswith(f" {4 << 20}") for r in seen_rules), seen_rules
    assert rec["killed_by"] == "nobody" and rec["kernel_oom_kills"] == 0, (rec["killed_by"], rec["kills"])
    # everything is gone: the loop device, its mount and its throttle rule
    assert "oomk-slowdisk-" not in _loops() and _loops() == loops_before
    assert _rules() == rules_before
    with open("/proc/self/mountinfo") as f:
        assert "oomk-slowdisk-" not in f.read()
    assert os.listdir(tmpdir) == [] or all(not n.startswith("oomk-slowdisk-") for n in os.listdir(tmpdir))
