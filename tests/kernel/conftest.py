"""The tier that needs root, cgroups and a real kernel.

These run for real on this project's machines and in CI (as root). Every
memory pressure they create stays inside an Arena: cgroups made under the test
process's own cgroup with a small limit, removed afterwards.
"""
from __future__ import annotations

import os
import uuid

import pytest

from kproc import DaemonProc

from oomkiller_bench.arena import Arena

if os.geteuid() != 0:
    pytest.skip("needs root: makes cgroups, loads BPF and kills processes", allow_module_level=True)


@pytest.fixture
def arena():
    with Arena(f"oomk-test-{uuid.uuid4().hex[:8]}", 256 << 20) as a:
        yield a


@pytest.fixture
def files_dir():
    """Where the tests keep their large data files, made once per machine."""
    d = "/var/tmp/oomkiller-tests"
    os.makedirs(d, exist_ok=True)
    return d


@pytest.fixture
def daemon(tmp_path):
    started = []

    def start(*args: str) -> DaemonProc:
        d = DaemonProc(tmp_path, *args)
        started.append(d)
        return d
    yield start
    for d in started:
        if d.p.poll() is None:
            d.stop()
