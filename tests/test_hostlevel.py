"""The host-level benchmark's pure parts: its reading of other tools'
output and of systemd's verdicts, and the scenarios' command lines."""
from __future__ import annotations

from oomkiller_bench import hostlevel as hl

OOMCTL_DUMP = """Dry Run: no
Swap Used Limit: 90.00%
Default Memory Pressure Limit: 60.00%
Default Memory Pressure Duration: 1s
System Context:
        Memory: Used: 401.2M Total: 594.3M
        Swap: Used: 0B Total: 0B
Swap Monitored CGroups:
Memory Pressure Monitored CGroups:
        Path: /system.slice
                Memory Pressure Limit: 10.00%
                Pressure: Avg10: 0.00 Avg60: 0.00 Avg300: 0.00 Total: 0
                Current Memory Usage: 120.5M
""".splitlines()


# what a run's results carry to the report's header
META = {"command": "x", "kernel": "Linux 6.1", "cpus": 2, "mem_total_mib": 594, "swap_total_mib": 0,
        "started": "now", "duration_s": 1, "onset_percent": 10}


def report(scenario: str, labels: dict[str, str], summary: dict) -> str:
    """The markdown report of one scenario for the contenders ``labels``."""
    return hl.markdown(META, [{"key": scenario, "title": scenario, "describe": "d"}],
                       [{"key": k, "label": v, "describe": ""} for k, v in labels.items()], summary)


def test_oomctl_dump_says_what_systemd_oomd_watches():
    assert hl.oomctl_watching(OOMCTL_DUMP) == \
        "memory pressure watched on /system.slice (limit 10.00%), default duration 1s"
    # as shipped on Debian: nothing has ManagedOOMMemoryPressure=kill
    shipped = [ln.replace("1s", "30s") for ln in OOMCTL_DUMP[:9]]
    assert hl.oomctl_watching(shipped) == "memory pressure watched on no cgroup, default duration 30s"


def test_who_killed():
    assert hl.who_killed("earlyoom", {"kernel_oom_kills": 1, "hog_result": "signal"}) == "kernel"
    assert hl.who_killed("earlyoom", {"hog_result": "signal", "hog_code": "2", "hog_status": "9"}) == "earlyoom"
    # SIGTERM is a clean exit to systemd: the contender's log line decides
    assert hl.who_killed("nohang", {"hog_result": "success", "kill_lines": ["Sending SIGTERM to 712"]}) == "nohang"
    assert hl.who_killed("nohang", {"hog_result": "success"}) == "unknown (success)"
    assert hl.who_killed(None, {"timed_out": True, "kernel_oom_kills": 3}) == "nobody (timeout)"


def test_scenario_command_lines():
    total = 600 * hl.MIB
    storm = hl.SCENARIOS["fork-storm"].hog_argv(total, 400 * hl.MIB)
    assert storm[:2] == ["storm", "--child-bytes"] and int(storm[2]) == 8 * hl.MIB
    assert int(storm[storm.index("--max-children") + 1]) == int(total * hl.HOG_CAP_SHARE) // (8 * hl.MIB)
    leak = hl.SCENARIOS["slow-leak"].hog_argv(total, 400 * hl.MIB)
    # filled at once to 32 MiB above the onset (10% of MemTotal), then 16 MB/s
    assert int(leak[leak.index("--prefill") + 1]) == 400 * hl.MIB - total // 10 - 32 * hl.MIB
    assert leak[leak.index("--rate") + 1] == "16"


# -- the freeze -------------------------------------------------------------------------

