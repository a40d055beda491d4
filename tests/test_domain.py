import errno
import os
import shutil

import pytest

import oomkiller.files as files_mod
from oomkiller.cgroupfs import MAX_DEPTH, STAT_LAG_SLACK_BYTES, Cgroupfs, stat_lag_bytes
from oomkiller.domain import Domain, DomainGone, reclaimable_bytes
from oomkiller.procfs import Procfs

from trees import CgroupTree

MiB = 1 << 20


def _domain(proc_tree, tree, spec):
    procfs = Procfs(str(proc_tree.root))
    return Domain(spec, procfs, Cgroupfs(str(tree.root), procfs))


def test_reclaimable_counts_the_file_cache_dirty_pages_included():
    # all of inactive_file, half of active_file; dirty and writeback pages are
    # among them and count (reclaim writes them; a kill would not free them)
    assert reclaimable_bytes({"inactive_file": 1000, "active_file": 600, "dirty": 70, "writeback": 30}) == 1300
    assert reclaimable_bytes({"inactive_file": 10, "dirty": 50}) == 10
    assert reclaimable_bytes({"anon": 12345}) == 0


def test_a_charge_the_statistics_do_not_show_yet_is_their_lag(proc_tree, v1_tree):
    """Seen on a 6.18 host: a v1 domain's memory.stat showed no cache at all
    while usage_in_bytes showed a stream's 255 MiB of it (the kernel sums
    the statistics up to 2 s late). The snapshot says how much it lacks."""
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v1_tree.cgroup("stream", memory__limit_in_bytes=f"{256 * MiB}\n", memory__usage_in_bytes=f"{255 * MiB}\n",
                   memory__stat=(f"hierarchical_memory_limit {256 * MiB}\ntotal_cache 0\ntotal_rss {MiB}\n"
                                 "total_inactive_file 0\ntotal_active_file 0\n"))
    s = _domain(proc_tree, v1_tree, "stream").snapshot(0)
    assert s.free_bytes == MiB and s.stat_lag_bytes == 254 * MiB
    # caught up: nothing lags, and the cache is free memory again
    v1_tree.cgroup("stream", memory__stat=(f"hierarchical_memory_limit {256 * MiB}\ntotal_cache {254 * MiB}\n"
                                           f"total_rss {MiB}\ntotal_inactive_file {254 * MiB}\n"
                                           "total_active_file 0\n"))
    s = _domain(proc_tree, v1_tree, "stream").snapshot(1)
    assert s.stat_lag_bytes == 0 and s.free_bytes == 255 * MiB


