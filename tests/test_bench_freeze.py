"""The benchmark's freeze and false-positive suite on plain values: the
collapse and relief from a throughput series, a run's figures, the tables."""
from __future__ import annotations

import pytest

from oomkiller_bench import report, scenarios, throughput
from oomkiller_bench.contenders import Kill
from oomkiller_bench.runner import freeze_figures
from oomkiller_bench.scenarios import Cell, Launch


def series(*segments, t0=-2.0, step=0.1):
    """``ops N T`` reports every ``step`` s from ``t0``: each segment is
    (seconds, ops per second)."""
    out, t, n = [(t0, 0)], t0, 0.0
    for seconds, per_s in segments:
        for _ in range(round(seconds / step)):
            t = round(t + step, 6)
            n += per_s * step
            out.append((t, int(n)))
    return out


def test_rate_over_a_window():
    s = series((4, 1000))
    assert throughput.rate(s, 0.0, 1.0) == pytest.approx(1000, rel=0.01)
    assert throughput.rate(s, 0.01, 0.05) is None


def test_collapse_then_relief():
    # 2 s of baseline, 1 s more at the baseline after the hog starts, 3 s
    # frozen at 1%, then back at 90%
    s = series((3, 1000), (3, 10), (4, 900))
    collapse, relief = throughput.collapse_and_relief(s, 1000, 0.0, 8.0)
    # the first 0.5 s window under half: it ends a little after the freeze began at 1 s
    assert 1.0 < collapse <= 1.5
    # the first window wholly after the collapse at half or more: the rate
    # climbs past 500/s a quarter of a window after the freeze ended at 4 s
    assert 4.0 < relief <= 4.5
    assert relief - 0.5 >= collapse


def test_a_dip_shorter_than_the_hold_is_neither_collapse_nor_relief():
    # measured in a run: the service dipped to 39% while the hog filled, ran
    # at 50-56% for 0.8 s, then collapsed; after the kill it read its file
    # back and dipped to 46% for 0.3 s
    s = series((2.5, 1000), (0.3, 390), (0.8, 550), (1.5, 0), (1.0, 800), (0.3, 460), (3.0, 850))
    collapse, relief = throughput.collapse_and_relief(s, 1000, 0.0, 9.0)
    assert 1.6 < collapse <= 2.2
    assert 3.1 < relief <= 3.7


def test_no_relief_in_the_window_is_none():
    s = series((3, 1000), (20, 5))
    collapse, relief = throughput.collapse_and_relief(s, 1000, 0.0, 20.0)
    assert collapse is not None and relief is None


def test_no_collapse():
    s = series((10, 700))
    assert throughput.collapse_and_relief(s, 1000, 0.0, 8.0) == (None, None)
    assert throughput.collapse_and_relief(s, 0, 0.0, 8.0) == (None, None)


def test_a_window_without_reports_takes_the_span_around_it():
    # a service stalled so hard that its reporter skipped: reports at 1.0
    # and 3.0 only, 10 ops between
    s = [(0.0, 0), (0.5, 500), (1.0, 1000), (3.0, 1010), (3.5, 1510)]
    r = dict(throughput.rates(s, 0.5, 0.5, 0.0, 3.5))
    assert r[2.0] == pytest.approx(5.0)
    # the window ending at 1.1 holds one report: 0.5 to 3.0 it is, 204/s
    assert throughput.collapse_and_relief(s, 1000, 0.0, 3.5) == (1.1, 3.5)