def test_the_freeze_hog_leaves_its_share_available():
    total, avail = 594 * hl.MIB, 420 * hl.MIB
    argv = hl.SCENARIOS["freeze"].hog_argv(total, avail)
    cap = int(argv[argv.index("--cap") + 1])
    # all at once (prefill = cap), leaving 13% of MemTotal: above the 10% lines
    assert int(argv[argv.index("--prefill") + 1]) == cap
    assert cap == avail - total * 13 // 100
    assert hl.SCENARIOS["freeze"].leave_percent > hl.ONSET_PERCENT
    # nothing when the machine has no more than the share left, never past the cap
    assert hl.freeze_hog_bytes(total, total // 10, 13) == 0
    assert hl.freeze_hog_bytes(total, 10 * total, 13) == int(total * hl.HOG_CAP_SHARE)
    # the other scenarios are not freezes
    assert [k for k, s in hl.SCENARIOS.items() if s.freeze] == ["freeze", "freeze-slow-disk"]
    assert [k for k, s in hl.SCENARIOS.items() if s.read_mib_s] == ["freeze-slow-disk"]


def _series(rates, step=0.1, start=-2.0):
    """A service's reports every ``step`` s from ``start``: ``rates`` is
    ``[(until_s, ops/s)]``, each rate holding until its time."""
    out, t, n = [], start, 0.0
    for until, r in rates:
        while t < until - 1e-9:
            out.append((round(t, 3), int(n)))
            t += step
            n += r * step
    out.append((round(t, 3), int(n)))
    return out


def test_freeze_figures_of_a_freeze_ended_by_a_kill():
    # 1000 ops/s, collapse to 10 at 1 s, the hog killed at 5 s, back at 6 s
    s = _series([(1.0, 1000), (6.0, 10), (20.0, 1000)])
    f = hl.freeze_figures(s, 1000.0, 0.8, 5.0, 20.0)
    assert 1.0 <= f["collapse_s"] <= 1.6
    assert 6.0 <= f["relief_s"] <= 6.7
    assert f["collapse_to_relief_s"] == round(f["relief_s"] - f["collapse_s"], 3)
    assert f["collapse_to_kill_s"] == round(5.0 - f["collapse_s"], 3)
    assert f["never"] is False
    assert 0.005 <= f["share_after_collapse"] <= 0.03      # 10 of 1000 ops/s until the kill


def test_freeze_figures_of_a_freeze_nobody_ends():
    s = _series([(0.5, 1000), (40.0, 8)])
    f = hl.freeze_figures(s, 1000.0, 0.6, None, 39.0)
    assert f["collapse_s"] is not None and f["relief_s"] is None
    assert f["never"] is True and f["collapse_to_relief_s"] is None and f["collapse_to_kill_s"] is None
    assert f["share_after_collapse"] < 0.02
    # no collapse at all: not "never", and no share after it
    calm = hl.freeze_figures(_series([(20.0, 1000)]), 1000.0, 0.6, 3.0, 19.0)
    assert (calm["collapse_s"], calm["never"], calm["share_after_collapse"]) == (None, False, None)
    # no baseline: nothing to judge
    assert hl.freeze_figures(s, None, 0.6, None, 39.0)["collapse_s"] is None


def test_a_service_silent_to_the_end_collapsed_unless_it_died():
    # the service reports 1000 ops/s, then nothing from 2 s after the hog
    # started: frozen in a fault if it still ran when the watch ended, dead
    # (nothing to judge after its last report) if it did not
    t0 = 100.0
    ops = [(int((t0 + t) * 1e6), n) for t, n in _series([(2.0, 1000)])]
    for watch_cls in (hl.FreezeWatch, hl.HealthyWatch):
        w = watch_cls(None, "/nonexistent", "/nonexistent", t0)
        w.t_held, w.t_end = t0 + 0.5, t0 + 30.0
        frozen = w.figures(ops, None, 1 << 30, svc_alive=True)
        dead = w.figures(ops, None, 1 << 30, svc_alive=False)
        if watch_cls is hl.FreezeWatch:
            assert 2.0 <= frozen["collapse_s"] <= 3.0 and frozen["never"] is True
            assert dead["collapse_s"] is None and dead["never"] is False
        else:
            assert frozen["service_share"] < 0.1 < 0.9 < dead["service_share"]


def test_verdict_wants_the_hog_dead_and_the_service_alive():
    ok = dict(timed_out=False, service_lived=True, killer_lived=True, system_changed=[], contender="earlyoom")
    assert hl.verdict(**ok) == {"collateral": [], "right": True}
    # the window closed with the hog holding: the freeze went on, nobody ended it
    assert hl.verdict(**dict(ok, timed_out=True))["right"] is False
    # the hog died but so did the service (a killer that took the sufferer too)
    v = hl.verdict(**dict(ok, service_lived=False))
    assert v == {"collateral": ["protected service"], "right": False}
    v = hl.verdict(**dict(ok, killer_lived=False, system_changed=["dbus.service"]))
    assert v == {"collateral": ["dbus.service", "earlyoom itself"], "right": False}


def test_psi_avg10():
    text = ("some avg10=12.50 avg60=3.00 avg300=0.61 total=123\n"
            "full avg10=7.25 avg60=1.00 avg300=0.20 total=99\n")
    assert hl.psi_avg10(text) == {"some": 12.5, "full": 7.25}
    assert hl.psi_avg10("garbage\nsome avg10=x\n") == {}


def test_the_freeze_table():
    run = {"scenario": "freeze", "contender": "oomkiller", "run": 0, "killed_by": "oomkiller", "right": True,
           "collateral": [], "kill_lines": ["killed oomkb-hog-01.service (thrashing: ...)"],
           "freeze": {"collapse_s": 1.2, "kill_s": 2.5, "relief_s": 3.1, "collapse_to_relief_s": 1.9,
                      "collapse_to_kill_s": 1.3, "never": False, "share_after_collapse": 0.012, "held_s": 1.0,
                      "held_available_pct": {"min": 12.4, "median": 13.0}, "psi_avg10_max": {}}}
    kern = {"scenario": "freeze", "contender": "kernel", "run": 0, "killed_by": "nobody (timeout)", "right": False,
            "collateral": [], "freeze": {"collapse_s": 0.9, "kill_s": None, "relief_s": None, "never": True,
                                         "collapse_to_relief_s": None, "share_after_collapse": 0.008,
                                         "held_available_pct": None}}
    summary = hl.summarize([run, kern], ["freeze"], ["kernel", "oomkiller"])
    assert [r["never"] for r in summary["freeze"]["kernel"]["freeze"]] == [True]
    text = report("freeze", {"kernel": "kernel alone", "oomkiller": "oomkiller"}, summary)
    assert "| kernel alone | nobody (timeout) | 0/1 | 0.90 | — | — | never | 1% | — |" in text
    assert "| oomkiller | oomkiller | 1/1 | 1.20 | 2.50 | 3.10 | 1.90 | 1% | 12 |" in text
    assert "killed by oomkiller" in hl.line(dict(run, wall_s=3.0))
    # the signals' table: PSI maxima and the detector, per run
    run["freeze"].update(psi_avg10_max={"memory some": 14.8, "io some": 12.5, "system.slice memory full": 0.3},
                         detector={"first_episode_s": 3.38, "fired_s": 6.23, "median_refault_pm_s": 4854,
                                   "median_stall_pm": 1130.5, "median_io_stall_pm": 1304, "trace": [[0]]})
    summary = hl.summarize([run], ["freeze"], ["oomkiller"])
    assert "trace" not in summary["freeze"]["oomkiller"]["freeze"][0]["detector"]
    rows = hl.freeze_signal_rows(summary["freeze"], ["oomkiller"], {})
    assert rows == [["oomkiller", "1.00", "14.8", "12.5", "0.3", "3.38", "6.23", "49", "11.3", "13.0"]]


def test_detector_summary_says_when_it_fired_and_what_held_it():
    # [t_s, state, refault permyriad/s, stall permyriad, cache pm, free pm, episode ms, io stall pm]
    trace = [[-0.5, "calm", 0, None, 4200, 7000, 0, None],
             [0.5, "calm", 500, None, 3000, 3000, 0, 100],
             [1.0, "episode", 2500, 2000, 1900, 1400, 0, 700],
             [2.0, "episode", 5000, 800, 1900, 1400, 1000, 1200],     # sustained, stall under 10%
             [2.5, "episode", 5200, 900, 1900, 1400, 1500, 1300],
             [3.0, "thrashing", 6000, 1200, 1900, 1400, 2000, 1100],
             [4.0, "calm", 0, None, 3500, 6600, 0, 200]]
    s = hl.detector_summary(trace, None)
    assert (s["fired_s"], s["first_episode_s"], s["samples"], s["sustained_samples"]) == (3.0, 1.0, 6, 3)
    assert s["stall_under_limit"] == round(2 / 3, 3)
    assert (s["cache_over_half"], s["free_over_half"]) == (0.0, 0.0)
    assert s["median_stall_pm"] == 900 and s["median_io_stall_pm"] == 1200
    # up to the hog's death only: the kill at 2.6 s came before the trace fired
    assert hl.detector_summary(trace, 2.6)["fired_s"] is None
    assert hl.detector_summary([], None)["stall_under_limit"] is None


def test_a_dip_while_the_hog_fills_is_not_the_freeze():
    # halved by the hog's fill from 0.5 s to 2 s, back until 4 s, then frozen;
    # the hog holds from 3 s, is killed at 10 s, the service back at 11 s
    s = _series([(0.5, 1000), (2.0, 100), (4.0, 1000), (11.0, 10), (20.0, 1000)])
    c, r, dips = hl.freeze_collapse(s, 1000.0, 3.0, 10.0, 20.0)
    assert dips == 1 and 4.0 <= c <= 4.6 and 11.0 <= r <= 11.7
    f = hl.freeze_figures(s, 1000.0, 3.0, 10.0, 20.0)
    assert (f["collapse_s"], f["relief_s"], f["dips"]) == (c, r, 1)
    # a relief after the hog holds, with the hog alive, is a relief: the freeze ended by itself
    c2, r2, dips2 = hl.freeze_collapse(s, 1000.0, 1.0, None, 20.0)
    assert dips2 == 0 and c2 < 2.0 and 2.0 <= r2 <= 2.7
    # a hog killed while it filled: the relief after the kill counts
    assert hl.freeze_collapse(s, 1000.0, None, 1.5, 20.0)[2] == 0


# -- the false-positive suite at host level ------------------------------------------

def test_the_healthy_loads_command_lines():
    total, avail = 594 * hl.MIB, 420 * hl.MIB
    held = hl.SCENARIOS["healthy-stream-held"]
    argv = held.hog_argv(total, avail, "/s.dat")
    # it holds until 40% of MemTotal is left, then streams the file
    assert argv[:3] == ["stream", "--file", "/s.dat"]
    assert int(argv[argv.index("--hold") + 1]) == avail - total * 40 // 100
    assert hl.SCENARIOS["healthy-stream"].hog_argv(total, avail, "/s.dat")[3:5] == ["--hold", "0"]
    burst = hl.SCENARIOS["healthy-burst"].hog_argv(total, avail)
    # each burst is the freeze's fill (13% of MemTotal left) for 500 ms
    assert int(burst[burst.index("--bytes") + 1]) == avail - total * 13 // 100
    assert burst[burst.index("--hold-ms") + 1] == "500"
    for s in ("healthy-stream", "healthy-stream-held", "healthy-burst"):
        sc = hl.SCENARIOS[s]
        assert sc.mapped and not sc.freeze and "nobody should kill" in sc.describe()


def test_the_healthy_table():
    def rec(contender, killed_by, right, kill_s=None):
        return {"scenario": "healthy-burst", "contender": contender, "run": 0, "killed_by": killed_by,
                "right": right, "collateral": [], "kill_lines": [],
                "healthy": {"kill_s": kill_s, "service_share": 0.97, "min_available_pct": 12.6,
                            "psi_avg10_max": {"memory some": 3.1, "io some": 8.0}, "max_refault_pm_s": 250000,
                            "max_stall_pm": 2100, "detector": {"fired_s": None, "trace": [[0]]}}}
    summary = hl.summarize([rec("oomkiller", "nobody", True),
                            rec("earlyoom", "earlyoom", False, kill_s=0.4)],
                           ["healthy-burst"], ["oomkiller", "earlyoom"])
    assert "trace" not in summary["healthy-burst"]["oomkiller"]["healthy"][0]["detector"]
    text = report("healthy-burst", {"oomkiller": "oomkiller", "earlyoom": "earlyoom"}, summary)
    assert "| oomkiller | nobody | 1/1 | 13 | 3.1 | 8.0 | 2500 | 21.0 | — | 97% |" in text
    assert "| earlyoom | earlyoom | 0/1 |" in text
    assert "WRONG" in hl.line(dict(rec("earlyoom", "earlyoom", False, 0.4), wall_s=61.0))


def test_a_healthy_load_killed_at_the_windows_end_is_a_kill():
    # the window closed with the load alive, but oomkiller's kill record
    # came a moment later: a false kill all the same
    rec = {"killed_by": "nobody (timeout)", "collateral": []}
    assert hl.healthy_verdict(rec, "oomkiller", True, True, 0) == {"killed_by": "oomkiller", "right": False}
    assert hl.healthy_verdict(rec, "oomkiller", True, False, 0) == {"killed_by": "nobody", "right": True}
    assert hl.healthy_verdict(rec, None, True, False, 1) == {"killed_by": "kernel", "right": False}
    died = {"killed_by": "unknown (failed)", "collateral": []}
    assert hl.healthy_verdict(died, "earlyoom", False, False, 0)["killed_by"] == "unknown (failed)"
    assert not hl.healthy_verdict({"collateral": ["protected service"]}, "x", True, False, 0)["right"]
