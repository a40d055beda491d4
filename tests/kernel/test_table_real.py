"""The job table on the real kernel: cgroups made, removed and made again
at the same path between two listings of an arena are seen, and a listing
with nothing changed is taken from the table. Each listing is compared with
one by a Cgroupfs that keeps nothing yet."""
from __future__ import annotations

import os

from kproc import rmdir_cgroup, wait_for

from oomkiller.cgroupfs import Cgroupfs


def _shape(jobs) -> list:
    """What a listing says of each job but its memory, which a process that
    just started changes from one read to the next."""
    return [(j.name, j.path, j.inode, [p.pid for p in j.procs], j.descendants, j.inner, j.v2_id, j.v2_path,
             j.rule, j.populated, j.oom_group, j.notes) for j in jobs]


def _listing(fs: Cgroupfs, arena) -> dict:
    got = fs.jobs(arena.path, ("auto",))
    assert _shape(got) == _shape(Cgroupfs().jobs(arena.path, ("auto",))), "the kept table and a fresh walk disagree"
    return {j.name: j for j in got}


def _remove(arena, job, proc) -> None:
    """End the job's one process and remove its cgroups (both trees on
    hybrid hosts)."""
    proc.kill()
    proc.wait()
    wait_for(lambda: not Cgroupfs().subtree_pids(job.path), 5, f"{job.name} to empty")
    for path in dict.fromkeys(p for p in (job.v2_path, job.path) if p):
        wait_for(lambda: rmdir_cgroup(path), 5, f"{path} to be removed")
        arena._dirs.remove(path)


def test_cgroups_made_removed_and_made_again_between_listings(arena):
    jobs = {n: arena.job(n) for n in ("a", "b", "c")}
    procs = {n: arena.spawn(j, ["sleep", "600"]) for n, j in jobs.items()}
    fs = Cgroupfs()
    first = _listing(fs, arena)
    assert sorted(first) == ["a", "b", "c"]
    assert all(first[n].v2_id == jobs[n].v2_id and [p.pid for p in first[n].procs] == [procs[n].pid]
               for n in first)
    assert _shape(_listing(fs, arena).values()) == _shape(first.values())
    assert fs.table_counts == {"kept": 1, "walked": 1}

    # a new job
    jobs["d"] = arena.job("d")
    procs["d"] = arena.spawn(jobs["d"], ["sleep", "600"])
    got = _listing(fs, arena)
    assert sorted(got) == ["a", "b", "c", "d"] and [p.pid for p in got["d"].procs] == [procs["d"].pid]
    assert fs.table_counts["walked"] == 2

    # one removed
    _remove(arena, jobs["b"], procs["b"])
    assert sorted(_listing(fs, arena)) == ["a", "c", "d"]

    # one removed and made again at the same path: a new cgroup, a new process
    old = got["c"]
    _remove(arena, jobs["c"], procs["c"])
    jobs["c"] = arena.job("c")
    procs["c"] = arena.spawn(jobs["c"], ["sleep", "600"])
    got = _listing(fs, arena)
    assert got["c"].inode == os.stat(jobs["c"].path).st_ino != old.inode
    assert got["c"].v2_id == jobs["c"].v2_id != old.v2_id
    assert [p.pid for p in got["c"].procs] == [procs["c"].pid]

    # a cgroup made below a job, and a process moved into it
    inner = arena.job("a/inner")
    p = arena.spawn(inner, ["sleep", "600"])
    got = _listing(fs, arena)
    assert got["a"].descendants == 1 and sorted(q.pid for q in got["a"].procs) == sorted((procs["a"].pid, p.pid))
    kept = fs.table_counts["kept"]
    assert _shape(_listing(fs, arena).values()) == _shape(got.values()) and fs.table_counts["kept"] == kept + 1


GROWER = """
import sys
held = [b"\\x5a" * (8 << 20)]
print("ready", flush=True)
for line in sys.stdin:
    held.append(b"\\x5a" * int(line))
    print("grown", flush=True)
"""


def test_a_listing_reads_in_full_only_the_jobs_that_changed(arena):
    """Between two listings nothing changed: each job is the one read
    before. A job that grew, one whose process changed its oom_score_adj
    and one with a new process are read again, and only they."""
    import subprocess
    import sys
    jobs = {n: arena.job(n) for n in ("a", "b", "c", "d")}
    procs = {n: arena.spawn(j, [sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True) for n, j in jobs.items()}
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    fs = Cgroupfs()
    first = _listing(fs, arena)
    again = _listing(fs, arena)
    assert [n for n in first if again[n] is not first[n]] == []
    # b grows by 32 MiB, c's process lowers its priority for the kill, a gets a second process
    procs["b"].stdin.write(f"{32 << 20}\n")
    procs["b"].stdin.flush()
    assert procs["b"].stdout.readline().strip() == "grown"
    with open(f"/proc/{procs['c'].pid}/oom_score_adj", "w") as f:
        f.write("300")
    extra = arena.spawn(jobs["a"], ["sleep", "600"])
    got = _listing(fs, arena)
    assert sorted(n for n in got if got[n] is not first[n]) == ["a", "b", "c"]
    assert got["b"].charged_bytes >= first["b"].charged_bytes + (32 << 20)
    assert [p.oom_score_adj for p in got["c"].procs] == [300]
    assert sorted(p.pid for p in got["a"].procs) == sorted((procs["a"].pid, extra.pid))
    assert fs.job_reads["reused"] >= 4 + 1


SHRINKER = """
import sys
held = [b"\\x5a" * (64 << 20)]
print("ready", flush=True)
for line in sys.stdin:
    held.clear()
    print("freed", flush=True)
"""


def test_a_job_scored_by_a_process_moved_in_sees_it_give_memory_back(arena):
    """A process that made 64 MiB in job a moves into job b: the charge
    stays with a, and b is scored by the process's own memory. The process
    then gives it back; b's usage does not move (it was never charged to
    b), and the next listing must still see b shrink, not keep its score."""
    import subprocess
    import sys
    a, b = arena.job("a"), arena.job("b")
    p = arena.spawn(a, [sys.executable, "-c", SHRINKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    for d in b.cgroups():
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
    fs = Cgroupfs()
    first = _listing(fs, arena)
    assert first["b"].committed_bytes >= 64 << 20 > first["b"].charged_bytes
    p.stdin.write("free\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "freed"
    got = _listing(fs, arena)
    assert got["b"].committed_bytes < 16 << 20
