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
