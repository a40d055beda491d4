"""The killer's bookkeeping on fixture trees."""
from __future__ import annotations

import errno
import os

import pytest

from oomkiller import cgroupfs as cgroupfs_mod
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.procfs import Procfs


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENODEV])
def test_subtree_pids_passes_over_a_descendant_gone_while_read(proc_tree, v1_tree, monkeypatch, err):
    v1_tree.cgroup("j", (11,))
    v1_tree.cgroup("j/a", (12,))
    v1_tree.cgroup("j/b", (13,))
    real = cgroupfs_mod._read_pids

    def read_pids(path):
        if "/j/a/" in path:
            raise OSError(err, os.strerror(err))
        return real(path)
    monkeypatch.setattr(cgroupfs_mod, "_read_pids", read_pids)
    cg = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    assert cg.subtree_pids(str(v1_tree.mem / "j")) == [11, 13]
    with pytest.raises(OSError):
        cg.subtree_pids(str(v1_tree.mem / "j" / "a"))
