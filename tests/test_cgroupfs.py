import os

import pytest

from oomkiller.cgroupfs import LEAF_READS, MAX_DEPTH, MEMBER_READS, MEMBER_READS_SUSPECT, Cgroupfs, detect_layout, walk_cgroups
from oomkiller.procfs import Procfs
from oomkiller.core.rank import Policy, rank

from trees import CgroupAttrs, CgroupTree


def test_layouts(tmp_path):
    v1 = CgroupTree(tmp_path / "one", v2=False)
    (tmp_path / "one" / "unified").mkdir()
    (tmp_path / "one" / "unified" / "cgroup.controllers").write_text("")
    l1 = detect_layout(str(v1.root))
    assert l1.memory_v1 and l1.memory_root == str(v1.mem) and l1.unified_root == str(v1.root / "unified")
    assert l1.jobs_root == str(v1.mem)
    v2 = CgroupTree(tmp_path / "two", v2=True)
    l2 = detect_layout(str(v2.root))
    assert not l2.memory_v1 and l2.memory_root == l2.unified_root == str(v2.root)


def test_jobs_children_globs_and_oom_group(proc_tree, v2_tree):
    proc_tree.proc(101, "a", anon_kb=10, shmem_kb=1, swap_kb=0)
    proc_tree.proc(102, "b", anon_kb=20, shmem_kb=2, swap_kb=0)
    proc_tree.proc(103, "c", anon_kb=40, shmem_kb=4, swap_kb=0)
    proc_tree.proc(104, "d", anon_kb=80, shmem_kb=8, swap_kb=0)
    v2_tree.cgroup("system.slice")
    v2_tree.cgroup("system.slice/web.service", (101,))
    v2_tree.cgroup("system.slice/web.service/worker", (102,))
    v2_tree.cgroup("system.slice/db.service", (103,), memory__oom__group="1\n")
    v2_tree.cgroup("user.slice/grp", memory__oom__group="1\n")
    v2_tree.cgroup("user.slice/grp/x.scope", (104,))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    dom = fs.resolve("host")
    assert [j.name for j in fs.jobs(dom, ("*",))] == ["system.slice", "user.slice"]
    jobs = {j.name: j for j in fs.jobs(dom, ("*.service", "*.scope"))}
    assert sorted(jobs) == ["system.slice/db.service", "system.slice/web.service", "user.slice/grp"]
    web = jobs["system.slice/web.service"]
    assert [p.pid for p in web.procs] == [101, 102] and web.descendants == 1
    assert web.committed_bytes == (10 + 1 + 20 + 2) * 1024
    assert jobs["system.slice/db.service"].oom_group and not web.oom_group
    assert [p.pid for p in jobs["user.slice/grp"].procs] == [104]


def test_vanished_pid_is_dropped(proc_tree, v2_tree):
    proc_tree.proc(201, "here", anon_kb=5, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("j", (201, 202))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert [p.pid for p in job.procs] == [201]


def test_a_match_holding_init_or_oomkiller_is_split_into_its_children(proc_tree, v2_tree):
    for pid in (1, 300, 301, 302):
        proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=1, swap_kb=0)
    v2_tree.cgroup("init.scope", (1,))
    v2_tree.cgroup("system.slice/oomkiller.service", (300,))
    v2_tree.cgroup("system.slice/web.service", (301,))
    v2_tree.cgroup("user.slice/user-1000.slice", (302,))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    dom = fs.resolve("host")
    keep = (str(v2_tree.root / "init.scope"), str(v2_tree.root / "system.slice/oomkiller.service"))
    names = [j.name for j in fs.jobs(dom, ("*",), keep)]
    assert names == ["init.scope", "system.slice/oomkiller.service", "system.slice/web.service", "user.slice"]


def test_job_charge_from_memory_stat(proc_tree, v1_tree, v2_tree):
    v2_tree.cgroup("j2", memory__stat="anon 1000\nfile 999999\nshmem 20\n", memory__swap__current="3\n")
    fs2 = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    assert fs2.charged_bytes(str(v2_tree.mem / "j2")) == 1023