def test_a_service_that_stops_reporting_for_good_collapsed():
    """A frozen service whose reporter never ran again before the run's
    window ended (nohang's second slow-disk run): 0 after its last report,
    not no rate, so the collapse is seen; the tail of a run that reported
    to its end is not made 0."""
    s = series((5, 1000))             # reports up to 3.0 s, then none
    collapse, relief = throughput.collapse_and_relief(s, 1000, 0.0, 8.0)
    assert 3.0 < collapse <= 3.6 and relief is None
    assert dict(throughput.rates(s, 0.5, 0.1, 0.0, 8.0))[8.0] == 0.0
    # without the run's end, nothing past the last report is made up
    assert max(t for t, _ in throughput.rates(s, 0.5, 0.1)) <= 3.0
    # a service killed at 3.0 s: its death is no collapse (a killer that
    # killed it would get a collapse after its own kill)
    assert throughput.headline(s, 1000, 8.0, 3.0, alive=False)["collapse_s"] is None
    assert throughput.headline(s, 1000, 8.0, 3.0, alive=True)["collapse_to_kill_s"] < 0
    # a run that reported to its end: its last windows are its own rate
    full = series((8, 1000))
    assert min(r for _, r in throughput.rates(full, 0.5, 0.1, 0.0, full[-1][0])) > 900


def test_normalised_is_percent_of_the_baseline():
    pts = throughput.normalised(series((4, 500)), 1000, t_from=0.0, t_until=2.0)
    assert pts and all(p[1] == pytest.approx(50, abs=1) for p in pts)


def test_freeze_figures_of_a_run_the_daemon_ended():
    t_start = 50_000_000
    s = series((3, 1000), (1, 10), (5, 800))
    k = Kill("daemon", "hog", t_start + 2_600_000, detail={"decision": "thrashing: refaults ...",
                                                           "thrash": {"state": "thrashing"}})
    f = freeze_figures(s, 1000.0, t_start, 10.0, [k], t_start + 2_650_000)
    assert f["acted"] == "daemon" and f["kill_job"] == "hog"
    assert f["kill_s"] == 2.6 and f["victim_emptied_s"] == 2.65
    assert f["decision"] == "thrashing: refaults ..." and f["thrash"] == {"state": "thrashing"}
    assert f["collapse_to_kill_s"] == pytest.approx(f["kill_s"] - f["collapse_s"], abs=1e-3)
    assert f["collapse_to_relief_s"] == pytest.approx(f["relief_s"] - f["collapse_s"], abs=1e-3)


def test_freeze_figures_when_nobody_acted():
    f = freeze_figures(series((3, 1000), (40, 8)), 1000.0, 0, 40.0, [], None)
    assert f["acted"] == "nobody" and f["kill_s"] is None and f["relief_s"] is None
    assert f["collapse_s"] is not None and f["collapse_to_relief_s"] is None


def run(cont, i, frozen_s, acted="daemon", decision=None, scenario="thrash", **extra):
    """A freeze run: 3 s at the baseline (1000/s), frozen at 0.5% for
    ``frozen_s`` (None: to the end of the 40 s window), then back at 90%."""
    segs = [(3, 1000), (frozen_s or 38, 5)] + ([(37 - frozen_s, 900)] if frozen_s else [])
    f = {"acted": acted, "kill_job": "hog" if acted != "nobody" else None,
         "kill_s": 1.5 if acted != "nobody" else None, "decision": decision}
    return dict({"scenario": scenario, "cell": "thrash", "contender": cont, "run": i, "window_s": 40.0,
                 "freeze": f, "service": {"baseline_ops_per_s": 1000.0, "alive": True, "series": series(*segs)}},
                **extra)


