"""The guest tier's results as tests of this run: each guest test passes,
fails, skips or xfails here as it did in the guest, and a guest that did not
boot or did not finish fails with the tail of its console."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).resolve().parents[1] / "guest"


def guest_test_ids() -> list[str]:
    """The guest tests' node ids as pytest names them in the guest, read from
    the source, without parameters (a parametrized test's cases are found
    by its id; see ``test_guest``)."""
    ids = []
    for path in sorted(GUEST_DIR.glob("test_*.py")):
        rel = f"tests/guest/{path.name}"
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                ids.append(f"{rel}::{node.name}")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                ids += [f"{rel}::{node.name}::{f.name}" for f in node.body
                        if isinstance(f, ast.FunctionDef) and f.name.startswith("test")]
    return ids


GUEST_TESTS = guest_test_ids()


def test_the_guest_booted_and_ran_its_tier(guest_tier):
    run = guest_tier.run
    if not run.finished:
        pytest.fail(f"the guest did not finish its tier: {guest_tier.why_missing()}", pytrace=False)
    if guest_tier.exitstatus is None:
        pytest.fail(f"the guest tier left no report (exit status {run.rc}): {guest_tier.why_missing()}",
                    pytrace=False)
    assert guest_tier.exitstatus in (0, 1), f"pytest in the guest exited with {guest_tier.exitstatus}"
    assert run.status["cgroup2_controllers"] and "memory" in run.status["cgroup2_controllers"]


@pytest.mark.parametrize("nodeid", GUEST_TESTS, ids=[i.split("/")[-1] for i in GUEST_TESTS])
def test_guest(guest_tier, nodeid):
    t = guest_tier.tests.get(nodeid)
    cases = [c for k, c in sorted(guest_tier.tests.items()) if k.startswith(nodeid + "[")]
    if t is None and cases:
        # a parametrized test: every case as one
        bad = [c for c in cases if c["outcome"] in ("failed", "error")]
        if bad:
            pytest.fail("\n".join(f"{c['nodeid']}: {c['outcome']} in the guest ({c['duration_s']} s):\n{c['longrepr']}"
                                  for c in bad), pytrace=False)
        if all(c["outcome"] == "skipped" for c in cases):
            pytest.skip("in the guest: " + "; ".join(c["message"] for c in cases))
        assert all(c["outcome"] in ("passed", "xpassed", "skipped") for c in cases), cases
        return
    if t is None:
        pytest.fail(f"{nodeid} did not run in the guest: {guest_tier.why_missing()}", pytrace=False)
    outcome = t["outcome"]
    if outcome == "skipped":
        pytest.skip(f"in the guest: {t['message']}")
    if outcome == "xfailed":
        pytest.xfail(f"in the guest: {t['message']}")
    if outcome in ("failed", "error"):
        pytest.fail(f"{outcome} in the guest ({t['duration_s']} s):\n{t['longrepr']}", pytrace=False)
    assert outcome in ("passed", "xpassed"), t


def test_no_other_guest_test_failed(guest_tier):
    """Guest tests not known here (generated ones) count too."""
    bad = [f"{t['nodeid']}: {t['outcome']}: {t['message']}" for nodeid, t in guest_tier.tests.items()
           if nodeid not in GUEST_TESTS and t["outcome"] in ("failed", "error")]
    assert not bad, "\n".join(bad)