def test_job_refaults_from_the_same_read(proc_tree, tmp_path, v2_tree):
    v2_tree.cgroup("j2", memory__stat="anon 1000\nworkingset_refault_file 77\n", memory__current="1000\n")
    v2_tree.cgroup("old", memory__stat="anon 1000\nworkingset_refault 9\n")
    v2_tree.cgroup("none", memory__stat="anon 1000\n")
    fs2 = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    assert fs2.charge(str(v2_tree.mem / "j2")) == (1000, 77)
    assert fs2.charge(str(v2_tree.mem / "old"))[1] == 9         # before 5.9: one counter
    assert fs2.charge(str(v2_tree.mem / "none"))[1] == -1
    assert fs2.charge(str(v2_tree.mem / "gone")) == (0, -1)
    v1 = CgroupTree(tmp_path / "v1", v2=False)
    v1.cgroup("j1", memory__stat="workingset_refault_file 5\ntotal_rss 4000\ntotal_workingset_refault_file 50\n")
    fs = Cgroupfs(str(v1.root), Procfs(str(proc_tree.root)))
    assert fs.charge(str(v1.mem / "j1"))[1] == 50                # the subtree's


def test_job_charge_v1(proc_tree, tmp_path):
    v1 = CgroupTree(tmp_path / "v1", v2=False)
    v1.cgroup("j1", memory__stat="rss 5\ntotal_rss 4000\ntotal_cache 77777\ntotal_shmem 300\ntotal_swap 20\n")
    fs = Cgroupfs(str(v1.root), Procfs(str(proc_tree.root)))
    assert fs.charged_bytes(str(v1.mem / "j1")) == 4320


def test_job_charge_counts_kernel_memory_less_clean_file_cache(proc_tree, tmp_path, v2_tree):
    # usage 10 MiB: 1 MiB anon, 8 MiB clean file cache (all inactive: reclaimable), the rest kernel
    # memory such as pipe buffers: the charge is what reclaim cannot drop, 2 MiB, plus swap
    MiB = 1 << 20
    v1 = CgroupTree(tmp_path / "v1", v2=False)
    v1.cgroup("j1", memory__usage_in_bytes=f"{10 * MiB}\n",
              memory__stat=f"total_rss {MiB}\ntotal_inactive_file {8 * MiB}\ntotal_shmem 0\ntotal_swap 7\n")
    fs = Cgroupfs(str(v1.root), Procfs(str(proc_tree.root)))
    assert fs.charged_bytes(str(v1.mem / "j1")) == 2 * MiB + 7
    # half the active file cache is the working set: it counts; dirty pages are reclaimable (written first)
    v2_tree.cgroup("j2", memory__current=f"{10 * MiB}\n", memory__swap__current="0\n",
                   memory__stat=f"anon {MiB}\nactive_file {4 * MiB}\ninactive_file {4 * MiB}\nfile_dirty {MiB}\n")
    fs2 = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    assert fs2.charged_bytes(str(v2_tree.mem / "j2")) == 10 * MiB - (4 * MiB + 2 * MiB)


