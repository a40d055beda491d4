"""The job table: listings kept between calls see every change made between
them. Each listing from a kept table is compared with one by a Cgroupfs
that keeps nothing yet, and the table's counts say whether it was kept."""
from __future__ import annotations

import os
import shutil
import time

import pytest

import oomkiller.cgtable as cgtable
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.procfs import Procfs

from trees import CgroupTree


def _listing(fs: Cgroupfs, tree: CgroupTree, proc_tree, jobs=("auto",)) -> dict:
    dom = fs.resolve("host")
    got = fs.jobs(dom, jobs)
    fresh = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    assert got == fresh.jobs(dom, jobs), "the kept table and a fresh walk disagree"
    return {j.name: j for j in got}


def _setup(proc_tree, v2_tree):
    for pid in (801, 802, 803, 804):
        proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=1, swap_kb=0)
    v2_tree.cgroup("system.slice")
    # each with a usage: a job that did not change is taken as read before
    v2_tree.cgroup("system.slice/web.service", (801,), memory__current="8011776\n",
                   memory__stat="anon 4096\nfile 8192\n")
    v2_tree.cgroup("system.slice/web.service/worker", (802,), memory__current="8015872\n",
                   memory__stat="anon 4096\nfile 8192\n")
    v2_tree.cgroup("system.slice/db.service", (803,), memory__current="8019968\n",
                   memory__stat="anon 4096\nfile 8192\n")
    v2_tree.cgroup("batch", (804,), memory__current="8024064\n",
                   memory__stat="anon 4096\nfile 8192\n")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    return fs


