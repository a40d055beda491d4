"""Sources on fixture trees: what they write and give back."""
import pytest

from oomkiller.sources import SourceUnavailable
from oomkiller.sources.brake import MemoryHighBrake
from oomkiller.sources.psi import PsiSource


def test_brake_sets_and_restores_memory_high(v2_tree):
    d = v2_tree.cgroup("domain", memory__high="max\n", memory__max="268435456\n")
    brake = MemoryHighBrake(str(d), 261_723_750)
    brake.start()
    assert (d / "memory.high").read_text() == "261723750"
    assert brake.stats() == {"memory_high_bytes": 261_723_750, "was": "max"}
    assert not hasattr(brake, "fds")     # an actuator: it wakes no one
    brake.close()
    assert (d / "memory.high").read_text() == "max"


def test_brake_on_a_cgroup_without_memory_high(v2_tree):
    d = v2_tree.cgroup("nomem")
    with pytest.raises(SourceUnavailable, match="cannot set .*memory.high"):
        MemoryHighBrake(str(d), 1).start()


def test_psi_without_pressure_files_says_what_to_do(tmp_path):
    src = PsiSource([str(tmp_path / "nope")])
    with pytest.raises(SourceUnavailable, match="PSI triggers unavailable .*psi=1"):
        src.start()


def test_the_tree_watch_sees_cgroups_come_and_go_outside_jobs(tmp_path):
    from oomkiller.sources.psi import TreeWatch
    dom = tmp_path / "dom"
    for d in ("slice/job1/inner", "slice/empty", "job2"):
        (dom / d).mkdir(parents=True)
    jobs = {str(dom / "slice" / "job1"), str(dom / "job2")}
    w = TreeWatch()
    assert w.changed()                          # nothing watched yet
    w.watch(str(dom), jobs)
    try:
        assert w.problem == "" and not w.changed()
        assert w.stats() == {"watched_folders": 3}      # dom, slice, slice/empty
        (dom / "slice" / "job1" / "inner" / "x").mkdir()    # inside a job: makes no job
        (dom / "job2" / "y").mkdir()
        assert not w.changed()
        (dom / "slice" / "empty" / "new").mkdir()
        assert w.changed() and w.changed()       # stays changed until watched again
        w.watch(str(dom), jobs | {str(dom / "slice" / "empty" / "new")})
        assert not w.changed()
        (dom / "job2" / "y").rmdir()
        assert not w.changed()
        (dom / "slice" / "empty" / "new").rmdir()
        assert w.changed()
        w.watch(str(dom), jobs)
        assert not w.changed()
        (dom / "job3").mkdir()
        assert w.changed()
        w.watch(str(dom), jobs)
        (dom / "slice" / "empty").rmdir()       # a watched folder goes
        assert w.changed()
    finally:
        w.close()
    assert w.changed()


def test_the_tree_watch_gives_up_on_too_many_folders(tmp_path, monkeypatch):
    from oomkiller.sources import psi
    monkeypatch.setattr(psi, "MAX_WATCHES", 3)
    for i in range(4):
        (tmp_path / f"s{i}").mkdir()
    w = psi.TreeWatch()
    w.watch(str(tmp_path), set())
    assert "more than 3" in w.problem and w.changed()
    assert w.stats() == {"tree_watch": "more than 3 cgroups outside jobs"}
    w.watch(str(tmp_path), {str(tmp_path / f"s{i}") for i in range(4)})
    assert w.problem == "" and not w.changed()
    w.close()