def test_xattrs_count_only_on_root_owned_cgroups(proc_tree, v2_tree):
    """As systemd-oomd: a user owns their delegated subtree and could set
    user.oomd_omit there to make their own cgroups unkillable."""
    attrs = CgroupAttrs()
    pid = 400
    for rel, uid, xattrs in (("root.service", 0, {"oomd_omit": "1"}),
                             ("user@1000.service", 1000, {"oomd_omit": "1"}),
                             ("pref.service", 1000, {"oomd_prefer": "1", "oomd_avoid": "0"}),
                             ("avoid.service", 0, {"oomd_avoid": "1"}),
                             ("holder.service", 0, {}),
                             ("holder.service/app.scope", 1000, {"oomd_omit": "1", "oomd_avoid": "1"}),
                             ("kept.service", 0, {}),
                             ("kept.service/db.scope", 0, {"oomd_omit": "1"}),
                             ("plain.service", 1000, {"oomd_omit": "0"})):
        pid += 1
        proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=0, swap_kb=0)
        attrs.set(v2_tree.cgroup(rel, (pid,)), uid, **xattrs)
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    attrs.attach(fs)
    jobs = fs.jobs(fs.resolve("host"), ("*.service",))
    ranking = {c.job.name: c for c in rank(jobs, Policy(), 1 << 30).candidates}
    got = {n: (c.importance.name.lower(), c.killable, c.reasons[:2]) for n, c in ranking.items()}
    assert got["root.service"] == ("protect", False,
                                   ("protect: xattr user.oomd_omit", "committed 410624 bytes in 1 procs"))
    assert got["user@1000.service"][:2] == ("normal", True)
    assert got["user@1000.service"][2][1] == "user.oomd_omit ignored: cgroup owned by uid 1000"
    assert got["pref.service"][:2] == ("normal", True)
    assert ranking["pref.service"].job.ignored_xattrs == ("user.oomd_prefer ignored: cgroup owned by uid 1000",)
    assert got["avoid.service"][:2] == ("avoid", True)
    # below the job only user.oomd_omit counts, and so only it is named
    assert got["holder.service"][:2] == ("normal", True)
    assert ranking["holder.service"].job.ignored_xattrs == (
        "user.oomd_omit of 'holder.service/app.scope' ignored: cgroup owned by uid 1000",)
    assert got["kept.service"][:3] == ("protect", False, (
        "holds protected 'kept.service/db.scope' (xattr user.oomd_omit)", "committed 834560 bytes in 2 procs"))
    assert got["plain.service"][:2] == ("normal", True) and ranking["plain.service"].job.ignored_xattrs == ()
    # where the reasons are shown: `oomkiller rank` and the JSON record
    from oomkiller.report import format_ranking
    from oomkiller.report import candidate_record
    note = "user.oomd_omit ignored: cgroup owned by uid 1000"
    assert note in format_ranking(rank(jobs, Policy(), 1 << 30))
    assert note in candidate_record(ranking["user@1000.service"])["reasons"]
    # the owner is only looked at where an xattr is set
    assert attrs.owner_reads == 6


def test_the_real_owner_reader(v2_tree, proc_tree):
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    d = v2_tree.cgroup("j")
    assert fs.owner_uid(str(d)) == os.stat(d).st_uid
    with pytest.raises(FileNotFoundError):
        fs.owner_uid(str(d / "gone"))


@pytest.fixture
def nest():
    """Makes ``depth`` nested cgroups below a folder, and removes them after
    the test: deeper than shutil.rmtree (pytest's cleanup) can recurse."""
    made: list[str] = []

    def make(base, depth: int) -> None:
        path = str(base)
        for _ in range(depth):
            path = os.path.join(path, "d")
            os.mkdir(path)
            made.append(path)
            with open(os.path.join(path, "cgroup.procs"), "w"):
                pass
    yield make
    for path in reversed(made):
        os.unlink(os.path.join(path, "cgroup.procs"))
        os.rmdir(path)


def test_a_job_deeper_than_the_recursion_limit_is_read_to_a_bound(proc_tree, v2_tree, nest):
    """A user may nest empty cgroups in their job a thousand deep: the
    listing reads 64 levels of it, says so, and lists every job."""
    proc_tree.proc(501, "deep", anon_kb=5, shmem_kb=0, swap_kb=0)
    proc_tree.proc(502, "victim", anon_kb=50, shmem_kb=0, swap_kb=0)
    deep = v2_tree.cgroup("evil", (501,))
    v2_tree.cgroup("victim", (502,))
    nest(deep, 1000)
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("*",))}
    assert sorted(jobs) == ["evil", "victim"]
    evil = jobs["evil"]
    assert evil.descendants == MAX_DEPTH and [p.pid for p in evil.procs] == [501]
    assert evil.notes == ("subtree deeper than 64 levels: not read below that",)
    ranked = {c.job.name: c for c in rank(list(jobs.values()), Policy(), 1 << 30).candidates}
    assert "subtree deeper than 64 levels: not read below that" in ranked["evil"].reasons
    assert ranked["victim"].killable and ranked["victim"].job.notes == ()
    # the other walks of a subtree are bounded the same way
    assert fs.subtree_pids(str(deep)) == [501]
    # and so is the walk for jobs, whatever the globs
    assert [j.name for j in fs.jobs(fs.resolve("host"), ("*.service",))] == []