def _hog_and_cat(proc_tree, v1_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(4101, "hog", anon_kb=150 << 10, shmem_kb=0, swap_kb=0)
    proc_tree.proc(4102, "cat", anon_kb=1 << 10, shmem_kb=0, swap_kb=0, file_kb=200 << 10)
    proc_tree.proc(4103, "elsewhere", anon_kb=500 << 10, shmem_kb=0, swap_kb=0)
    v1_tree.cgroup("arena", (4102,), memory__limit_in_bytes=f"{256 * MiB}\n", memory__usage_in_bytes=f"{MiB}\n",
                   memory__stat="total_cache 0\ntotal_rss 0\n")
    v1_tree.cgroup("arena/hog", (4101,))
    return _domain(proc_tree, v1_tree, "arena")


def test_a_lag_is_a_hogs_when_the_processes_map_more_than_the_statistics_name(proc_tree, v1_tree):
    d = _hog_and_cat(proc_tree, v1_tree)
    assert d.snapshot(0).stat_anon_bytes == 0
    # 151 MiB mapped, 0 named: a hog's; 151 MiB named: none of it is anonymous
    assert d.lag_is_anon(0, 16 * MiB) is True
    assert d.lag_is_anon(151 * MiB, 16 * MiB) is False
    assert d.lag_is_anon(140 * MiB, 16 * MiB) is False          # within the slack
    # the host's domain: its memory.stat does not lag, nothing to count
    assert Domain("host", d.procfs, d.cgroupfs).lag_is_anon(0, 16 * MiB) is None


def test_a_subtree_it_cannot_read_whole_is_unknown_never_a_part(proc_tree, v1_tree):
    # a hog kept below a bound would go uncounted
    d = _hog_and_cat(proc_tree, v1_tree)
    v1_tree.cgroup("arena/hog/a")
    assert d.cgroupfs.subtree_pids_within(d.path, 1, 100) is None
    assert d.cgroupfs.subtree_pids_within(d.path, 2, 1) is None
    assert sorted(d.cgroupfs.subtree_pids_within(d.path, 2, 2)) == [4101, 4102]
    deep = v1_tree.mem / "arena" / "hog"
    for _ in range(MAX_DEPTH + 1):
        deep = deep / "d"
        deep.mkdir()
    assert d.lag_is_anon(151 * MiB, 16 * MiB) is None


def test_a_process_that_came_while_they_were_counted_is_counted(proc_tree, v1_tree, monkeypatch):
    # a hog forked and its parent exited, or it moved to a cgroup read already
    d = _hog_and_cat(proc_tree, v1_tree)
    reads = iter([[4102], [4102, 4101]])
    monkeypatch.setattr(d.cgroupfs, "subtree_pids_within", lambda *a: next(reads))
    assert d.lag_is_anon(MiB, 16 * MiB) is True
    # ... and gone again before its statm was read: unknown
    reads = iter([[4102], [4102, 4199]])
    assert d.lag_is_anon(MiB, 16 * MiB) is None


def test_shmem_or_kernel_memory_growing_on_the_host_leaves_the_lag_unknown(proc_tree, v1_tree):
    # a tmpfs writer's charge lags as page cache does, and no statm shows it
    # as anonymous: but reclaim cannot drop it
    d = _hog_and_cat(proc_tree, v1_tree)
    meminfo = proc_tree.root / "meminfo"
    base = meminfo.read_text()
    meminfo.write_text(base + "Shmem:     1000 kB\nSUnreclaim:  2000 kB\n")
    d.snapshot(0)
    assert d.lag_is_anon(151 * MiB, 16 * MiB) is False
    meminfo.write_text(base + f"Shmem:     {1000 + (100 << 10)} kB\nSUnreclaim:  2000 kB\n")
    d.snapshot(1_000_000)
    assert d.pinned_growth_bytes() == 100 * MiB and d.lag_is_anon(151 * MiB, 16 * MiB) is None
    # the growth is judged over the last 2.5 s
    d.snapshot(3_000_000)
    d.snapshot(4_000_000)
    assert d.pinned_growth_bytes() == 0 and d.lag_is_anon(151 * MiB, 16 * MiB) is False


def test_the_lag_counts_what_v2_names_and_not_a_slack():
    v2 = {"anon": 100 * MiB, "file": 50 * MiB, "kernel": 20 * MiB, "sock": MiB, "zswap": 0}
    assert stat_lag_bytes(171 * MiB, v2, 256 * MiB) == 0
    assert stat_lag_bytes(171 * MiB + STAT_LAG_SLACK_BYTES, v2, 256 * MiB) == 0     # within the slack
    assert stat_lag_bytes(300 * MiB, v2, 1 << 40) == 0                            # a 64th of a big limit
    assert stat_lag_bytes(250 * MiB, v2, 256 * MiB) == 79 * MiB
    # an older kernel without "kernel": its parts
    old = {"anon": 100 * MiB, "file": 50 * MiB, "slab": 10 * MiB, "kernel_stack": MiB, "pagetables": MiB}
    assert stat_lag_bytes(162 * MiB, old, 256 * MiB) == 0
    # statistics that cannot tell, and a stat that shows more than the usage
    assert stat_lag_bytes(250 * MiB, {"inactive_file": 0}, 256 * MiB) == 0
    assert stat_lag_bytes(MiB, {"rss": 100 * MiB, "cache": 0}, 256 * MiB) == 0


def test_a_cgroup_full_of_dirty_cache_is_not_short(proc_tree, v1_tree):
    """A build-like writer in a v1 memcg (measured: 240 of 256 MiB dirty or
    under writeback) has nearly all its memory to give back."""
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v1_tree.cgroup("build", memory__limit_in_bytes=f"{256 * MiB}\n", memory__usage_in_bytes=f"{255 * MiB}\n",
                   memory__stat=(f"hierarchical_memory_limit {256 * MiB}\ntotal_inactive_file {204 * MiB}\n"
                                 f"total_active_file {34 * MiB}\ntotal_dirty {174 * MiB}\n"
                                 f"total_writeback {64 * MiB}\ntotal_rss {8 * MiB}\ndirty 0\nwriteback 0\n"))
    s = _domain(proc_tree, v1_tree, "build").snapshot(0)
    assert s.reclaimable_bytes == (204 + 17) * MiB
    assert s.free_bytes == 256 * MiB - (255 - 221) * MiB
    # and the snapshot says how much of it waits for the disk (core/detect.py)
    assert s.dirty_bytes == (174 + 64) * MiB


def test_dirty_pages_of_v2_cgroups_and_of_the_host(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=8 << 20, available_kb=6 << 20)
    v2_tree.cgroup("box", memory__max=f"{64 * MiB}\n", memory__current=f"{MiB}\n",
                   memory__stat="anon 1\nfile_dirty 3000\nfile_writeback 1000\n")
    assert _domain(proc_tree, v2_tree, "box").snapshot(1).dirty_bytes == 4000
    # a kernel whose memory.stat has no file_dirty: none dirty, which holds nothing
    v2_tree.cgroup("old", memory__max=f"{64 * MiB}\n", memory__current=f"{MiB}\n", memory__stat="anon 1\n")
    assert _domain(proc_tree, v2_tree, "old").snapshot(1).dirty_bytes == 0
    # no Dirty line (a fake or an odd kernel): unknown, which holds nothing
    assert _domain(proc_tree, v2_tree, "host").snapshot(1).dirty_bytes == -1
    with open(proc_tree.root / "meminfo", "a") as f:
        f.write("Dirty:            2048 kB\nWriteback:         1024 kB\n")
    assert _domain(proc_tree, v2_tree, "host").snapshot(1).dirty_bytes == 3 << 20


def test_host_domain(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=8265625, available_kb=6057779)
    s = _domain(proc_tree, v2_tree, "host").snapshot(17)
    assert (s.domain, s.total_bytes, s.free_bytes, s.taken_usec) == ("host", 8265625 * 1024, 6057779 * 1024, 17)
    assert s.used_bytes == (8265625 - 6057779) * 1024


def test_v1_cgroup_domain(proc_tree, v1_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v1_tree.cgroup("arena", memory__limit_in_bytes=f"{256 * MiB}\n",
                   memory__usage_in_bytes=f"{200 * MiB}\n",
                   memory__stat=(f"cache 999\ninactive_file 1\nhierarchical_memory_limit {256 * MiB}\n"
                                 f"total_inactive_file {30 * MiB}\ntotal_active_file {20 * MiB}\n"
                                 f"total_dirty {3 * MiB}\ntotal_writeback {2 * MiB}\ntotal_rss {150 * MiB}\n"))
    s = _domain(proc_tree, v1_tree, "arena").snapshot(5)
    rec = (30 + 10) * MiB
    assert (s.total_bytes, s.used_bytes, s.reclaimable_bytes) == (256 * MiB, 200 * MiB, rec)
    assert s.free_bytes == 256 * MiB - (200 * MiB - rec)
    assert s.domain == "/arena"


def test_v1_unlimited_cgroup_uses_memtotal(proc_tree, v1_tree):
    proc_tree.meminfo(total_kb=4 << 20, available_kb=3 << 20)
    v1_tree.cgroup("free", memory__limit_in_bytes=f"{(1 << 63) - 4096}\n", memory__usage_in_bytes=f"{MiB}\n",
                   memory__stat=f"hierarchical_memory_limit {(1 << 63) - 4096}\ntotal_inactive_file 0\n")
    s = _domain(proc_tree, v1_tree, "free").snapshot(0)
    assert s.total_bytes == 4 << 30
    assert s.free_bytes == 3 << 30      # capped by the host's MemAvailable


def test_v2_cgroup_domain_tightest_limit(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v2_tree.cgroup("outer", memory__max=f"{512 * MiB}\n", memory__current=f"{300 * MiB}\n", memory__stat="")
    v2_tree.cgroup("outer/inner", memory__max="max\n", memory__current=f"{100 * MiB}\n",
                   memory__stat=(f"anon {80 * MiB}\nfile {20 * MiB}\ninactive_file {12 * MiB}\n"
                                 f"active_file {6 * MiB}\nfile_dirty {MiB}\nfile_writeback 0\n"))
    s = _domain(proc_tree, v2_tree, "outer/inner").snapshot(0)
    rec = (12 + 3) * MiB
    assert (s.total_bytes, s.used_bytes, s.reclaimable_bytes) == (512 * MiB, 100 * MiB, rec)
    assert s.free_bytes == 512 * MiB - (100 * MiB - rec)


def test_domain_must_be_a_cgroup(proc_tree, v2_tree):
    with pytest.raises(FileNotFoundError, match="not a cgroup folder"):
        _domain(proc_tree, v2_tree, "nope")


def test_hybrid_v2_counterpart_and_pressure(proc_tree, v1_tree):
    unified = v1_tree.root / "unified"
    (unified / "arena" / "svc").mkdir(parents=True)
    (unified / "arena" / "hog").mkdir()
    (unified / "cgroup.controllers").write_text("")
    for rel, procs in (("arena", ""), ("arena/svc", "501\n"), ("arena/hog", "")):
        (unified / rel / "cgroup.procs").write_text(procs)
    (unified / "arena" / "memory.pressure").write_text(
        "some avg10=1.00 avg60=0.50 avg300=0.10 total=987654\nfull avg10=0.50 avg60=0.20 avg300=0.05 total=123457\n")
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(501, "svc", anon_kb=10, shmem_kb=0, swap_kb=0,
                   cgroup="4:memory:/outer/self/arena/svc\n0::/arena/svc\n")
    v1_tree.cgroup("outer/self/arena", memory__limit_in_bytes=f"{64 * MiB}\n", memory__usage_in_bytes=f"{MiB}\n",
                   memory__stat=f"hierarchical_memory_limit {64 * MiB}\ntotal_inactive_file 0\n")
    v1_tree.cgroup("outer/self/arena/svc", (501,))
    d = _domain(proc_tree, v1_tree, "outer/self/arena")
    # one job left: its own v2 cgroup is not the domain's; the tail of the v1 path is
    assert d.cgroupfs.v2_counterpart(d.path) == str(unified / "arena")
    assert d.pressure_path == str(unified / "arena" / "memory.pressure")
    assert d.snapshot(1).full_stall_usec == 123457
    # the I/O stall beside it: unknown until the file is there
    assert d.snapshot(1).io_some_stall_usec == -1
    (unified / "arena" / "io.pressure").write_text(
        "some avg10=50.00 avg60=20.00 avg300=5.00 total=4444444\nfull avg10=40.00 avg60=0 avg300=0 total=3333\n")
    assert d.snapshot(2).io_some_stall_usec == 4444444
    (unified / "arena" / "io.pressure").write_text("garbage\n")
    assert d.snapshot(3).io_some_stall_usec == -1
    hog_id = (unified / "arena" / "hog").stat().st_ino
    assert d.holds(9999, hog_id)            # the victim is gone; the invoker's cgroup is ours
    assert d.holds(501, 0)                  # the victim still shows as a member
    assert not d.holds(9999, 1)


def test_hybrid_v2_cgroup_holding_others_is_not_the_jobs(proc_tree, v1_tree):
    # Slurm-like: every task of two v1 jobs sits in one v2 service cgroup
    unified = v1_tree.root / "unified"
    (unified / "slurmd.service").mkdir(parents=True)
    (unified / "cgroup.controllers").write_text("")
    (unified / "slurmd.service" / "cgroup.procs").write_text("601\n602\n603\n")
    for pid in (601, 602, 603):
        proc_tree.proc(pid, f"t{pid}", anon_kb=pid, shmem_kb=0, swap_kb=0,
                       cgroup=f"4:memory:/slurm/job_{pid}\n0::/slurmd.service\n")
    v1_tree.cgroup("slurm/job_601", (601,))
    v1_tree.cgroup("slurm/job_602", (602,))
    fs = Cgroupfs(str(v1_tree.root), Procfs(str(proc_tree.root)))
    assert fs.v2_of(str(v1_tree.mem / "slurm/job_601"), [601]) is None
    assert fs.v2_of(str(v1_tree.mem / "slurm"), [601, 602, 603]) == str(unified / "slurmd.service")


@pytest.mark.parametrize("v2", [False, True])
def test_a_removed_domain_raises_domain_gone_until_it_is_back(proc_tree, tmp_path, v2):
    tree = CgroupTree(tmp_path / "cgroup", v2=v2)
    proc_tree.meminfo(total_kb=4 << 20, available_kb=3 << 20)
    files = ({"memory__max": f"{64 * MiB}\n", "memory__current": f"{MiB}\n"} if v2 else
             {"memory__limit_in_bytes": f"{64 * MiB}\n", "memory__usage_in_bytes": f"{MiB}\n"})

    def make():
        return tree.cgroup("pod", memory__stat="total_inactive_file 0\n", **files)
    path = make()
    d = _domain(proc_tree, tree, "pod")
    assert d.exists() and d.snapshot(1).total_bytes == 64 * MiB
    shutil.rmtree(path)
    assert not d.exists()
    with pytest.raises(DomainGone, match=f"^domain cgroup {path} is gone") as info:
        d.snapshot(2)
    assert info.value.errno == errno.ENOENT and info.value.path == str(path)
    assert isinstance(info.value, OSError) and "\n" not in str(info.value)
    path.write_text("")                         # replaced by a file
    assert not d.exists()
    with pytest.raises(DomainGone):
        d.snapshot(3)
    path.unlink()
    make()
    assert d.exists() and d.snapshot(4).total_bytes == 64 * MiB


def test_enodev_from_the_domain_is_domain_gone(proc_tree, v1_tree, monkeypatch):
    proc_tree.meminfo(total_kb=4 << 20, available_kb=3 << 20)
    v1_tree.cgroup("pod", memory__stat="total_inactive_file 0\n", memory__usage_in_bytes="1\n",
                   memory__limit_in_bytes=f"{64 * MiB}\n")
    d = _domain(proc_tree, v1_tree, "pod")
    real_open = open

    def enodev(path, *a, **kw):
        if str(path).startswith(d.path + "/"):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), path)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(files_mod, "open", enodev, raising=False)
    with pytest.raises(DomainGone, match=r"is gone \(No such device\)") as info:
        d.snapshot(0)
    assert info.value.errno == errno.ENODEV


def test_the_host_domain_always_exists(proc_tree, v2_tree):
    assert _domain(proc_tree, v2_tree, "host").exists()


def test_a_kernel_kill_outside_the_domain_is_one_read(proc_tree, v1_tree, monkeypatch):
    """Domain.holds runs for every kernel OOM kill on the host: a victim
    outside the domain costs one read of its /proc/PID/cgroup; the domain's
    v2 cgroups are looked for again only every few seconds."""
    import oomkiller.domain as domain_mod
    unified = v1_tree.root / "unified"
    (unified / "arena" / "svc").mkdir(parents=True)
    (unified / "cgroup.controllers").write_text("")
    for rel, procs in (("arena", ""), ("arena/svc", "501\n")):
        (unified / rel / "cgroup.procs").write_text(procs)
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(501, "svc", anon_kb=10, shmem_kb=0, swap_kb=0, cgroup="4:memory:/arena/svc\n0::/arena/svc\n")
    proc_tree.proc(502, "far", anon_kb=10, shmem_kb=0, swap_kb=0, cgroup="4:memory:/else\n0::/else\n")
    proc_tree.proc(503, "v2", anon_kb=10, shmem_kb=0, swap_kb=0, cgroup="4:memory:/else\n0::/arena/svc/x\n")
    v1_tree.cgroup("arena", memory__limit_in_bytes=f"{64 * MiB}\n")
    v1_tree.cgroup("arena/svc", (501,))
    v1_tree.cgroup("arenax", memory__limit_in_bytes=f"{64 * MiB}\n")
    d = _domain(proc_tree, v1_tree, "arena")
    svc_id = (unified / "arena" / "svc").stat().st_ino
    real_open = open
    opened: list[str] = []

    def count(path, *a, **kw):
        opened.append(os.fspath(path))
        return real_open(path, *a, **kw)
    assert d.holds(502, svc_id) and d.holds(501, 0) and d.holds(503, 0)
    monkeypatch.setattr(files_mod, "open", count, raising=False)
    for _ in range(20):
        assert not d.holds(502, 1)
    assert opened == [str(proc_tree.root / "502" / "cgroup")] * 20
    # a sibling whose name starts alike is not the domain
    proc_tree.proc(504, "sib", anon_kb=1, shmem_kb=0, swap_kb=0, cgroup="4:memory:/arenax\n0::/arenax\n")
    assert not d.holds(504, 0)
    # the cache is refreshed once it is old
    opened.clear()
    monkeypatch.setattr(domain_mod.time, "monotonic", lambda: 1e12)
    assert not d.holds(502, 1)
    assert len(opened) > 1


def test_an_empty_hybrid_domain_finds_its_pressure_file_by_path(proc_tree, v1_tree):
    """No process to find the v2 cgroup through: the one at the same path."""
    unified = v1_tree.root / "unified"
    (unified / "arena").mkdir(parents=True)
    (unified / "cgroup.controllers").write_text("")
    (unified / "arena" / "cgroup.procs").write_text("")
    (unified / "arena" / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    (unified / "arena" / "memory.pressure").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=4321\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n")
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v1_tree.cgroup("outer/self/arena", memory__limit_in_bytes=f"{64 * MiB}\n", memory__usage_in_bytes=f"{MiB}\n",
                   memory__stat=(f"hierarchical_memory_limit {64 * MiB}\nworkingset_refault_file 7\n"
                                 f"total_workingset_refault_file 98765\ntotal_inactive_file {3 * MiB}\n"
                                 f"total_active_file {5 * MiB}\n"))
    d = _domain(proc_tree, v1_tree, "outer/self/arena")
    assert d.cgroupfs.v2_counterpart(d.path) is None
    assert d.pressure_path == str(unified / "arena" / "memory.pressure")
    s = d.snapshot(1)
    assert (s.some_stall_usec, s.full_stall_usec) == (4321, 1234)
    assert (s.refault_file_pages, s.file_lru_bytes) == (98765, 8 * MiB)
    # v1 counts no activations: the host's share stands in, once readable
    assert (s.activate_file_pages, s.activate_of_pages, s.activations_host) == (-1, -1, True)
    (proc_tree.root / "vmstat").write_text("workingset_refault_file 5000\nworkingset_activate_file 120\n")
    s = _domain(proc_tree, v1_tree, "outer/self/arena").snapshot(2)
    assert (s.refault_file_pages, s.activate_file_pages, s.activate_of_pages) == (98765, 120, 5000)
    assert s.activations_host


def test_activations_of_a_v2_domain_and_of_the_host(proc_tree, v2_tree):
    from oomkiller.domain import activated_pages
    assert activated_pages({"workingset_activate_file": 5, "workingset_activate_anon": 9}) == 5
    assert activated_pages({"workingset_activate": 6}) == 6          # before 5.9
    assert activated_pages({"workingset_refault_file": 1}) == -1
    proc_tree.meminfo(total_kb=8 << 20, available_kb=6 << 20)
    v2_tree.cgroup("box", memory__max=f"{64 * MiB}\n", memory__current=f"{MiB}\n",
                   memory__stat="anon 1\nactive_file 4096\ninactive_file 4096\nworkingset_refault_file 900\n"
                                "workingset_activate_file 27\n")
    s = _domain(proc_tree, v2_tree, "box").snapshot(2)
    assert (s.refault_file_pages, s.activate_file_pages, s.activate_of_pages) == (900, 27, 900)
    assert not s.activations_host
    (proc_tree.root / "vmstat").write_text("nr_free_pages 1\nworkingset_refault_file 5000\n"
                                           "workingset_activate_file 120\nworkingset_restore_file 7\n")
    s = _domain(proc_tree, v2_tree, "host").snapshot(3)
    assert (s.refault_file_pages, s.activate_file_pages, s.activate_of_pages) == (5000, 120, 5000)
    assert not s.activations_host


def test_refault_figures_of_v2_and_old_kernels_and_the_host(proc_tree, v2_tree):
    from oomkiller.domain import refault_figures
    assert refault_figures({"workingset_refault_file": 5, "active_file": 3, "inactive_file": 4}) == (5, 7)
    assert refault_figures({"workingset_refault": 6, "active_file": 3, "inactive_file": 4}) == (6, 7)
    assert refault_figures({"anon": 1}) == (-1, -1)
    proc_tree.meminfo(total_kb=8 << 20, available_kb=6 << 20)
    s = _domain(proc_tree, v2_tree, "host").snapshot(3)
    assert (s.refault_file_pages, s.file_lru_bytes) == (-1, -1)    # no vmstat, no file LRU lines here


# -- swap ------------------------------------------------------------------------

def _swap_domain(proc_tree, tree, spec, count_swap=True):
    procfs = Procfs(str(proc_tree.root))
    return Domain(spec, procfs, Cgroupfs(str(tree.root), procfs), count_swap=count_swap)


def test_a_laptop_swapping_has_memory_to_give(proc_tree, v2_tree):
    """8 GiB of RAM at 3% available, 8 GiB of swap with 7 free: no redline
    of 5% is crossed while swap has room; off, RAM alone."""
    avail = ((8 << 20) * 3 // 100) << 10
    proc_tree.meminfo(total_kb=8 << 20, available_kb=avail >> 10, swap_total_kb=8 << 20, swap_free_kb=7 << 20)
    s = _swap_domain(proc_tree, v2_tree, "host").snapshot(0)
    assert s.total_bytes == 16 << 30 and s.swap_total_bytes == 8 << 30
    assert s.free_bytes == avail + (7 << 30) and s.swap_free_bytes == 7 << 30
    assert (s.ram_total_bytes, s.ram_free_bytes) == (8 << 30, avail)
    assert s.used_bytes == (8 << 30) - avail + (1 << 30)
    assert s.free_bytes > s.total_bytes * 5 // 100
    off = _swap_domain(proc_tree, v2_tree, "host", count_swap=False).snapshot(0)
    assert (off.total_bytes, off.free_bytes, off.swap_total_bytes) == (8 << 30, avail, 0)


def test_no_swap_is_the_same_as_before(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=4 << 20, available_kb=1 << 20)
    s = _swap_domain(proc_tree, v2_tree, "host").snapshot(0)
    assert (s.total_bytes, s.free_bytes, s.swap_total_bytes, s.swap_free_bytes) == (4 << 30, 1 << 30, 0, 0)


def test_v2_cgroup_swap_room_is_its_own_limit_and_never_more_than_the_host_has(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=4 << 20, swap_free_kb=3 << 20)
    v2_tree.cgroup("outer", memory__max=f"{512 * MiB}\n", memory__current=f"{500 * MiB}\n", memory__stat="",
                   memory__swap__max=f"{256 * MiB}\n", memory__swap__current=f"{200 * MiB}\n")
    v2_tree.cgroup("outer/inner", memory__max="max\n", memory__current=f"{500 * MiB}\n",
                   memory__stat=f"anon {500 * MiB}\ninactive_file 0\nactive_file 0\n",
                   memory__swap__max="max\n", memory__swap__current=f"{200 * MiB}\n")
    s = _swap_domain(proc_tree, v2_tree, "outer/inner").snapshot(0)
    # the tightest swap.max on the way up (256M), less what it uses (200M)
    assert (s.swap_total_bytes, s.swap_free_bytes) == (256 * MiB, 56 * MiB)
    assert s.total_bytes == 768 * MiB and s.free_bytes == 12 * MiB + 56 * MiB
    assert s.used_bytes == 700 * MiB
    # the host's swap nearly full: its room binds
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=4 << 20, swap_free_kb=10 << 10)
    s = _swap_domain(proc_tree, v2_tree, "outer/inner").snapshot(0)
    assert s.swap_free_bytes == 10 * MiB
    # memory.swap.max 0: no swap for it at all
    (v2_tree.root / "outer" / "memory.swap.max").write_text("0\n")
    s = _swap_domain(proc_tree, v2_tree, "outer/inner").snapshot(0)
    assert (s.swap_total_bytes, s.swap_free_bytes, s.total_bytes, s.free_bytes) == (0, 0, 512 * MiB, 12 * MiB)


def test_v2_cgroup_without_swap_accounting_goes_by_the_hosts_swap(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=2 << 20, swap_free_kb=1 << 20)
    v2_tree.cgroup("box", memory__max=f"{512 * MiB}\n", memory__current=f"{500 * MiB}\n",
                   memory__stat=f"anon {500 * MiB}\n")
    s = _swap_domain(proc_tree, v2_tree, "box").snapshot(0)
    assert (s.swap_total_bytes, s.swap_free_bytes) == (2 << 30, 1 << 30)


def test_v1_cgroup_swap_is_its_memsw_limit_less_its_memory_limit(proc_tree, v1_tree):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=8 << 20, swap_free_kb=8 << 20)
    v1_tree.cgroup("arena", memory__limit_in_bytes=f"{256 * MiB}\n", memory__usage_in_bytes=f"{250 * MiB}\n",
                   memory__stat=(f"hierarchical_memory_limit {256 * MiB}\nhierarchical_memsw_limit {384 * MiB}\n"
                                 f"total_rss {250 * MiB}\ntotal_swap {100 * MiB}\ntotal_inactive_file 0\n"))
    s = _swap_domain(proc_tree, v1_tree, "arena").snapshot(0)
    assert (s.swap_total_bytes, s.swap_free_bytes) == (128 * MiB, 28 * MiB)
    assert (s.ram_total_bytes, s.ram_free_bytes) == (256 * MiB, 6 * MiB)
    # no swap accounting (no memsw figures): the host's swap
    v1_tree.cgroup("open", memory__limit_in_bytes=f"{256 * MiB}\n", memory__usage_in_bytes=f"{250 * MiB}\n",
                   memory__stat=f"hierarchical_memory_limit {256 * MiB}\ntotal_rss {250 * MiB}\n")
    s = _swap_domain(proc_tree, v1_tree, "open").snapshot(0)
    assert (s.swap_total_bytes, s.swap_free_bytes) == (8 << 30, 8 << 30)


def _daemon_on_a_swapping_arena(proc_tree, v2_tree, monkeypatch, **conf):
    """A daemon on ``short_arena`` (6 MiB of 256 free in memory: under the 5%
    redline) whose arena may still fill 100 of its 128 MiB of swap."""
    import io

    from oomkiller.daemon import Daemon
    from oomkiller.model import PressureEvent
    from trees import killing_walk, short_arena, short_config
    short_arena(proc_tree, v2_tree)
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=8 << 20, swap_free_kb=7 << 20)
    v2_tree.cgroup("arena", memory__swap__max=f"{128 * MiB}\n", memory__swap__current=f"{28 * MiB}\n")
    out = io.StringIO()
    d = Daemon(short_config(proc_tree, v2_tree, **conf), json_out=out, clock=lambda: 5_000_000_000)
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 100 * MiB))
    record = d.wake([PressureEvent("timer", "tick", timestamp_usec=4_990_000)])
    return d, record


