"""Cgroups and processes that vanish while jobs are listed are passed over.

A fixture tree is listed once to count its reads; then, for every read in
turn, that read fails the way a vanishing cgroup or process makes it fail
(each errno of ``GONE_ERRNOS`` at the read, the cgroup or process removed
just before the open, a cgroup folder replaced by a file), and the listing
must still return every job the failure did not touch, exactly as before.
"""
from __future__ import annotations

import errno
import os

import pytest

import oomkiller.files as files_mod
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.files import GONE_ERRNOS
from oomkiller.procfs import Procfs
from oomkiller.core.rank import Policy, rank

from trees import CgroupTree, Unreadable

GLOBS = ("*.service", "*.scope")
# relative cgroup path -> its own processes
CGROUPS = {
    "system.slice": (),
    "system.slice/web.service": (101,),
    "system.slice/web.service/worker": (102,),
    "system.slice/web.service/worker/sub": (103,),
    "system.slice/db.service": (104,),
    "user.slice": (),
    "user.slice/grp": (),
    "user.slice/grp/x.scope": (105,),
    "batch.scope": (106, 107),
    "empty.service": (),
}
MODES = [f"read:{errno.errorcode[e]}" for e in sorted(GONE_ERRNOS)] + ["removed", "replaced"]


def _build(tmp_path, layout, proc_tree):
    tree = CgroupTree(tmp_path / "cgroup", v2=layout == "v2")
    unified = tree.root / "unified"
    if layout == "hybrid":
        unified.mkdir()
        (unified / "cgroup.controllers").write_text("")
        (unified / "cgroup.procs").write_text("")
    for rel, pids in CGROUPS.items():
        files = {"memory__stat": f"anon {len(rel) << 20}\nshmem 4096\n"}
        if rel in ("system.slice/db.service", "user.slice/grp"):
            files["memory__oom__group"] = "1\n"
        tree.cgroup(rel, pids, **files)
        if layout == "hybrid":
            (unified / rel).mkdir(parents=True, exist_ok=True)
            (unified / rel / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        for pid in pids:
            proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=1, swap_kb=0, adj=pid % 3,
                           cgroup=f"4:memory:/{rel}\n0::/{rel}\n")
    return tree


class Faults:
    """Stands in for ``open`` in files (through which every cgroupfs and
    procfs read of a job goes): counts the reads of the fixture tree, and
    makes the ``fail_at``-th one fail in the given mode."""

    def __init__(self, tmp_path, mode: str = "", fail_at: int = -1) -> None:
        self.base = str(tmp_path)
        self.mode, self.fail_at = mode, fail_at
        self.reads: list[str] = []
        self.failed: str | None = None
        self.aside: tuple[str, str] | None = None
        self._open = open

    def __call__(self, path, *args, **kwargs):
        path = os.fspath(path)
        if path.startswith(self.base + os.sep):
            self.reads.append(path)
            if len(self.reads) - 1 == self.fail_at:
                self.failed = path
                return self._fail(path, args, kwargs)
        return self._open(path, *args, **kwargs)

    def _fail(self, path, args, kwargs):
        if self.mode.startswith("read:"):
            return Unreadable(path, getattr(errno, self.mode[5:]))
        owner = os.path.dirname(path)       # the cgroup or /proc/PID folder the file is in
        self.aside = (owner, os.path.join(self.base, "aside"))
        os.rename(*self.aside)              # gone, with all below it
        if self.mode == "replaced":
            with self._open(owner, "w") as f:
                f.write("not a cgroup any more\n")
        return self._open(path, *args, **kwargs)

    def restore(self) -> None:
        if self.aside:
            owner, aside = self.aside
            if self.mode == "replaced":
                os.unlink(owner)
            os.rename(aside, owner)