def test_freeze_summary_and_table_say_never():
    rs = [run("oomk-defaults", 0, 1.5, decision="thrashing: x"), run("oomk-defaults", 1, 2.0),
          run("kernel", 0, None, "nobody"), run("kernel", 1, None, "nobody"),
          dict(run("earlyoom", 0, None, "nobody"), error="boom")]
    rows = report.freeze_runs(rs)
    assert [r["contender"] for r in rows] == ["oomk-defaults", "oomk-defaults", "kernel", "kernel"]
    # frozen from 1 s after the hog started: the collapse is the first half
    # second window under half (ends at 1.3 s); relief a quarter window after
    # the end of the freeze (2.5 or 3 s)
    assert [r["collapse_s"] for r in rows] == [1.3] * 4
    assert [r["relief_s"] for r in rows[:2]] == [2.8, 3.3]
    summ = {s["contender"]: s for s in report.freeze_summary(rows)}
    assert summ["oomk-defaults"]["collapse_to_relief_s"] == {"median": 1.75, "worst": 2.0}
    assert summ["oomk-defaults"]["collapse_to_kill_s"] == {"median": 0.2, "worst": 0.2}
    assert summ["oomk-defaults"]["never"] == 0 and summ["oomk-defaults"]["acted"] == {"daemon": 2}
    assert summ["kernel"]["never"] == 2 and summ["kernel"]["collapse_to_relief_s"]["median"] is None
    text = "\n".join(report.freeze_markdown(rows, ["kernel", "oomk-defaults"]))
    assert "| kernel | 2 | 2/2 | nobody 2 | — | — | never | 0/2 |" in text
    assert "| oomk-defaults | 2 | 2/2 | daemon 2 | hog 2 | 0.20 / 0.20 | 1.75 / 2.00 | 2/2 |" in text
    assert "| kernel | 1 | 1.30 | nobody | — | — | never | never | — |" in text
    assert "`thrashing: x`" in text


def test_a_kill_before_the_collapse_is_no_collapse_not_never():
    # the service under half its rate for 0.3 s only: the kill came first
    rs = [run("oomk-quick", i, 0.3) for i in (0, 1)]
    for r in rs:
        r["service"]["series"] = series((3, 1000), (0.3, 5), (40, 900))
    rows = report.freeze_runs(rs)
    assert [r["collapse_s"] for r in rows] == [None, None]
    text = "\n".join(report.freeze_markdown(rows, ["oomk-quick"]))
    assert "| oomk-quick | 2 | 0/2 | daemon 2 | hog 2 | — | no collapse | — |" in text
    assert "| oomk-quick | 1 | — | daemon | hog | 1.50 | no collapse | — |" in text
    assert "never" not in text.split("Per run:")[1]


def test_each_freeze_cell_has_its_own_section():
    """The freeze and the freeze on a slow disk are never one table: a slow
    disk's runs would hide in the freeze's medians."""
    rs = [run("oomk-defaults", 0, 1.5), dict(run("oomk-defaults", 0, None, "nobody"), cell="thrash-slow-disk")]
    rows = report.freeze_runs(rs)
    assert [r["cell"] for r in rows] == ["thrash", "thrash-slow-disk"]
    text = "\n".join(report.freeze_markdown(rows, ["oomk-defaults"], {"thrash-slow-disk": "on a slow disk"}))
    assert text.count("## The freeze: collapse → relief") == 2
    assert "## The freeze: collapse → relief, on a slow disk" in text
    assert "| oomk-defaults | 1 | 1/1 | daemon | hog 1 | 0.20 / 0.20 | 1.50 / 1.50 | 1/1 |" in text
    assert "| oomk-defaults | 1 | 1/1 | nobody | — | — | never | 0/1 |" in text
    # one cell: as before
    assert "\n".join(report.freeze_markdown(rows[:1], ["oomk-defaults"])).count("## The freeze") == 1


def test_the_slow_disk_freeze_cell():
    (cell,) = [c for c in scenarios.cells("full") if c.key == "thrash-slow-disk"]
    assert cell.scenario == "thrash" and cell.params["read_bps"] == 8 << 20
    assert cell.params["on_slow_disk"] == ("freeze",) and cell.params["slow_disk_job"] == "svc"
    assert "on a disk that reads 8.4 MB/s" in cell.describe()
    (short,) = [c for c in scenarios.cells("short") if c.key == "thrash-slow-disk"]
    assert short.only_named and not cell.only_named