def test_a_daemon_kills_no_job_while_its_domain_can_still_swap(proc_tree, v2_tree, monkeypatch):
    d, record = _daemon_on_a_swapping_arena(proc_tree, v2_tree, monkeypatch)
    assert record is None and d.kills == 0
    text, data = d.info()
    assert data["swap"] == {"count_swap": True, "counted": True, "free_bytes": 100 * MiB, "total_bytes": 128 * MiB}
    assert "swap: 100M free of 128M, counted in free and total memory" in text


def test_count_swap_off_kills_by_memory_alone(proc_tree, v2_tree, monkeypatch):
    d, record = _daemon_on_a_swapping_arena(proc_tree, v2_tree, monkeypatch, count_swap=False)
    assert record is not None and d.kills == 1 and record.victim["job"] == "hog"
    text, data = d.info()
    assert data["swap"]["counted"] is False
    assert "swap: not counted (count_swap = false): free memory is RAM alone" in text


def _zram(proc_tree, tmp_path, areas, mm_stat):
    """/proc/swaps with ``areas`` ((name, size KiB, used KiB)); zram0's
    mm_stat (orig_data_size compr_data_size mem_used_total ...), or none."""
    (proc_tree.root / "swaps").write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + "".join(
        f"{name:<40}{'partition' if 'zram' in name else 'file'}\t{size}\t{used}\t100\n" for name, size, used in areas))
    block = tmp_path / "sys-block"
    (block / "zram0").mkdir(parents=True, exist_ok=True)
    if mm_stat is not None:
        (block / "zram0" / "mm_stat").write_text(mm_stat)
    return str(block)