def _touched(path: str, tree: CgroupTree, proc_root, baseline: list):
    """Whether a failure at ``path`` may change a job (by name): one holding
    the process, or overlapping the cgroup (the same one in either tree)."""
    if path.startswith(str(proc_root) + os.sep):
        pid = int(os.path.relpath(path, proc_root).split(os.sep)[0])
        holders = {j.name for j in baseline if pid in {p.pid for p in j.procs}}
        return lambda name: name in holders
    for root in (tree.mem, tree.root / "unified"):
        if path.startswith(str(root) + os.sep):
            rel = os.path.relpath(os.path.dirname(path), root)
            break
    else:
        raise AssertionError(f"a read outside the trees: {path}")
    return lambda name: rel == "." or name == rel or name.startswith(rel + "/") or rel.startswith(name + "/")


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kept", [False, True], ids=["walked", "kept"])
def test_every_read_failing_keeps_the_other_jobs(tmp_path, proc_tree, monkeypatch, layout, mode, kept):
    """``kept``: the listing before the failing one is kept in the table
    (cgtable), and the failing one starts from it; a listing after the
    failure is the baseline again (nothing wrong was kept)."""
    tree = _build(tmp_path, layout, proc_tree)

    def fresh():
        fs = Cgroupfs(str(tmp_path / "cgroup"), Procfs(str(proc_tree.root)))
        if kept:
            fs.jobs(dom, GLOBS)
        return fs
    dom = Cgroupfs(str(tmp_path / "cgroup"), Procfs(str(proc_tree.root))).resolve("host")
    fs = fresh()
    count = Faults(tmp_path)
    monkeypatch.setattr(files_mod, "open", count, raising=False)
    baseline = fs.jobs(dom, GLOBS)
    assert fs.table_counts["kept"] == int(kept)
    assert sorted(j.name for j in baseline) == [
        "batch.scope", "empty.service", "system.slice/db.service", "system.slice/web.service", "user.slice/grp"]
    assert [p.pid for p in next(j for j in baseline if j.name == "system.slice/web.service").procs] == [101, 102, 103]
    n_reads = len(count.reads)
    assert n_reads > 30
    for k in range(n_reads):
        monkeypatch.undo()
        fs = fresh()
        fault = Faults(tmp_path, mode, k)
        monkeypatch.setattr(files_mod, "open", fault, raising=False)
        try:
            jobs = fs.jobs(dom, GLOBS)
        finally:
            fault.restore()
        ranking = rank(jobs, Policy(), 1 << 30)
        assert fault.failed, f"read {k} did not happen"
        touched = _touched(fault.failed, tree, proc_tree.root, baseline)
        what = f"{mode} at read {k} ({fault.failed})"
        got = {j.name: j for j in jobs}
        for j in baseline:
            if not touched(j.name):
                assert j.name in got, f"{what} lost '{j.name}'"
                assert got[j.name] == j, what
        base = {b.name: b for b in baseline}
        for name, j in got.items():
            assert touched(name) or name in base, f"{what}: '{name}' appeared"
            if touched(name) and name in base:
                # a process or descendant that vanished is dropped from its job
                assert {p.pid for p in j.procs} <= {p.pid for p in base[name].procs}, what
        assert len(ranking.candidates) == len(jobs)
        assert fs.jobs(dom, GLOBS) == baseline, f"{what}: not the same once it passed"


def test_a_job_removed_between_the_walk_and_its_read_is_dropped(tmp_path, proc_tree, monkeypatch):
    """ENODEV on the job's own cgroup.procs: the one ENODEV that used to
    abort the whole listing."""
    tree = _build(tmp_path, "hybrid", proc_tree)
    fs = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    real_open = open

    def enodev(path, *a, **kw):
        if str(path) == str(tree.mem / "batch.scope" / "cgroup.procs"):
            return Unreadable(path, errno.ENODEV)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(files_mod, "open", enodev, raising=False)
    ranking = rank(fs.jobs(fs.resolve("host"), GLOBS), Policy(), 1 << 30)
    names = [c.job.name for c in ranking.killable()]
    assert "batch.scope" not in names and len(names) == 3    # web, db and x.scope; empty.service is empty


def test_a_process_that_exits_is_dropped_from_its_job(tmp_path, proc_tree, monkeypatch):
    tree = _build(tmp_path, "v2", proc_tree)
    fs = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    real_open = open

    def esrch(path, *a, **kw):
        if str(path) == str(proc_tree.root / "107" / "status"):
            return Unreadable(path, errno.ESRCH)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(files_mod, "open", esrch, raising=False)
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), GLOBS)}
    assert [p.pid for p in jobs["batch.scope"].procs] == [106]
    assert len(jobs) == 5


def test_subtree_pids_passes_over_vanished_descendants(tmp_path, proc_tree, monkeypatch):
    tree = _build(tmp_path, "v2", proc_tree)
    fs = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    web = str(tree.mem / "system.slice" / "web.service")
    real_open = open
    for err in sorted(GONE_ERRNOS):
        def failing(path, *a, _err=err, **kw):
            if str(path) == os.path.join(web, "worker", "cgroup.procs"):
                return Unreadable(path, _err)
            return real_open(path, *a, **kw)
        monkeypatch.setattr(files_mod, "open", failing, raising=False)
        assert fs.subtree_pids(web) == [101, 103]
    monkeypatch.setattr(files_mod, "open", lambda p, *a, **kw: Unreadable(p, errno.ENODEV))
    with pytest.raises(FileNotFoundError):      # the cgroup itself gone: the killer's "vanished"
        fs.subtree_pids(web)