def test_the_walk_is_bounded_in_cgroups_and_depth_and_follows_no_symlink(tmp_path):
    for i in range(4):
        os.mkdir(tmp_path / f"w{i}")
        for j in range(3):
            os.mkdir(tmp_path / f"w{i}" / f"x{j}")
    os.symlink(tmp_path / "w0", tmp_path / "w9")
    everything = list(walk_cgroups(str(tmp_path)))
    assert len(everything) == 16 and not any("w9" in p for p in everything)
    # children of a folder in sorted order, then into the first of them
    assert [os.path.relpath(p, tmp_path) for p in everything[:5]] == ["w0", "w1", "w2", "w3", "w0/x0"]
    cut: list[str] = []
    assert len(list(walk_cgroups(str(tmp_path), cut=cut, max_cgroups=6))) == 6
    assert cut == ["subtree of more than 6 cgroups: only the first 6 read"]
    cut = []
    assert len(list(walk_cgroups(str(tmp_path), cut=cut, max_depth=1))) == 4
    assert cut == ["subtree deeper than 1 levels: not read below that"]
    assert list(walk_cgroups(str(tmp_path / "gone"))) == []


def test_an_unexpected_error_in_one_job_does_not_lose_the_listing(proc_tree, v2_tree, monkeypatch, caplog):
    """A safety net: the job that cannot be read in full is kept with its
    own processes and says why; the others are listed; the log says it once."""
    for pid in (601, 602, 603):
        proc_tree.proc(pid, f"p{pid}", anon_kb=pid, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("a", (601,))
    v2_tree.cgroup("b", (602,))
    v2_tree.cgroup("b/inner", (603,))
    v2_tree.cgroup("c")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    real = fs.v2_of

    def v2_of(path, pids):
        if path.endswith(("/b", "/c")):
            raise ValueError("odd")
        return real(path, pids)
    monkeypatch.setattr(fs, "v2_of", v2_of)
    caplog.set_level("WARNING", logger="oomkiller")
    for _ in range(3):
        jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("*",))}
    assert sorted(jobs) == ["a", "b", "c"]
    assert [p.pid for p in jobs["b"].procs] == [602] and jobs["a"].notes == ()
    assert jobs["b"].notes == ("read in part: ValueError: odd; its subtree is not known",)
    assert jobs["c"].procs == ()
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and all("cannot be read in full (ValueError: odd)" in m for m in logged), logged
    # a job of which nothing can be read is left out, the others kept
    monkeypatch.setattr(fs, "_partial_job", lambda *a: None)
    assert sorted(j.name for j in fs.jobs(fs.resolve("host"), ("*",))) == ["a"]


