"""The JSON records: one type each, one serialiser, read back through the type."""
import json
import re
from pathlib import Path

import pytest

from oomkiller import report
from oomkiller.model import (ALL_RECORD_FIELDS, ArmedRecord, DecisionRecord, KernelKillRecord, Result,
                             parse_record)

DECISION = DecisionRecord(domain="/arena", decision="free below redline", redline_bytes=13421772,
                          shortfall_bytes=4096, simulated=False, dry_run=False, snapshot={"free_bytes": 1},
                          result=Result.KILLED, woken_by=({"source": "timer", "kind": "tick"},), events=1,
                          ranking=({"job": "hog"},), attempts=({"ok": True, "pids": [7]},), victim={"job": "hog"},
                          freed_bytes=1 << 20, timings_usec={"kill": 5000}, ts_usec=123)


@pytest.mark.parametrize("rec", [DECISION, ArmedRecord("/arena", "hog", 99, 1 << 20, 1 << 24, ts_usec=5),
                                 KernelKillRecord("/arena", 4101, 99, "comm=hog", ts_usec=6)])
def test_every_record_goes_through_json_and_back_as_itself(rec):
    line = report.json_line(rec.to_dict())
    back = parse_record(json.loads(line))
    assert back == rec and type(back) is type(rec)


def test_a_line_with_a_field_the_type_does_not_know_is_refused():
    d = DECISION.to_dict()
    d["resutl"] = "killed"
    with pytest.raises(ValueError, match="unknown fields"):
        parse_record(d)
    with pytest.raises(ValueError, match="not an oomkiller record"):
        parse_record({"event": "something else"})
    with pytest.raises(ValueError, match="does not fit"):
        parse_record({"event": "armed", "job": "x"})


def test_readers_asking_for_a_field_no_record_has_fail_loudly():
    assert DECISION["result"] == "killed" and DECISION.get("victim", {})["job"] == "hog"
    with pytest.raises(KeyError, match="no field 'resutl'"):
        DECISION.get("resutl", "nothing")
    with pytest.raises(KeyError):
        DECISION["job"]                         # an armed record's field: not this one's
    armed = ArmedRecord("/arena", "hog", 99, 1, 2)
    assert armed.get("result") is None          # filtering mixed records by a decision's field is fine
    assert "victim" in DECISION and "free_at_recheck_bytes" not in DECISION


def test_every_field_the_readme_names_for_the_record_exists():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("Beside it, one JSON record per decision"):readme.index("## Control")]
    named = set(re.findall(r"`([a-z_]+)`", section)) - {"json_log", "info"}
    attempt_keys = {"method", "pids", "signal_to_exit_usec", "signal_to_empty_usec", "freed_bytes",
                    "emptied", "left_pids", "thawed", "evaded_pids", "still_populated"}
    timing_keys = {"event_to_wake", "snapshot", "rank", "recheck", "kill", "event_to_decision", "total", "record"}
    # an armed record's steps, and its event's name
    armed_keys = {"armed", "wake_to_armed", "listing", "arm"}
    assert named - ALL_RECORD_FIELDS - attempt_keys - timing_keys - armed_keys == set()
