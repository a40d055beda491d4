"""Fixtures for the plain tier: fake trees built in a temporary folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from trees import CgroupTree, ProcTree


@pytest.fixture
def proc_tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


@pytest.fixture
def v2_tree(tmp_path: Path) -> CgroupTree:
    return CgroupTree(tmp_path / "cgroup", v2=True)


@pytest.fixture
def v1_tree(tmp_path: Path) -> CgroupTree:
    return CgroupTree(tmp_path / "cgroup", v2=False)