def test_a_cgroup_a_user_made_below_a_job_does_not_protect_it(proc_tree, v2_tree):
    attrs = CgroupAttrs()
    proc_tree.proc(701, "user", anon_kb=70, shmem_kb=0, swap_kb=0)
    proc_tree.proc(702, "web", anon_kb=7, shmem_kb=0, swap_kb=0)
    attrs.set(v2_tree.cgroup("user-1000.slice", (701,)), 65534)
    attrs.set(v2_tree.cgroup("user-1000.slice/sshd.service"), 65534)
    attrs.set(v2_tree.cgroup("system.slice/sshd.service"), 0)
    v2_tree.cgroup("web", (702,))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    attrs.attach(fs)
    jobs = fs.jobs(fs.resolve("host"), ("*",))
    by = {j.name: j for j in jobs}
    assert by["user-1000.slice"].user_inner == (("user-1000.slice/sshd.service", 65534),)
    assert by["user-1000.slice"].inner == () and by["user-1000.slice"].descendants == 1
    ranking = rank(jobs, Policy(protect=("sshd.service",)), 1 << 30)
    assert [c.job.name for c in ranking.candidates if c.killable] == ["user-1000.slice", "web"]
    (sys_slice,) = [c for c in ranking.candidates if c.job.name == "system.slice"]
    assert sys_slice.reasons[0] == "holds protected 'system.slice/sshd.service'"


MOVED = "processes moved while being read: populated, scored by its charge"


def test_a_populated_job_read_empty_stays_killable_scored_by_its_charge(proc_tree, v2_tree):
    """Its owner moves a process between two of its cgroups: each
    cgroup.procs read missed it, but cgroup.events counts it."""
    proc_tree.proc(401, "quiet", anon_kb=12 << 10, shmem_kb=0, swap_kb=0)
    v2_tree.cgroup("quiet", (401,))
    v2_tree.cgroup("hopper", cgroup__events="populated 1\nfrozen 0\n",
                   memory__stat=f"anon {120 << 20}\n", memory__current=f"{120 << 20}\n")
    v2_tree.cgroup("hopper/a")
    v2_tree.cgroup("hopper/b")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("*",))}
    assert jobs["hopper"].populated and not jobs["hopper"].procs
    first = rank(list(jobs.values()), Policy(), 1 << 30).candidates[0]
    assert first.job.name == "hopper" and first.killable and first.score_bytes == 120 << 20
    assert MOVED in first.reasons and "empty" not in first.reasons


def test_a_job_the_kernel_counts_empty_is_empty(proc_tree, v2_tree):
    v2_tree.cgroup("gone", cgroup__events="populated 0\nfrozen 0\n")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    reads = []
    real = fs.subtree_pids
    fs.subtree_pids = lambda p: reads.append(p) or real(p)
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and reads == []        # the kernel's word: no re-read
    (c,) = rank([job], Policy(), 1 << 30).candidates
    assert not c.killable and "empty" in c.reasons


def test_v1_a_job_read_empty_is_read_again_until_two_reads_agree(proc_tree, v1_tree):
    """v1 has no cgroup.events: the subtree (two cgroups, for a process to
    be moved between) is read again, and a read that saw a process wins
    over those that did not."""
    proc_tree.proc(501, "hopper", anon_kb=5, shmem_kb=0, swap_kb=0)
    v1_tree.cgroup("hopper")
    v1_tree.cgroup("hopper/inner")
    fs = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    reads = iter([[], [501], [501], [501]])
    fs.subtree_pids = lambda p: next(reads)
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert job.populated and [p.pid for p in job.procs] == [501]
    assert next(reads) == [501]         # stopped once two reads agreed
    # empty in every read: empty, after MEMBER_READS reads in all
    count = []
    fs.subtree_pids = lambda p: count.append(p) or []
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and not job.procs and len(count) == MEMBER_READS - 1
    # seen once among empty reads: populated
    reads = iter([[], [], [501], []])
    fs.subtree_pids = lambda p: next(reads)
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert job.populated and [p.pid for p in job.procs] == [501]