def test_healthy_kills_count_everyone_and_the_kernel_by_its_count():
    kills = [{"by": "daemon", "job": "load", "detail": {"decision": "free below redline"}},
             {"by": "kernel", "job": "svc", "detail": {"count": 2}}]
    rs = [{"scenario": "healthy", "cell": "healthy-build", "contender": "oomk-defaults", "run": 0,
           "window_s": 60.0, "kills": kills},
          {"scenario": "healthy", "cell": "healthy-stream", "contender": "oomk-defaults", "run": 0,
           "window_s": 60.0, "kills": []},
          {"scenario": "healthy", "cell": "healthy-cpu", "contender": "nohang", "run": 0, "window_s": 60.0,
           "error": "RuntimeError: x"},
          {"scenario": "thrash", "cell": "thrash", "contender": "kernel", "run": 0, "kills": kills}]
    k = report.healthy_kills(rs)
    assert set(k) == {("build", "oomk-defaults"), ("stream", "oomk-defaults"), ("cpu", "nohang")}
    assert k[("build", "oomk-defaults")]["kills"] == 3
    assert k[("build", "oomk-defaults")]["by_job"] == {"daemon: load": 1, "kernel: svc": 2}
    assert k[("stream", "oomk-defaults")]["kills"] == 0
    assert k[("cpu", "nohang")]["errors"] == 1
    cells = [{"key": f"healthy-{x}", "scenario": "healthy", "description": f"{x} load"}
             for x in ("stream", "build", "cpu")]
    text = "\n".join(report.healthy_markdown(k, ["oomk-defaults", "nohang"], cells))
    assert "| stream | 0 (1 × 60 s) |  |" in text
    assert "| build | 3 (1 × 60 s): daemon: load 1, kernel: svc 2 |  |" in text
    assert "`free below redline`" in text


def test_the_freeze_cell_and_the_healthy_cells():
    for mode, window in (("short", 10.0), ("full", 60.0)):
        cs = {c.key: c for c in scenarios.cells(mode)}
        fr = cs["thrash"]
        assert fr.contenders == scenarios.FREEZE_CONTENDERS and fr.service_role == "mapped"
        assert fr.files == {"freeze": 200 << 20} and fr.victim_job == "hog"
        healthy = [c for c in cs.values() if c.scenario == "healthy"]
        assert [c.key for c in healthy] == [f"healthy-{x}" for x in scenarios.HEALTHY]
        assert all(c.window_s == window and c.limit_bytes == 256 << 20 for c in healthy)
    assert scenarios.cells("full")[0].window_s  # the rest of the matrix stays
    assert not [c for c in scenarios.cells("ci") if c.scenario in ("thrash", "healthy")]


def launch(tmp_path):
    return Launch(spawn=None, usage_bytes=lambda: 0, service_file="/svc.dat", tmpdir=str(tmp_path),
                  files={"freeze": "/freeze.dat", "fits": "/fits.dat", "stream": "/stream.dat", "slow_disk": "/slow"})