def test_zram_room_counts_only_what_compression_saves(proc_tree, v2_tree, tmp_path):
    """8 GiB of RAM at 1% available and a zram device of 8 GiB holding 6 GiB
    of data that barely compresses (5.9 GiB of RAM for it): its 2 GiB of
    room would free some 35 MiB. Counted in full, free memory read 2 GiB
    and no 5% redline was crossed while the machine had nothing left."""
    avail_kb = (8 << 20) // 100
    proc_tree.meminfo(total_kb=8 << 20, available_kb=avail_kb, swap_total_kb=8 << 20, swap_free_kb=2 << 20)
    orig, used = 6 << 30, (59 << 30) // 10
    dom = _swap_domain(proc_tree, v2_tree, "host")
    dom.sys_block = _zram(proc_tree, tmp_path, [("/dev/zram0", 8 << 20, 6 << 20)], f"{orig} {used - 4096} {used} 0\n")
    s = dom.snapshot(0)
    cost_pm = used * 1000 // orig
    assert s.swap_total_bytes == (8 << 30) - (8 << 30) * cost_pm // 1000
    assert s.swap_free_bytes == (2 << 30) - (2 << 30) * cost_pm // 1000
    assert s.free_bytes == (avail_kb << 10) + s.swap_free_bytes
    assert s.free_bytes < s.total_bytes * 5 // 100