def test_v1_an_empty_leaf_is_read_once_more_and_a_read_that_saw_a_process_wins(proc_tree, v1_tree):
    """A job of one cgroup has no other for a process to be moved to
    between reads: read once more, not MEMBER_READS times (a domain's
    exited jobs are such leaves, and their reads held the loop)."""
    proc_tree.proc(501, "hopper", anon_kb=5, shmem_kb=0, swap_kb=0)
    v1_tree.cgroup("hopper")
    fs = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    count = []
    fs.subtree_pids = lambda p: count.append(p) or []
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and not job.procs and len(count) == LEAF_READS - 1 < MEMBER_READS - 1
    # a process seen in the read again: populated
    fs.subtree_pids = lambda p: [501]
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert job.populated and [p.pid for p in job.procs] == [501]
    # a child made since: no longer a leaf, read up to MEMBER_READS times
    v1_tree.cgroup("hopper/inner")
    count.clear()
    fs.subtree_pids = lambda p: count.append(p) or []
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and len(count) == MEMBER_READS - 1


def test_v1_a_leaf_that_gains_a_child_or_holds_anonymous_memory_is_read_in_full(proc_tree, v1_tree):
    """The leaf's shortcut is taken only while it is still a leaf right
    before and right after its read again, and never for a leaf charged
    with anonymous memory: its process may be moved back and forth between
    it and a sibling job (each job read alone), which only many reads
    catch."""
    proc_tree.proc(501, "hopper", anon_kb=5, shmem_kb=0, swap_kb=0)
    leaf = v1_tree.cgroup("hopper")
    fs = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    count = []
    # a child made after the listing looked, before the read again
    made = []
    fs.v2_mirror = lambda p: made.append(os.mkdir(os.path.join(p, "c1"))) and None
    fs.subtree_pids = lambda p: count.append(p) or []
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert made and not job.populated and len(count) == MEMBER_READS - 1
    os.rmdir(os.path.join(leaf, "c1"))
    # ... or during it
    count.clear()
    fs.v2_mirror = lambda p: None
    fs.subtree_pids = lambda p: (len(count) == 0 and os.mkdir(os.path.join(p, "c2"))) or count.append(p) or []
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and len(count) == (LEAF_READS - 1) + (MEMBER_READS - 1)
    os.rmdir(os.path.join(leaf, "c2"))
    # a leaf charged with 8 MiB of anonymous memory: the suspect's reads
    count.clear()
    fs.subtree_pids = lambda p: count.append(p) or []
    (leaf / "memory.usage_in_bytes").write_text(f"{8 << 20}\n")
    (leaf / "memory.stat").write_text(f"total_rss {8 << 20}\ntotal_cache 0\n")
    (job,) = fs.jobs(fs.resolve("host"), ("*",))
    assert not job.populated and len(count) == MEMBER_READS_SUSPECT - 1


def test_one_listing_reads_a_bounded_number_of_cgroups_below_jobs(proc_tree, v2_tree, monkeypatch):
    import oomkiller.cgroupfs as cgroupfs_mod
    monkeypatch.setattr(cgroupfs_mod, "MAX_LISTING_CGROUPS", 30)
    for i, name in enumerate(("a.scope", "b.scope", "c.scope")):
        proc_tree.proc(600 + i, name, anon_kb=10 + i, shmem_kb=0, swap_kb=0)
        v2_tree.cgroup(name, (600 + i,))
        for k in range(20):
            v2_tree.cgroup(f"{name}/sub{k}")
    v2_tree.cgroup("c.scope/sub3", (610,))
    proc_tree.proc(610, "hidden", anon_kb=99, shmem_kb=0, swap_kb=0)
    (v2_tree.root / "c.scope" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("auto",))}
    assert jobs["a.scope"].descendants == 20 and jobs["b.scope"].descendants == 10
    c = jobs["c.scope"]
    assert c.descendants == 0 and [p.pid for p in c.procs] == [602] and c.populated
    assert c.notes == ("its subtree is not read: this listing read 30 cgroups below jobs already "
                       "(its charge and cgroup.kill still cover it)",)


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_parent_in_a_cgroup_namespace_is_the_top_of_its_view(tmp_path, proc_tree, v2):
    # A container runtime rooting the pod's cgroup namespace at the pod's
    # cgroup: the sidecar reads its own cgroup as /sidecar, and the top of
    # the tree it mounts is the pod's cgroup, not the hierarchy's root.
    tree = CgroupTree(tmp_path / "cg", v2=v2)
    me = os.getpid()
    proc_tree.proc(me, "oomkiller", anon_kb=1, shmem_kb=0, swap_kb=0,
                   cgroup="4:memory:/sidecar\n0::/sidecar\n")
    tree.cgroup("sidecar", (me,))
    tree.cgroup("app", (me + 1,))
    fs = Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))
    # the hierarchy's own root (v2: no cgroup.type; v1: a release_agent) is
    # still refused ...
    if not v2:
        (tree.mem / "release_agent").write_text("")
    with pytest.raises(FileNotFoundError, match="the root cgroup: use 'host'"):
        fs.resolve("parent")
    # ... and the top of a namespace's view is a domain
    if v2:
        (tree.mem / "cgroup.type").write_text("domain\n")
    else:
        (tree.mem / "release_agent").unlink()
    assert fs.resolve("parent") == str(tree.mem)
    assert fs.relative(fs.resolve("parent")) == "/"