def test_argv_of_the_freeze(tmp_path):
    cell = next(c for c in scenarios.cells("full") if c.key == "thrash")
    la = launch(tmp_path)
    assert scenarios.service_argv(cell, la) == ["mapped", "--file", "/freeze.dat", "--threads", "2",
                                                "--name", "oomk-svc"]
    assert scenarios.victim_argv(cell, la) == ["hog", "--cap", str(512 * (1 << 20) * 85 // 100), "--name",
                                               "oomk-hog"]


def test_argv_of_the_healthy_loads(tmp_path):
    cs = {c.key: c for c in scenarios.cells("short")}
    la = launch(tmp_path)
    assert scenarios.victim_argv(cs["healthy-stream"], la) == ["stream", "--file", "/stream.dat", "--name",
                                                               "oomk-load"]
    assert scenarios.victim_argv(cs["healthy-stream-held"], la) == [
        "stream", "--file", "/stream.dat", "--hold", str((256 << 20) * 60 // 100), "--name", "oomk-load"]
    build = scenarios.victim_argv(cs["healthy-build"], la)
    assert build[:2] == ["build", "--dir"] and build[3:7] == ["--total", str(512 << 20), "--piece", str(2 << 20)]
    slow = cs["healthy-stream-held-slow"]
    assert scenarios.victim_argv(slow, la) == [
        "stream", "--file", "/stream.dat", "--hold", str((256 << 20) * 70 // 100), "--name", "oomk-load"]
    assert (slow.params["read_bps"], slow.params["on_slow_disk"], slow.params["slow_disk_job"]) == (
        8 << 20, ("stream",), "load")
    assert "from a disk that reads 8.4 MB/s" in slow.describe()
    scan = cs["healthy-scan-held-slow"]
    assert scenarios.victim_argv(scan, la) == [
        "stream", "--file", "/stream.dat", "--hold", str((256 << 20) * 65 // 100), "--mmap", "--name", "oomk-load"]
    assert (scan.params["read_bps"], scan.params["on_slow_disk"]) == (8 << 20, ("stream",))
    assert "through mmap" in scan.describe()
    assert scenarios.victim_argv(cs["healthy-slow-write"], la) == ["write", "--dir", "/slow", "--total",
                                                                   str(320 << 20), "--name", "oomk-load"]
    assert cs["healthy-slow-write"].params["write_bps"] == 4 << 20
    assert "4.2 MB/s" in cs["healthy-slow-write"].describe()
    assert scenarios.victim_argv(cs["healthy-fits"], la)[:3] == ["hog", "--cap", str((256 << 20) * 60 // 100)]
    assert scenarios.service_argv(cs["healthy-fits"], la)[:3] == ["mapped", "--file", "/fits.dat"]
    assert scenarios.victim_argv(cs["healthy-cpu"], la)[:2] == ["spin", "--procs"]
    assert scenarios.victim_argv(cs["healthy-burst"], la)[:3] == ["burst", "--bytes", str((256 << 20) * 85 // 100)]
    assert scenarios.service_argv(cs["healthy-stream"], la)[0] == "service"
    assert scenarios.job_of_comm(cs["healthy-cpu"], "oomk-load") == "load"
    assert isinstance(cs["healthy-burst"], Cell) and "burst" in cs["healthy-burst"].describe()


def test_the_shipped_defaults_contender_runs_only_where_named():
    from oomkiller_bench import runs_in
    from oomkiller_bench.contenders import contenders
    known = contenders()
    d = known["oomk-defaults"]
    cs = {c.key: c for c in scenarios.cells("short")}
    assert runs_in(cs["thrash"], d) and runs_in(cs["healthy-cpu"], d)
    assert not runs_in(cs["fast-hog-max"], d) and runs_in(cs["fast-hog-max"], known["earlyoom"])
    assert not runs_in(cs["thrash"], known["oomk-prearm"])


def test_a_report_of_healthy_loads_alone_has_their_table_and_no_onset_overview():
    meta = {"mode": "full", "command": "oomkiller bench --full --scenarios healthy", "runs": 1, "duration_s": 60,
            "started": "then", "redline_percent": 10,
            "host": {"kernel": "Linux x", "cpus": 2, "mem_gib": 1.0, "cgroups": "v2"}}
    cells = [{"key": "healthy-cpu", "scenario": "healthy", "title": "healthy: cpu", "description": "cpu load",
              "limit_bytes": 256 << 20, "redline_bytes": 0, "window_s": 60.0, "victim_job": "load", "params": {}}]
    runs = [{"scenario": "healthy", "cell": "healthy-cpu", "contender": "kernel", "run": 0, "window_s": 60.0,
             "kills": [], "killed_by": "nobody"}]
    conts = [{"key": "kernel", "label": "kernel alone", "kind": "kernel", "describe": "no killer"}]
    text = report.markdown(meta, report.summarize(runs), cells, conts, [], [], runs)
    assert "## False positives: kills on healthy loads" in text and "| cpu | 0 (1 × 60 s) |" in text
    assert "## Overview" not in text and "(`healthy-cpu`)" not in text