def test_zram_with_nothing_stored_or_unreadable_is_left_out_and_disk_swap_counts(proc_tree, v2_tree, tmp_path):
    """A disk swap file beside zram counts in full; zram whose compression
    is not known yet (nothing stored, or no mm_stat) counts for nothing."""
    proc_tree.meminfo(total_kb=8 << 20, available_kb=1 << 20, swap_total_kb=12 << 20, swap_free_kb=11 << 20)
    areas = [("/dev/zram0", 8 << 20, 0), ("/swap\\040file", 4 << 20, 1 << 20)]
    for mm_stat in ("0 0 0 0 0 0 0 0 0\n", None, "garbage\n"):
        dom = _swap_domain(proc_tree, v2_tree, "host")
        dom.sys_block = _zram(proc_tree, tmp_path, areas, mm_stat)
        if mm_stat is None:
            (tmp_path / "sys-block" / "zram0" / "mm_stat").unlink(missing_ok=True)
        s = dom.snapshot(0)
        assert (s.swap_total_bytes, s.swap_free_bytes) == (4 << 30, 3 << 30), mm_stat


def test_zram_in_a_cgroup_domain_never_counts_more_than_the_host_has_beyond_it(proc_tree, v2_tree, tmp_path):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20, swap_total_kb=4 << 20, swap_free_kb=3 << 20)
    v2_tree.cgroup("arena", memory__max=f"{512 * MiB}\n", memory__current=f"{500 * MiB}\n",
                   memory__stat=f"anon {500 * MiB}\ninactive_file 0\nactive_file 0\n",
                   memory__swap__max="max\n", memory__swap__current=f"{100 * MiB}\n")
    dom = _swap_domain(proc_tree, v2_tree, "arena")
    dom.sys_block = _zram(proc_tree, tmp_path, [("/dev/zram0", 4 << 20, 1 << 20)], None)
    s = dom.snapshot(0)
    assert (s.swap_total_bytes, s.swap_free_bytes) == (0, 0)
    assert s.free_bytes == 12 * MiB


