"""The guest tier: tests that run inside the VM (deploy/vm/, tests/vm/).

They need a whole machine of their own, with systemd on pure cgroup v2, and
they pressure it as a whole: they are collected only where the VM's runner
says so (``OOMK_VM_GUEST=1``, set by deploy/vm/guest-run.sh). Anywhere else
this folder collects nothing; tests/vm/ boots the VM and reports these
tests' results on the host.

Each outcome is also written to ``$OOMK_VM_RESULTS/guest-tests.json``
for the host: one entry per test with its phase reports, so a failure in
setup or teardown counts as well.
"""
from __future__ import annotations

import json
import os

import pytest

IN_GUEST = os.environ.get("OOMK_VM_GUEST") == "1"

if not IN_GUEST:
    collect_ignore_glob = ["test_*.py"]

_outcomes: dict[str, dict] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not IN_GUEST:
        return
    entry = _outcomes.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                                 "duration_s": 0.0, "message": "", "longrepr": ""})
    entry["duration_s"] = round(entry["duration_s"] + report.duration, 2)
    if hasattr(report, "wasxfail"):
        entry["outcome"] = "xfailed" if report.skipped else "xpassed"
        entry["message"] = report.wasxfail
        return
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["longrepr"] += f"[{report.when}] {report.longreprtext}\n"
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["message"] = entry["message"] or (crash.message if crash else report.longreprtext[-500:])
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["message"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("OOMK_VM_RESULTS")
    if not IN_GUEST or not out:
        return
    with open(os.path.join(out, "guest-tests.json"), "w") as f:
        json.dump({"exitstatus": int(exitstatus), "tests": list(_outcomes.values())}, f, indent=2)