def test_a_second_listing_is_kept_and_the_same(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    first = _listing(fs, v2_tree, proc_tree)
    assert sorted(first) == ["batch", "system.slice/db.service", "system.slice/web.service"]
    assert fs.table_counts == {"kept": 0, "walked": 1}
    again = _listing(fs, v2_tree, proc_tree)
    assert again == first and fs.table_counts == {"kept": 1, "walked": 1}
    # nothing changed: each job is the very one read before (its ranking kept too)
    assert all(again[n] is first[n] for n in first)
    assert fs.job_reads == {"read": 3, "reused": 3}


def test_a_job_added_or_removed_between_listings_is_seen(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    _listing(fs, v2_tree, proc_tree)
    proc_tree.proc(805, "new", anon_kb=5, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("system.slice/new.service", (805,))
    got = _listing(fs, v2_tree, proc_tree)
    assert [p.pid for p in got["system.slice/new.service"].procs] == [805]
    assert fs.table_counts == {"kept": 0, "walked": 2}
    shutil.rmtree(v2_tree.mem / "system.slice/db.service")
    got = _listing(fs, v2_tree, proc_tree)
    assert sorted(got) == ["batch", "system.slice/new.service", "system.slice/web.service"]
    # one removed and one made in the same folder: the count is the same
    shutil.rmtree(v2_tree.mem / "system.slice/new.service")
    v2_tree.cgroup("system.slice/other.service", (805,))
    assert sorted(_listing(fs, v2_tree, proc_tree)) == [
        "batch", "system.slice/other.service", "system.slice/web.service"]
    assert fs.table_counts["walked"] == 4


def _replace(path, make) -> None:
    """Make the cgroup at ``path`` again: a new folder (a new inode, made
    while the old one is there, so that the filesystem cannot hand the old
    inode number back as kernfs never does) moved into its place."""
    new = str(path) + ".new"
    make(new)
    shutil.rmtree(path)
    os.rename(new, path)


def test_a_job_made_again_at_the_same_path_is_a_new_job(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    before = _listing(fs, v2_tree, proc_tree)["system.slice/web.service"]
    assert before.descendants == 1 and [p.pid for p in before.procs] == [801, 802]
    web = v2_tree.mem / "system.slice/web.service"

    def make(new):
        os.mkdir(new)
        (web.parent / os.path.basename(new) / "cgroup.procs").write_text("801\n")
    _replace(web, make)
    after = _listing(fs, v2_tree, proc_tree)["system.slice/web.service"]
    assert after.inode == os.stat(web).st_ino != before.inode
    assert after.descendants == 0 and [p.pid for p in after.procs] == [801]


def test_a_cgroup_made_or_removed_below_a_job_is_seen(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    _listing(fs, v2_tree, proc_tree)
    proc_tree.proc(806, "deep", anon_kb=6, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("system.slice/web.service/worker/deep", (806,))
    web = _listing(fs, v2_tree, proc_tree)["system.slice/web.service"]
    assert web.descendants == 2 and [p.pid for p in web.procs] == [801, 802, 806]
    assert fs.table_counts["kept"] == 1     # the domain's walk kept, the job's subtree read again
    proc_tree.proc(808, "side", anon_kb=8, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("system.slice/web.service/side", (808,))     # right below the job
    web = _listing(fs, v2_tree, proc_tree)["system.slice/web.service"]
    assert web.descendants == 3 and [p.pid for p in web.procs] == [801, 802, 806, 808]
    shutil.rmtree(v2_tree.mem / "system.slice/web.service/side")
    shutil.rmtree(v2_tree.mem / "system.slice/web.service/worker")
    web = _listing(fs, v2_tree, proc_tree)["system.slice/web.service"]
    assert web.descendants == 0 and [p.pid for p in web.procs] == [801]


def test_what_decided_the_walk_is_read_again(proc_tree, v2_tree):
    """Without a name that says what it is, a cgroup is a job by what it
    holds; memory.oom.group makes one; neither makes or removes a cgroup."""
    fs = _setup(proc_tree, v2_tree)
    v2_tree.cgroup("grp")
    v2_tree.cgroup("grp/a")
    v2_tree.cgroup("grp/b")
    v2_tree.cgroup("leaf")
    got = _listing(fs, v2_tree, proc_tree)
    assert got["leaf"].rule == "empty leaf cgroup" and "grp/a" in got and "grp" not in got
    # a process in the empty leaf: the same job, its rule says so
    proc_tree.proc(807, "leafy", anon_kb=7, shmem_kb=0, swap_kb=0)
    (v2_tree.mem / "leaf" / "cgroup.procs").write_text("807\n")
    got = _listing(fs, v2_tree, proc_tree)
    assert got["leaf"].rule == "cgroup with processes" and fs.table_counts["kept"] == 1
    # a process of its own in a cgroup that held only cgroups: it is the job now
    (v2_tree.mem / "grp" / "cgroup.procs").write_text("807\n")
    (v2_tree.mem / "leaf" / "cgroup.procs").write_text("")
    got = _listing(fs, v2_tree, proc_tree)
    assert got["grp"].rule == "cgroup with processes" and "grp/a" not in got
    (v2_tree.mem / "grp" / "cgroup.procs").write_text("")
    assert "grp/a" in _listing(fs, v2_tree, proc_tree)
    # memory.oom.group set on a slice: one job; and cleared
    (v2_tree.mem / "system.slice" / "memory.oom.group").write_text("1\n")
    got = _listing(fs, v2_tree, proc_tree)
    assert got["system.slice"].rule == "memory.oom.group" and "system.slice/web.service" not in got
    (v2_tree.mem / "system.slice" / "memory.oom.group").write_text("0\n")
    assert "system.slice/web.service" in _listing(fs, v2_tree, proc_tree)
    # and on a job: its rule says so
    (v2_tree.mem / "batch" / "memory.oom.group").write_text("1\n")
    assert _listing(fs, v2_tree, proc_tree)["batch"].rule == "memory.oom.group"


def test_a_slice_with_processes_of_its_own_is_a_job_while_it_has_them(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    assert "system.slice" not in _listing(fs, v2_tree, proc_tree)
    (v2_tree.mem / "system.slice" / "cgroup.procs").write_text("804\n")
    got = _listing(fs, v2_tree, proc_tree)
    assert got["system.slice"].rule == "slice with processes of its own"
    (v2_tree.mem / "system.slice" / "cgroup.procs").write_text("")
    assert "system.slice/web.service" in _listing(fs, v2_tree, proc_tree)


def _hybrid(tmp_path, proc_tree):
    tree = CgroupTree(tmp_path / "cgroup", v2=False)
    unified = tree.root / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("")
    (unified / "cgroup.procs").write_text("")
    for rel, pids in (("a", (901,)), ("b", (902, 903)), ("b/inner", (904,))):
        tree.cgroup(rel, pids, memory__usage_in_bytes=f"{sum(pids) << 12}\n")
        (unified / rel).mkdir()
        (unified / rel / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        for pid in pids:
            proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=0, swap_kb=0, cgroup=f"4:memory:/{rel}\n0::/{rel}\n")
    return tree, unified


def test_hybrid_the_v2_counterpart_is_kept_while_it_holds_the_job_alone(tmp_path, proc_tree):
    tree, unified = _hybrid(tmp_path, proc_tree)
    fs = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    got = _listing(fs, tree, proc_tree, ("*",))
    assert got["a"].v2_path == str(unified / "a") and got["a"].v2_id == os.stat(unified / "a").st_ino
    assert got["b"].v2_path == str(unified / "b")
    reads = []
    real = fs.procfs.cgroups
    fs.procfs.cgroups = lambda pid: reads.append(pid) or real(pid)
    got = _listing(fs, tree, proc_tree, ("*",))
    assert reads == [] and got["b"].v2_path == str(unified / "b")      # no /proc/PID/cgroup read
    # another process in a's v2 cgroup: cgroup.kill there would hit it
    proc_tree.proc(905, "other", anon_kb=1, shmem_kb=0, swap_kb=0, cgroup="4:memory:/\n0::/a\n")
    (unified / "a" / "cgroup.procs").write_text("901\n905\n")
    got = _listing(fs, tree, proc_tree, ("*",))
    assert got["a"].v2_path == "" and got["a"].v2_id == 0
    (unified / "a" / "cgroup.procs").write_text("901\n")
    assert _listing(fs, tree, proc_tree, ("*",))["a"].v2_path == str(unified / "a")
    # b's v2 cgroup made again: its new id
    old = got["b"].v2_id

    def make(new):
        os.mkdir(new)
        os.mkdir(os.path.join(new, "inner"))
        (unified / "b.new" / "cgroup.procs").write_text("902\n903\n")
        (unified / "b.new" / "inner" / "cgroup.procs").write_text("904\n")
    _replace(unified / "b", make)
    got = _listing(fs, tree, proc_tree, ("*",))
    assert got["b"].v2_id == os.stat(unified / "b").st_ino != old


def test_a_filesystem_whose_link_counts_say_nothing_keeps_nothing(proc_tree, v2_tree, monkeypatch):
    monkeypatch.setattr(cgtable, "mark", lambda path: (os.stat(path).st_ino, 1))
    fs = _setup(proc_tree, v2_tree)
    for _ in range(2):
        _listing(fs, v2_tree, proc_tree)
    assert fs.table_counts == {"kept": 0, "walked": 2}
    assert all(f.tree is None for f in fs._facts.values())


def test_the_table_is_bounded(proc_tree, v2_tree, monkeypatch):
    monkeypatch.setattr(cgtable, "MAX_TABLE_LISTINGS", 2)
    fs = _setup(proc_tree, v2_tree)
    dom = fs.resolve("host")
    for jobs in (("auto",), ("*",), ("*.service",), ("batch",)):
        fs.jobs(dom, jobs)
    assert len(fs._listings) == 2
    # only the jobs of the latest listing are kept
    assert sorted(fs._facts) == [str(v2_tree.mem / "batch")]


@pytest.mark.parametrize("jobs", [("auto",), ("*",)])
def test_a_listing_cut_short_is_not_kept(proc_tree, v2_tree, monkeypatch, jobs):
    import oomkiller.cgroupfs as cgroupfs_mod
    monkeypatch.setattr(cgroupfs_mod, "MAX_DOMAIN_CGROUPS", 1)
    fs = _setup(proc_tree, v2_tree)
    for _ in range(2):
        _listing(fs, v2_tree, proc_tree, jobs)
    assert fs.table_counts == {"kept": 0, "walked": 2}


# -- a job read in full only when it changed ----------------------------------

def _job_files(v2_tree, rel, anon_kb, cache_kb=4):
    d = v2_tree.mem / rel
    (d / "memory.stat").write_text(f"anon {anon_kb << 10}\nfile {cache_kb << 10}\ninactive_file {cache_kb << 10}\n"
                                   "shmem 0\n")


CHANGES = {
    "a process came": lambda p, t: (p.proc(805, "new", anon_kb=5, shmem_kb=0, swap_kb=0),
                                    (t.mem / "batch" / "cgroup.procs").write_text("804\n805\n")),
    "a process left": lambda p, t: (t.mem / "system.slice/web.service/worker" / "cgroup.procs").write_text(""),
    "oom_score_adj": lambda p, t: (p.root / "804" / "oom_score_adj").write_text("500\n"),
    "usage and charge": lambda p, t: ((t.mem / "batch" / "memory.current").write_text(f"{8024064 + (1 << 20)}\n"),
                                      _job_files(t, "batch", 9000)),
    "a cgroup below": lambda p, t: t.cgroup("batch/sub"),
    "memory.oom.group": lambda p, t: (t.mem / "batch" / "memory.oom.group").write_text("1\n"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_job_that_changed_is_read_again(proc_tree, v2_tree, change):
    """Each change a ranking depends on makes the job be read again; the
    listing is compared with a fresh one by ``_listing``, the others kept."""
    fs = _setup(proc_tree, v2_tree)
    for rel in ("batch", "system.slice/db.service", "system.slice/web.service"):
        _job_files(v2_tree, rel, 100)
    first = _listing(fs, v2_tree, proc_tree)
    CHANGES[change](proc_tree, v2_tree)
    got = _listing(fs, v2_tree, proc_tree)
    changed = [n for n in first if got[n] is not first[n]]
    assert changed == (["system.slice/web.service"] if change == "a process left" else ["batch"])
    assert fs.job_reads["reused"] == 2


def test_what_moves_without_the_usage_is_kept_only_so_long(proc_tree, v2_tree, monkeypatch):
    """A charge that moved within REUSE_USAGE_SLACK of the usage, and a
    process's name, are as last read until the read is refresh_after old;
    a job read for a walk (``job``) is always read in full."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fs = _setup(proc_tree, v2_tree)
    _job_files(v2_tree, "batch", 100, cache_kb=4096)        # cache that could turn into a charge
    dom = fs.resolve("host")
    first = {j.name: j for j in fs.jobs(dom, ("auto",))}
    _job_files(v2_tree, "batch", 20000)     # the charge moved, not the usage
    (proc_tree.root / "804" / "stat").write_text(
        (proc_tree.root / "804" / "stat").read_text().replace("(p804)", "(renamed)"))
    age = cgtable.refresh_after(os.stat(v2_tree.mem / "batch").st_ino)
    assert cgtable.REUSE_MAX_AGE_S / 2 <= age < cgtable.REUSE_MAX_AGE_S
    clock[0] += age - 0.01
    got = {j.name: j for j in fs.jobs(dom, ("auto",))}
    assert got["batch"] is first["batch"]
    fresh = fs.job(str(v2_tree.mem / "batch"), dom, got["batch"].rule)
    assert fresh.charged_bytes > first["batch"].charged_bytes and fresh.procs[0].name == "renamed"
    clock[0] += 0.02
    got = {j.name: j for j in fs.jobs(dom, ("auto",))}
    assert got["batch"] == fresh and got["batch"] is not first["batch"]


def test_a_job_read_in_part_is_not_kept(proc_tree, v2_tree):
    """A process listed but gone from /proc when read: the next listing
    reads the job in full again."""
    fs = _setup(proc_tree, v2_tree)
    (v2_tree.mem / "batch" / "cgroup.procs").write_text("804\n899\n")     # 899: no /proc entry
    _listing(fs, v2_tree, proc_tree)
    reads = fs.job_reads["read"]
    _listing(fs, v2_tree, proc_tree)
    assert fs.job_reads["read"] == reads + 1


@pytest.mark.parametrize("pinned", [False, True])
def test_the_refresh_is_spread_over_jobs(pinned):
    most = cgtable.REUSE_MAX_AGE_PINNED_S if pinned else cgtable.REUSE_MAX_AGE_S
    ages = {cgtable.refresh_after(i, pinned) for i in range(64)}
    assert len(ages) == 32 and min(ages) == most / 2 and max(ages) < most


def test_a_job_all_charge_is_read_in_full_less_often(proc_tree, v2_tree, monkeypatch):
    """Its charge cannot grow but with its usage: read in full again only
    after the longer refresh."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fs = _setup(proc_tree, v2_tree)
    _job_files(v2_tree, "batch", 100, cache_kb=0)
    dom = fs.resolve("host")
    first = {j.name: j for j in fs.jobs(dom, ("auto",))}
    inode = os.stat(v2_tree.mem / "batch").st_ino
    clock[0] += cgtable.refresh_after(inode, pinned=True) - 0.01
    assert {j.name: j for j in fs.jobs(dom, ("auto",))}["batch"] is first["batch"]
    clock[0] += 0.02
    assert {j.name: j for j in fs.jobs(dom, ("auto",))}["batch"] is not first["batch"]


def test_a_job_charged_nothing_is_kept_too(proc_tree, v2_tree):
    """Charges stay where they were made: a process moved into a new cgroup
    leaves it at 0 bytes, which is a usage read, not a failed read."""
    fs = _setup(proc_tree, v2_tree)
    (v2_tree.mem / "batch" / "memory.current").write_text("0\n")
    first = _listing(fs, v2_tree, proc_tree)
    assert _listing(fs, v2_tree, proc_tree)["batch"] is first["batch"]


def test_a_job_whose_charge_cannot_be_read_is_read_in_full_again(proc_tree, v2_tree):
    fs = _setup(proc_tree, v2_tree)
    (v2_tree.mem / "batch" / "memory.stat").unlink()
    first = _listing(fs, v2_tree, proc_tree)
    assert _listing(fs, v2_tree, proc_tree)["batch"] is not first["batch"]


def test_a_job_with_swap_is_read_in_full_as_often_as_one_with_cache(proc_tree, v2_tree, monkeypatch):
    """At a limit of its own, a job's usage stays put while what no longer
    fits goes to swap: its charge (swap counted) grows with its usage
    unmoved, as a job's cache can turn into charge. It is not "all charge"
    (read in full only every 30-60 s): its swap is read within the shorter
    refresh, as its cache would be."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fs = _setup(proc_tree, v2_tree)
    _job_files(v2_tree, "batch", 100, cache_kb=0)
    swap = v2_tree.mem / "batch" / "memory.swap.current"
    swap.write_text(f"{100 << 20}\n")
    dom = fs.resolve("host")
    first = {j.name: j for j in fs.jobs(dom, ("auto",))}["batch"]
    swap.write_text(f"{900 << 20}\n")
    clock[0] += cgtable.REUSE_MAX_AGE_S
    got = {j.name: j for j in fs.jobs(dom, ("auto",))}["batch"]
    assert got.charged_bytes == first.charged_bytes + (800 << 20)


def test_jobs_read_alone_and_gone_are_not_kept_without_bound(proc_tree, v2_tree, monkeypatch):
    """The loop reads alone the jobs a walk or an arming may kill, and with
    listings made in the background it may not list for days: what it kept
    of jobs read so, each with its last full read (a Job and its
    processes), must not pile up as jobs come and go (a transient unit per
    task) until it reaches the table's bound of twenty thousand."""
    monkeypatch.setattr(cgtable, "MAX_READ_ALONE", 8, raising=False)
    fs = _setup(proc_tree, v2_tree)
    dom = fs.resolve("host")
    fs.jobs(dom, ("auto",))
    for i in range(40):
        path = v2_tree.cgroup(f"system.slice/run-u{i}.scope", (803,), memory__current="4096\n",
                              memory__stat="anon 4096\n")
        fs.job(str(path), dom, "systemd unit")
        shutil.rmtree(path)
    assert len(fs._facts) <= 3 + 8


def test_a_job_scored_by_its_processes_sees_them_shrink(proc_tree, v2_tree):
    """A process moved into a job brings its memory and leaves its charge
    behind: the job is scored by that process's own memory (more than its
    charge). When the process gives most of it back, the job's usage does
    not move (the pages were never charged to it), so the usage cannot say
    the job changed: its processes are read again, or the job would keep
    its old score, and its place at the top, for up to a minute."""
    fs = _setup(proc_tree, v2_tree)
    (v2_tree.mem / "batch" / "memory.current").write_text("0\n")
    (v2_tree.mem / "batch" / "memory.stat").write_text("anon 0\nshmem 0\n")
    proc_tree.root.joinpath("804").rename(proc_tree.root / "old804")
    proc_tree.proc(804, "p804", anon_kb=1 << 20, shmem_kb=0, swap_kb=0)
    first = _listing(fs, v2_tree, proc_tree)
    assert first["batch"].committed_bytes == 1 << 30
    status = proc_tree.root / "804" / "status"
    status.write_text(status.read_text().replace(f"RssAnon:\t{1 << 20} kB", "RssAnon:\t1024 kB"))
    assert _listing(fs, v2_tree, proc_tree)["batch"].committed_bytes == 1 << 20


@pytest.mark.parametrize("anon_kb, read_again", [(100, False), (1024, True)])
def test_processes_read_again_only_while_their_own_memory_scores_the_job(proc_tree, v2_tree, anon_kb, read_again):
    """A job charged nothing (its process moved in, its charge stayed
    behind) is scored by its process's own memory: that is read again on
    every listing once it leads the charge by more than the usage's slack;
    within it, the score is as close as a charge taken as read."""
    fs = _setup(proc_tree, v2_tree)
    proc_tree.proc(810, "moved", anon_kb=anon_kb, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("moved", (810,), memory__current="0\n", memory__stat="anon 0\nfile 0\n")
    _listing(fs, v2_tree, proc_tree)
    reads = []
    real = fs.procfs.proc
    fs.procfs.proc = lambda pid: reads.append(pid) or real(pid)
    _listing(fs, v2_tree, proc_tree)
    assert (810 in reads) == read_again