def test_the_domains_memory_files_are_held_only_on_the_kernels_cgroup_filesystem(tmp_path):
    """A held file of a removed cgroup fails its reads only on the kernel's
    cgroup filesystem (ENODEV; then it is opened again by path and found
    gone): elsewhere (a copy, a test tree) the domain's files are opened on
    every read, as before."""
    from oomkiller.domain import on_cgroupfs
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 22 0:30 / /srv/my\\040cgroups rw - cgroup2 none rw\n"
        "41 22 0:31 / /srv/broken\n")
    root = str(proc)
    assert on_cgroupfs("/sys/fs/cgroup/unified/system.slice", root)
    assert on_cgroupfs("/sys/fs/cgroup/memory/a/b", root)
    assert not on_cgroupfs("/sys/fs/cgroup", root)                  # the tmpfs above them
    assert not on_cgroupfs("/sys/fs/cgroup/unifiedx/a", root)       # a prefix of a name is no mount point
    assert on_cgroupfs("/srv/my cgroups/pod", root)                 # mountinfo's \040 is a space
    assert not on_cgroupfs("/srv/broken/x", root)
    assert not on_cgroupfs("/sys/fs/cgroup/unified", str(tmp_path / "none"))


def test_held_files_read_afresh_and_are_bounded(tmp_path):
    from oomkiller.files import HeldFiles, Vanished
    held = HeldFiles(limit=2)
    a, b, c = (tmp_path / n for n in "abc")
    for f in (a, b, c):
        f.write_text(f"{f.name} 1\n")
    assert held.read(str(a)) == "a 1\n"
    a.write_text("a 2\n")                   # rewritten in place: the held descriptor reads it anew
    assert held.read(str(a)) == "a 2\n"
    held.read(str(b))
    held.read(str(c))                       # past the limit: all closed, held afresh
    assert list(held._held) == [str(c)]
    with pytest.raises(Vanished):
        held.read(str(tmp_path / "gone"))
    held.close()
    assert held._held == {}