def test_parent_says_why_when_the_pod_is_out_of_sight(tmp_path, proc_tree, v2_tree):
    me = os.getpid()
    proc_tree.proc(me, "oomkiller", anon_kb=1, shmem_kb=0, swap_kb=0, cgroup="0::/\n")
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    # nothing in the tree holds the daemon
    with pytest.raises(FileNotFoundError, match=f"no cgroup there lists its pid {me}"):
        fs.resolve("parent")
    # a namespace that starts at the daemon's own cgroup, its view mounted
    (v2_tree.root / "cgroup.type").write_text("domain\n")
    (v2_tree.root / "cgroup.procs").write_text(f"{me}\n")
    with pytest.raises(FileNotFoundError, match="top of the cgroup tree it sees"):
        fs.resolve("parent")


def test_parent_in_the_hosts_tree_seen_from_a_namespace_of_its_own(tmp_path, proc_tree, v2_tree):
    # Kubernetes: each container's cgroup namespace starts at its own
    # cgroup, so the sidecar reads its cgroup as / while the tree mounted is
    # the host's: the cgroup listing its pid is its own.
    me = os.getpid()
    proc_tree.proc(me, "oomkiller", anon_kb=1, shmem_kb=0, swap_kb=0, cgroup="0::/\n")
    pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice"
    v2_tree.cgroup(pod + "/cri-containerd-app.scope", (me + 1,))
    v2_tree.cgroup(pod + "/cri-containerd-sidecar.scope", (me,))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    assert fs.resolve("parent") == str(v2_tree.root / pod)
    assert fs.keep_out((me,)) == (str(v2_tree.root / pod / "cri-containerd-sidecar.scope"),)


def test_parent_steps_over_cruns_subgroup_in_a_containers_scope(tmp_path, proc_tree, v2_tree):
    # crun with the systemd driver on v2 (podman, CRI-O on crun) puts a
    # container's processes in <scope>/container: the pod is above the scope.
    me = os.getpid()
    proc_tree.proc(me, "oomkiller", anon_kb=1, shmem_kb=0, swap_kb=0, cgroup="0::/\n")
    pod = "machine.slice/machine-libpod_pod_ab12.slice"
    v2_tree.cgroup(pod + "/libpod-app.scope/container", (me + 1,))
    v2_tree.cgroup(pod + "/libpod-sidecar.scope/container", (me,))
    fs = Cgroupfs(str(v2_tree.root), Procfs(str(proc_tree.root)))
    assert fs.resolve("parent") == str(v2_tree.root / pod)
    # a cgroup named "container" that is not in a scope is the container's own
    v2_tree.cgroup("box/container", ())
    (v2_tree.root / pod / "libpod-sidecar.scope/container/cgroup.procs").write_text("")
    (v2_tree.root / "box/container/cgroup.procs").write_text(f"{me}\n")
    assert fs.resolve("parent") == str(v2_tree.root / "box")
