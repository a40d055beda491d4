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
