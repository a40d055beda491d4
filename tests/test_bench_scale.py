"""The benchmark's scale plot (cost against the number of jobs) on
synthetic records: what it draws from, that it writes a PNG, and what it
refuses."""
from __future__ import annotations

import struct

import pytest

from oomkiller_bench import report, scenarios

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cell(n):
    return {"key": f"many-jobs-{n}", "scenario": "many-jobs", "title": f"many jobs ({n})", "params": {"jobs": n},
            "limit_bytes": 1 << 30, "redline_bytes": 1 << 26, "window_s": 3.0, "victim_job": "hog",
            "description": "", "victim_alloc_mb_s": None}


def run(n, contender, i, ms, by=None, cpu=30.0, error=None):
    return {"cell": f"many-jobs-{n}", "scenario": "many-jobs", "contender": contender, "run": i, "error": error,
            "window_s": 3.0, "t_start_usec": 1_000_000, "t_end_usec": 4_000_000, "onset_to_decision_ms": ms,
            "killed_by": by or ("daemon" if contender.startswith("oomk-") else contender),
            "killer": {"cpu_ms": cpu}, "psi_ms": {"some": 1.0, "full": 0.0},
            "service": {"ratio": 1.0, "series": [[0.0, 0], [1.0, 100]], "alive": True}}


def records():
    out = []
    for n, ms in ((10, 2.5), (100, 3.0), (1000, 7.0), (10000, 1350.0)):
        for i in range(3):
            out.append(run(n, "oomk-prearm", i, ms * (1 + i / 10), cpu=50.0 * n ** 0.5))
            out.append(run(n, "earlyoom", i, 40.0 + i, cpu=30.0))
    # a run decided before the onset, one the kernel won, one that failed
    out[0]["onset_to_decision_ms"] = -1.5
    out[3]["killed_by"] = "kernel"
    out.append(run(100, "nohang", 0, None, error="RuntimeError: boom"))
    return out


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_scale_plot_writes_a_png(tmp_path):
    cells = [cell(n) for n in (10, 100, 1000, 10000)]
    path = report.scale_plot(str(tmp_path), records(), cells, ["oomk-prearm", "earlyoom"])
    assert path == str(tmp_path / "scale.png")
    width, height = png_size(path)
    assert width >= 1000 and height >= 400


def test_scale_plot_needs_two_many_jobs_cells(tmp_path):
    rs = [r for r in records() if r["cell"] == "many-jobs-1000"]
    with pytest.raises(ValueError, match="two many-jobs cells"):
        report.scale_plot(str(tmp_path), rs, [cell(n) for n in (10, 100, 1000, 10000)], ["oomk-prearm"])
    # a cell whose runs all failed does not count
    rs.append(run(10, "oomk-prearm", 0, None, error="RuntimeError: boom"))
    with pytest.raises(ValueError):
        report.scale_plot(str(tmp_path), rs, [cell(n) for n in (10, 1000)], ["oomk-prearm"])
    assert not (tmp_path / "scale.png").exists()


def test_scale_points_and_cpu_per_second():
    cells = [cell(10), cell(100), {"key": "slow-leak", "scenario": "slow-leak", "params": {}}]
    assert report.scale_points(records(), cells) == {10: "many-jobs-10", 100: "many-jobs-100"}
    # 90 ms of CPU over a 3 s window
    assert report.cpu_ms_per_s(run(10, "earlyoom", 0, 1.0, cpu=90.0)) == pytest.approx(30.0)
    assert report.cpu_ms_per_s(run(10, "kernel", 0, 1.0, cpu=None)) is None
    assert report.own_kill("oomk-prearm", "daemon") and report.own_kill("earlyoom", "earlyoom")
    assert not report.own_kill("oomk-prearm", "kernel") and not report.own_kill("nohang", "daemon")


def test_plots_add_the_scale_plot_only_with_two_many_jobs_cells(tmp_path):
    cells = [cell(n) for n in (10, 100, 1000, 10000)]
    rs = records()
    summary = report.summarize(rs)
    names = [p.rsplit("/", 1)[1] for p in report.plots(str(tmp_path), rs, summary, cells, ["oomk-prearm"])]
    assert "scale.png" in names
    one = tmp_path / "one"
    one.mkdir()
    rs = [r for r in rs if r["cell"] == "many-jobs-100"]
    names = [p.rsplit("/", 1)[1] for p in report.plots(str(one), rs, report.summarize(rs), cells, ["oomk-prearm"])]
    assert "scale.png" not in names and "latency.png" in names


def test_the_10000_job_cell_is_in_full_and_only_named_in_short():
    full = {c.key: c for c in scenarios.cells("full")}
    assert [k for k in full if k.startswith("many-jobs-")] == [f"many-jobs-{n}" for n in (10, 100, 1000, 10000)]
    big = full["many-jobs-10000"]
    assert not big.only_named and big.limit_bytes <= 1 << 30 and big.contenders is None
    short = {c.key: c for c in scenarios.cells("short")}
    assert short["many-jobs-10000"].only_named and not short["many-jobs-1000"].only_named
    assert "many-jobs-10000" not in {c.key for c in scenarios.cells("ci")}
    # the fleet is not a job of the arena: it lives beside it
    assert "fleet" not in scenarios.job_names(big) and len(scenarios.job_names(big)) == 10002


def test_a_runs_daemon_records_are_kept_in_short():
    from oomkiller.model import parse_record
    from oomkiller_bench import daemon

    walk = {"event": "oom_decision", "domain": "/a", "decision": "free below redline", "redline_bytes": 1,
            "shortfall_bytes": 2, "simulated": False, "dry_run": False, "snapshot": {}, "result": "recovered",
            "woken_by": [{"source": "memcg", "timestamp_usec": 100}], "ts_usec": 2_100,
            "timings_usec": {"rank": 1_900, "listing_age": 16}}
    armed = {"event": "armed", "domain": "/a", "job": "hog", "cgroup_id": 5, "free_bytes": 1, "arm_line_bytes": 2,
             "ts_usec": 50}
    recs = [parse_record(walk), parse_record(armed)] * 10
    out = daemon.decisions(recs)
    assert len(out) == daemon.KEPT_RECORDS
    assert out[0] == {"event": "oom_decision", "ts_usec": 2_100, "result": "recovered",
                      "decision": "free below redline", "job": None, "woken_by": "memcg", "wake_usec": 100,
                      "timings_usec": {"rank": 1_900, "listing_age": 16}}
    assert out[1]["job"] == "hog" and out[1]["woken_by"] is None


def test_a_kill_is_timed_at_its_signal_not_when_its_record_was_written():
    """The record is written after the kill step and after its own making
    (every process's line: some 10 ms at ten thousand jobs)."""
    from oomkiller_bench import daemon as bench_daemon
    rec = {"ts_usec": 10_000, "timings_usec": {"kill": 300, "record": 1_200, "total": 2_000}}
    assert bench_daemon.decision_usec(rec) == 8_500
    assert bench_daemon.decision_usec({"ts_usec": 10_000, "timings_usec": {"kill": 300}}) == 9_700
