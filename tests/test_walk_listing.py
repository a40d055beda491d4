"""A walk takes a recent listing of jobs (below the arm line the arming
lists them every 250 ms) and reads again only the jobs it may kill: the
first killable candidates until they are all fresh, and those the events
name. A listing too old, or a tree where jobs came or went, is listed
afresh."""
from __future__ import annotations

import io
import os

import pytest

from oomkiller import daemon as daemon_mod
from oomkiller.daemon import Daemon
from oomkiller.model import EventKind, PressureEvent, Ranking, Source

from trees import killing_walk, short_arena, short_config

MIB = 1 << 20
JOBS = (("hog", "hog", 4101, 150), ("web", "web", 4102, 90), ("db", "db", 4103, 60))


class Clock:
    def __init__(self) -> None:
        self.ns = 5_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += int(ms * 1_000_000)


def _jobs(got):
    """The jobs a daemon hands the core: a ranking of them, or a list."""
    return got.jobs() if isinstance(got, Ranking) else got


def _daemon(proc_tree, v2_tree, monkeypatch):
    short_arena(proc_tree, v2_tree, JOBS)
    clock = Clock()
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=clock)
    reads: list[str] = []
    real = d.cgroupfs.job

    def job(path, *a, **kw):
        reads.append(os.path.basename(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(d.cgroupfs, "job", job)
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MIB))
    return d, clock, reads


def _grow(proc_tree, v2_tree, comm, pid, mib):
    proc_tree.root.joinpath(str(pid)).rename(proc_tree.root / f"old{pid}")
    proc_tree.proc(pid, comm, anon_kb=mib << 10, shmem_kb=0, swap_kb=0, cgroup=f"0::/arena/{comm}\n")
    v2_tree.cgroup(f"arena/{comm}", (pid,), memory__stat=f"anon {mib * MIB}\nshmem 0\n",
                   memory__current=f"{mib * MIB}\n")


def _tick(d, **kw):
    return d.wake([PressureEvent(Source.TIMER, EventKind.TICK, **kw)])


def test_a_walk_takes_a_recent_listing_and_reads_again_the_jobs_it_may_kill(proc_tree, v2_tree, monkeypatch):
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    listed = d.jobs()
    assert len(listed) == 3
    clock.advance_ms(100)
    rec = _tick(d)
    assert rec.victim["job"] == "hog"
    # the hog and the one after it, not the db
    assert sorted(reads) == ["hog", "web"]
    assert d.walk_listings == {"listed": 0, "reused": 1, "read_again": 2, "swept": 0}
    assert rec.timings_usec["listing_age"] == 100_000
    assert "1 took a recent listing and read 2 jobs again" in d.info()[0]


def test_a_job_that_grew_past_the_top_is_found_when_the_ranking_moves(proc_tree, v2_tree, monkeypatch):
    """The hog read again turns out to have shrunk below the web: the web,
    now first, is read again too, and the db (stale, third) is not needed."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    _grow(proc_tree, v2_tree, "hog", 4101, 20)
    _grow(proc_tree, v2_tree, "web", 4102, 200)
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "web"
    assert set(reads) == {"hog", "web", "db"} or set(reads) == {"hog", "web"}
    assert "db" not in reads[:2]


def test_the_events_cgroup_is_read_again_and_its_growth_counts(proc_tree, v2_tree, monkeypatch):
    """The db grew past everyone since the listing; the reclaim event names
    its cgroup: it is read again, ranks first and is the one killed."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    _grow(proc_tree, v2_tree, "db", 4103, 400)
    clock.advance_ms(50)
    db_id = os.stat(v2_tree.root / "arena" / "db").st_ino
    rec = d.wake([PressureEvent(Source.EBPF, EventKind.MEMCG_RECLAIM, cgroup_id=db_id)])
    assert rec.victim["job"] == "db" and reads[0] == "db"


def test_without_an_event_a_job_third_in_the_listing_waits_for_the_next_listing(proc_tree, v2_tree, monkeypatch):
    """The trade, stated: a job that was third 50 ms ago and grew past both
    above it, with no event naming it and the domain's free memory steady
    (the fixture's use does not move), is not read; the walk kills the top
    of the listing read again. At most LISTING_REUSE_USEC stale, as a
    listing of every job is stale by the time its last job is read (170 ms
    for 1000 jobs)."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    _grow(proc_tree, v2_tree, "db", 4103, 400)
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "hog" and "db" not in reads


def test_a_listing_too_old_is_listed_again(proc_tree, v2_tree, monkeypatch):
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    clock.advance_ms(daemon_mod.LISTING_SWEEP_MAX_USEC / 1000 + 1)
    rec = _tick(d)
    assert rec.victim["job"] == "hog"
    assert d.walk_listings["listed"] == 1 and d.walk_listings["reused"] == 0
    assert "listing_age" not in rec.timings_usec


@pytest.mark.parametrize("grown", [None, "db"])
def test_an_older_listing_serves_once_every_jobs_usage_is_read(proc_tree, v2_tree, monkeypatch, grown):
    """Older than a walk takes as it is, younger than LISTING_SWEEP_MAX_USEC,
    no job come or gone: each job's usage is read, only those that grew
    are read in full, and the top two are fresh. A db grown past the hog
    is found so, and killed."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    if grown:
        v2_tree.cgroup("arena", memory__current=f"{140 * MIB}\n")
    d.jobs()
    if grown:
        _grow(proc_tree, v2_tree, grown, 4103, 200)
        v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
    clock.advance_ms(5000)
    rec = _tick(d)
    assert rec.victim["job"] == (grown or "hog")
    assert d.walk_listings == {"listed": 0, "reused": 1, "read_again": 2 if not grown else 3, "swept": 1}
    assert sorted(reads) == sorted(["hog", "web"] + ([grown] if grown else []))
    assert rec.timings_usec["listing_age"] == 5_000_000 and "sweep" in rec.timings_usec


@pytest.mark.parametrize("took_ms, age_ms, reused", [
    (800, 2350, True), (800, 2450, False),          # 3 times as long as it took to make
    (100, 450, True), (100, 550, False),            # but at least LISTING_REUSE_USEC
    (9000, 2900, True), (9000, 3100, False),        # and at most LISTING_MAX_AGE_USEC
])
def test_a_listing_slow_to_make_may_be_older(proc_tree, v2_tree, monkeypatch, took_ms, age_ms, reused):
    """Ten thousand jobs take most of a second to list: a walk may take a
    listing as old as 3 times that (the free-memory check still holds),
    or it would wait for one on every wake."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    d._listing_usec = took_ms * 1000
    clock.advance_ms(age_ms)
    rec = _tick(d)
    assert rec.victim["job"] == "hog"
    # older: taken only once every job's usage is read (the sweep)
    assert d.walk_listings["reused"] == 1 and d.walk_listings["swept"] == int(not reused)


def test_a_new_job_since_the_listing_is_listed_again(proc_tree, v2_tree, monkeypatch):
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    proc_tree.proc(4104, "new", anon_kb=500 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/new\n")
    v2_tree.cgroup("arena/new", (4104,), memory__stat=f"anon {500 * MIB}\nshmem 0\n")
    clock.advance_ms(10)
    rec = _tick(d)
    assert rec.victim["job"] == "new"
    assert d.walk_listings == {"listed": 1, "reused": 0, "read_again": 0, "swept": 0}


def test_a_top_job_gone_since_the_listing_is_dropped(proc_tree, v2_tree, monkeypatch):
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    real = d.cgroupfs.job

    def gone(path, *a, **kw):
        if path.endswith("/hog"):
            reads.append("hog")
            raise FileNotFoundError(2, "gone", path)
        return real(path, *a, **kw)
    monkeypatch.setattr(d.cgroupfs, "job", gone)
    clock.advance_ms(10)
    rec = _tick(d)
    assert rec.victim["job"] == "web"
    assert d.walk_listings["reused"] == 1


# -- listings made in the background ---------------------------------------------

def _bg_daemon(proc_tree, v2_tree, monkeypatch=None):
    if monkeypatch is not None:
        # every listing in the background, however quick (see the test after)
        monkeypatch.setattr(daemon_mod, "SYNC_LISTING_MAX_USEC", 0)
    short_arena(proc_tree, v2_tree, JOBS)
    clock = Clock()
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=clock, background_listing=True)
    return d, clock


def test_the_core_takes_the_latest_listing_while_the_next_is_made_in_the_background(proc_tree, v2_tree,
                                                                                     monkeypatch):
    from oomkiller.core import state as core
    from trees import wait_until
    d, clock = _bg_daemon(proc_tree, v2_tree, monkeypatch)
    try:
        # none yet: the arming waits, and a listing is asked for
        d.saw(d.domain.snapshot(d.now_usec()))      # as each wake does
        assert d.core_jobs() is core.PENDING
        assert wait_until(lambda: d.lister.counts["listed"] == 1)
        first = d.core_jobs()
        assert sorted(j.name for j in _jobs(first)) == ["db", "hog", "web"]
        assert d.walk_listings["listed"] == 0       # never on the loop
        clock.advance_ms(100)
        again = d.core_jobs()                       # recent: its top two read again, no new listing
        assert [j.name for j in _jobs(again)] == [j.name for j in _jobs(first)] and d.lister.counts["listed"] == 1
        proc_tree.proc(4104, "new", anon_kb=10 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/new\n")
        v2_tree.cgroup("arena/new", (4104,), memory__stat=f"anon {10 * MIB}\nshmem 0\n")
        assert d.core_jobs() is core.PENDING        # a job came: not the same jobs any more
        assert wait_until(lambda: d.lister.counts["listed"] == 2)
        d.saw(d.domain.snapshot(d.now_usec()))
        later = d.core_jobs()
        assert sorted(j.name for j in _jobs(later)) == ["db", "hog", "new", "web"]
        assert d.info()[1]["background_listings"] == {"listed": 2, "failed": 0}
        clock.advance_ms(daemon_mod.LISTING_ASYNC_MAX_USEC / 1000)
        assert d.core_jobs() is core.PENDING        # too old
    finally:
        d.lister.close()


def test_an_arming_while_jobs_are_pending_is_left_for_a_later_wake(proc_tree, v2_tree):
    """The core, given PENDING, arms nobody and does not count it as a
    rerank: the next wake with a listing arms the top job."""
    from oomkiller.core import state as core
    from test_core_state import CONF as conf, JOBS as CORE_JOBS, snap
    # 40 MiB free: under the arm line (51.2 MiB), over the redline
    w = core.Wake(1_000_000, snap(40, 1_000_000), (PressureEvent(Source.TIMER, EventKind.TICK),), can_arm=True)
    first = core.step(core.CoreState(), conf, w, None, 1)
    assert first.need is core.Need.JOBS
    res = core.step(core.CoreState(), conf, w, core.PENDING, 1)
    assert res.state.armed is None and res.state.armed_ranked_usec == 0
    assert not [a for a in res.actions if type(a).__name__ == "Arm"]
    res = core.step(res.state, conf, w, CORE_JOBS, 1)
    assert [type(a).__name__ for a in res.actions if type(a).__name__ == "Arm"] == ["Arm"]


def test_a_background_listing_that_fails_is_said_and_the_walk_lists_on_the_loop(proc_tree, v2_tree, monkeypatch,
                                                                                   caplog):
    from oomkiller.core import state as core
    from trees import wait_until
    d, clock = _bg_daemon(proc_tree, v2_tree, monkeypatch)
    try:
        monkeypatch.setattr(d.lister._fs, "jobs", lambda *a: (_ for _ in ()).throw(OSError(5, "EIO")))
        assert d.core_jobs() is core.PENDING
        assert wait_until(lambda: d.lister.counts["failed"] == 1)
        assert "listing jobs in the background failed" in caplog.text
        assert d.core_jobs() is core.PENDING
        jobs = d.walk_jobs([], 256 * MIB)           # a walk does not wait on it: the loop lists
        assert len(_jobs(jobs)) == 3 and d.walk_listings["listed"] == 1
    finally:
        d.lister.close()


@pytest.mark.parametrize("usage_known", [True, False])
def test_a_job_not_read_again_that_may_have_grown_past_the_top_is_found(proc_tree, v2_tree, monkeypatch,
                                                                        usage_known):
    """The domain lost 110 MiB of free memory since the listing, more than
    the hog (150 MiB) leads the db (60 MiB, third, not named by an event):
    the db may be the top now. Each job's usage says the db grew: it is
    read again, and the db, grown to 200 MiB, is the one killed. A usage
    that cannot be read: every job is listed again."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    v2_tree.cgroup("arena", memory__current=f"{140 * MIB}\n")
    d.jobs()
    _grow(proc_tree, v2_tree, "db", 4103, 200)
    v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
    if not usage_known:
        monkeypatch.setattr(d.cgroupfs, "usage", lambda path: (_ for _ in ()).throw(OSError(5, "EIO", path)))
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "db"
    if usage_known:
        assert d.walk_listings == {"listed": 0, "reused": 1, "read_again": 3, "swept": 1}
    else:
        assert d.walk_listings == {"listed": 1, "reused": 0, "read_again": 0, "swept": 0}


def test_a_fall_in_free_memory_smaller_than_the_lead_keeps_the_listing(proc_tree, v2_tree, monkeypatch):
    """20 MiB less free since the listing cannot have lifted the web (90 MiB)
    or the db (60 MiB) past the hog (150 MiB): the listing serves."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    v2_tree.cgroup("arena", memory__current=f"{230 * MIB}\n")
    d.jobs()
    v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "hog"
    assert d.walk_listings == {"listed": 0, "reused": 1, "read_again": 2, "swept": 0}


def test_a_job_the_listing_missed_that_took_more_than_the_top_has_is_listed(proc_tree, v2_tree, monkeypatch):
    """Both jobs of the listing read again, none left to compare with, and
    a cgroup the listing does not hold (here the check that no job came or
    went is made to miss it) took 160 MiB of free memory, more than the
    top's whole score: every job is listed, and the new one is killed."""
    short_arena(proc_tree, v2_tree)
    clock = Clock()
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=clock)
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MIB))
    v2_tree.cgroup("arena", memory__current=f"{90 * MIB}\n")
    d.jobs()
    proc_tree.proc(4104, "new", anon_kb=400 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/new\n")
    v2_tree.cgroup("arena/new", (4104,), memory__stat=f"anon {400 * MIB}\nshmem 0\n")
    v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
    monkeypatch.setattr(d.cgroupfs, "listing_unchanged", lambda *a, **kw: True)
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "new"
    assert d.walk_listings["listed"] == 1


def test_a_rank_command_between_the_listing_and_the_walk_does_not_vouch_for_the_loops_listing(
        proc_tree, v2_tree, monkeypatch):
    """The operator's ``rank`` (the control thread) lists the jobs after a
    new one came; the check that no job came or went must be about the
    loop's own listing, which lacks it, not about the latest one kept."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    proc_tree.proc(4104, "new", anon_kb=400 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/new\n")
    v2_tree.cgroup("arena/new", (4104,), memory__stat=f"anon {400 * MIB}\nshmem 0\n")
    ok, _text, data = d.handle("rank")
    assert ok and data["ranking"][0]["job"] == "new"
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "new"
    assert d.walk_listings["listed"] == 1


def test_an_event_in_a_cgroup_below_a_job_names_that_job_by_its_pid(proc_tree, v2_tree, monkeypatch):
    """A process of the db runs in a cgroup below the job (as a pod's
    containers, a service's sub-cgroups): the reclaim event's cgroup is
    that one, not the job's. The event's process names the job: it is
    read again, has grown past everyone, and is the one killed."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    proc_tree.proc(4105, "worker", anon_kb=1 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/db/w\n")
    w = v2_tree.cgroup("arena/db/w", (4105,))
    d.jobs()
    proc_tree.root.joinpath("4105").rename(proc_tree.root / "old4105")
    proc_tree.proc(4105, "worker", anon_kb=400 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/db/w\n")
    v2_tree.cgroup("arena/db", (4103,), memory__stat=f"anon {460 * MIB}\nshmem 0\n")
    clock.advance_ms(50)
    rec = d.wake([PressureEvent(Source.EBPF, EventKind.MEMCG_RECLAIM, cgroup_id=os.stat(w).st_ino, pid=4105)])
    assert rec.victim["job"] == "db" and reads[0] == "db"
    assert d.walk_listings["reused"] == 1


@pytest.mark.parametrize("fall, victim", [(True, "db"), (False, "hog")])
def test_a_background_listing_is_held_to_the_free_memory_seen_while_it_ran(proc_tree, v2_tree, monkeypatch,
                                                                            fall, victim):
    """A listing made in the background: the loop's snapshots say what
    free memory was while it ran (116 MiB); 110 MiB of it gone since is
    more than the hog leads the db, which is listed again and killed. The
    same listing with 20 MiB gone is taken, its top read again."""
    from trees import wait_until
    d, clock = _bg_daemon(proc_tree, v2_tree)
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MIB))
    try:
        v2_tree.cgroup("arena", memory__current=f"{140 * MIB if fall else 230 * MIB}\n")
        d.wake([])                          # a snapshot: 116 MiB free (or 26)
        clock.advance_ms(10)
        d.lister.request()
        assert wait_until(lambda: d.lister.counts["listed"] == 1)
        _grow(proc_tree, v2_tree, "db", 4103, 200)
        v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
        clock.advance_ms(50)
        rec = _tick(d)
        assert rec.victim["job"] == victim
        # the fall: each job's usage read finds the db grown
        assert d.walk_listings["reused"] == 1 and d.walk_listings["swept"] == int(fall)
    finally:
        d.lister.close()


def test_a_quick_listing_is_made_on_the_loop_for_the_arming(proc_tree, v2_tree):
    """A domain of few jobs lists in well under SYNC_LISTING_MAX_USEC: the
    arming gets them at once, not a wake later (a fast hog fills the arm
    line's 50 MiB in some 40 ms)."""
    d, clock = _bg_daemon(proc_tree, v2_tree)
    try:
        d.saw(d.domain.snapshot(d.now_usec()))
        jobs = d.core_jobs()
        assert sorted(j.name for j in _jobs(jobs)) == ["db", "hog", "web"]
        assert d.lister.counts["listed"] == 0
    finally:
        d.lister.close()


class _Watch:
    """The PSI source's watch for cgroups that come and go, as the daemon
    sees it: ``changed`` until watched afresh."""

    def __init__(self) -> None:
        self.changed, self.watched = True, []

    def track(self, paths):
        return [], []

    def watch_jobs(self, domain_path, jobs):
        self.watched.append(frozenset(jobs))
        self.changed = False

    def jobs_changed(self):
        return self.changed


def test_a_listing_checked_after_a_change_is_watched_afresh_and_not_checked_again(proc_tree, v2_tree,
                                                                                    monkeypatch):
    """Cgroups came or went since the watch was set: the listing is checked
    (one stat per cgroup: a tenth of a second at ten thousand jobs) once,
    with the watch set again first; the next walks trust the watch."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    watch = _Watch()
    monkeypatch.setattr(d, "_psi", lambda: watch)
    checks = []
    real = d.cgroupfs.listing_unchanged
    monkeypatch.setattr(d.cgroupfs, "listing_unchanged", lambda listing: checks.append(1) or real(listing))
    d.jobs()
    d._jobs_changed = True
    for _ in range(3):
        clock.advance_ms(10)
        assert d._usable(daemon_mod.LISTING_REUSE_USEC)
    assert len(checks) == 1 and len(watch.watched) == 1 and not d._jobs_changed
    assert sorted(os.path.basename(p) for p in watch.watched[0]) == ["db", "hog", "web"]
    # a cgroup made after the watch was set: the watch says so, the check fails
    d._jobs_changed = watch.changed = True
    v2_tree.cgroup("arena/new")
    assert not d._usable(daemon_mod.LISTING_REUSE_USEC) and d._jobs_changed


def test_a_process_moved_into_a_job_read_again_does_not_hide_what_another_took(proc_tree, v2_tree, monkeypatch):
    """A process with 140 MiB of its own moves into the web (second, read
    again) from a cgroup outside the jobs: its charge stays where it was,
    so the web's score rises by 50 MiB while the domain's free memory does
    not fall by a byte of it. Meanwhile the db (third, not read again)
    grew by 110 MiB, past the hog, and the domain lost those 110 MiB. What
    the jobs read again took is their charge, not a process's memory that
    came without one: the fall trips the check, the db is found and killed
    (the web's owner must not be able to steer the kill to the hog)."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    v2_tree.cgroup("arena", memory__current=f"{140 * MIB}\n")
    d.jobs()
    proc_tree.proc(4106, "mover", anon_kb=140 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/web\n")
    v2_tree.cgroup("arena/web", (4102, 4106))       # charge and usage unchanged: they stayed behind
    _grow(proc_tree, v2_tree, "db", 4103, 170)
    v2_tree.cgroup("arena", memory__current=f"{250 * MIB}\n")
    clock.advance_ms(50)
    rec = _tick(d)
    assert rec.victim["job"] == "db"


class _TreeWatchPsi:
    """The PSI source's watch for cgroups that come and go, the real one
    (inotify on the fixture's folders)."""

    def __init__(self) -> None:
        from oomkiller.sources.psi import TreeWatch
        self.tree = TreeWatch()

    def track(self, paths):
        return [], []

    def watch_jobs(self, domain_path, jobs):
        self.tree.watch(domain_path, jobs)

    def jobs_changed(self):
        return self.tree.changed()


def test_a_watch_set_afresh_for_a_listing_that_failed_its_check_is_not_trusted(proc_tree, v2_tree, monkeypatch):
    """The listing's job ``x`` (a cgroup with processes of its own) is
    removed and made again as a folder of jobs (``x/a``). A walk's check
    sets the watch afresh for the listing it holds, where ``x`` is a job,
    so ``x`` is not watched; the check then fails and the jobs are listed
    again. That watch, set for jobs that were not the domain's any more,
    must not vouch for the new listing: a job made later below ``x``
    (``x/b``, 400 MiB of a process moved in, its charge left behind) would
    go unseen and the hog be killed in its place."""
    import shutil
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    proc_tree.proc(4107, "x", anon_kb=1 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/x\n")
    x = v2_tree.cgroup("arena/x", (4107,), memory__stat=f"anon {MIB}\nshmem 0\n", memory__current=f"{MIB}\n")
    psi = _TreeWatchPsi()
    monkeypatch.setattr(d, "_psi", lambda: psi)
    try:
        listed = d.jobs()
        assert "x" in [j.name for j in listed]
        psi.watch_jobs(d.domain.path, frozenset(j.path for j in listed))     # as a refresh of the triggers does
        shutil.rmtree(x)
        (proc_tree.root / "4107" / "cgroup").write_text("0::/arena/x/a\n")
        v2_tree.cgroup("arena/x/a", (4107,), memory__stat=f"anon {MIB}\nshmem 0\n", memory__current=f"{MIB}\n")
        d._jobs_changed = psi.jobs_changed()        # as the next wake does
        assert d._jobs_changed
        clock.advance_ms(10)
        assert not d._usable(daemon_mod.LISTING_REUSE_USEC)
        assert "x/a" in [j.name for j in d.jobs()]
        clock.advance_ms(10)
        proc_tree.proc(4108, "mover", anon_kb=400 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/x/b\n")
        v2_tree.cgroup("arena/x/b", (4108,), memory__stat="anon 0\nshmem 0\n", memory__current="0\n")
        rec = _tick(d)
        assert rec.victim["job"] == "x/b"
    finally:
        psi.tree.close()


def test_a_rank_command_reads_with_a_table_of_its_own(proc_tree, v2_tree, monkeypatch):
    """``rank`` runs in the control thread, while the loop lists and reads
    jobs: a table shared between them is mutated from both (the facts
    pruned and rebuilt as the other iterates them: a RuntimeError in the
    loop at worst). The loop's table is left as it was."""
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    d.jobs()
    facts, counts = dict(d.cgroupfs._facts), dict(d.cgroupfs.job_reads)
    lasts = {p: f.last for p, f in facts.items()}
    ok, _text, data = d.handle("rank")
    assert ok and data["ranking"][0]["job"] == "hog"
    assert d.cgroupfs.job_reads == counts and d.cgroupfs._facts == facts
    assert {p: f.last for p, f in d.cgroupfs._facts.items()} == lasts


def test_a_walk_that_lists_reads_in_full_the_jobs_it_may_kill(proc_tree, v2_tree, monkeypatch):
    """A listing takes a job as read before while its usage holds; at a
    limit of its own, the web's cache turned into 100 MiB more anonymous
    memory with its usage unmoved. A cgroup came since the loop's listing:
    the walk lists again, and that listing takes the web as read 2 s ago.
    The walk reads in full the jobs it may kill before it kills: the web,
    190 MiB now, is the top, not the hog."""
    import time
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)     # the web's last full read stays recent
    d, clock, reads = _daemon(proc_tree, v2_tree, monkeypatch)
    web = v2_tree.mem / "arena" / "web"
    (web / "memory.current").write_text(f"{200 * MIB}\n")
    (web / "memory.stat").write_text(f"anon {90 * MIB}\nfile {110 * MIB}\ninactive_file {110 * MIB}\nshmem 0\n")
    d.jobs()
    (web / "memory.stat").write_text(f"anon {190 * MIB}\nfile {10 * MIB}\ninactive_file {10 * MIB}\nshmem 0\n")
    v2_tree.cgroup("arena/idle")
    clock.advance_ms(2000)
    rec = _tick(d)
    assert d.walk_listings["listed"] == 1
    assert rec.victim["job"] == "web"


def test_a_background_listing_waits_between_jobs_while_the_loop_wakes(proc_tree, v2_tree, monkeypatch):
    """The loop's reads do not queue for the GIL behind a listing: while
    the loop wakes, the listing waits before its next job; released, it
    goes on; a loop that never releases holds it at most HOLD_MAX_S a job."""
    import threading
    import time
    from oomkiller import lister as lister_mod
    from trees import wait_until
    d, clock = _bg_daemon(proc_tree, v2_tree, monkeypatch)
    try:
        d.saw(d.domain.snapshot(d.now_usec()))
        fs = d.lister.fs
        read, real = [], fs._job
        entered = threading.Event()

        def job(path, *a, **kw):
            read.append(path)
            entered.set()
            return real(path, *a, **kw)
        monkeypatch.setattr(fs, "_job", job)
        d.lister.hold()
        d.lister.request()
        time.sleep(0.3)
        assert read == [] and d.lister.counts["listed"] == 0     # held before its first job
        d.lister.release()
        assert wait_until(lambda: d.lister.counts["listed"] == 1)
        assert len(read) == 3
        # the ranking (with where each job is in it) and the refault
        # counters were made in the lister's thread
        ranking, marks = d.lister.take()[4]
        assert [c.job.name for c in ranking.candidates] == ["hog", "web", "db"]
        assert "_named" in ranking.__dict__ and marks is not None
        monkeypatch.setattr(lister_mod, "HOLD_MAX_S", 0.05)
        d.lister.hold()
        t = time.monotonic()
        d.lister.request()
        assert wait_until(lambda: d.lister.counts["listed"] == 2)
        assert time.monotonic() - t >= 0.1          # 3 jobs held 50 ms each, then read anyway
    finally:
        d.lister.release()
        d.lister.close()


def _bg_listed(proc_tree, v2_tree, monkeypatch):
    """A daemon listing in the background, with a snapshot seen and its
    first listing made (and ranked) in the lister's thread."""
    from trees import wait_until
    d, _clock = _bg_daemon(proc_tree, v2_tree, monkeypatch)
    snap = d.domain.snapshot(d.now_usec())
    d.saw(snap)
    d.lister.request()
    assert wait_until(lambda: d.lister.counts["listed"] == 1)
    return d, snap


def test_a_walk_takes_the_ranking_made_in_the_background(proc_tree, v2_tree, monkeypatch):
    """The walk does not rank every job: the listing's ranking was made
    in the lister's thread, and the walk places again only the jobs it
    reads again."""
    from oomkiller.core import rank as rank_mod
    d, snap = _bg_listed(proc_tree, v2_tree, monkeypatch)
    try:
        ranked = []
        real = rank_mod.rank
        monkeypatch.setattr(daemon_mod, "rank", lambda *a, **kw: ranked.append(1) or real(*a, **kw))
        jobs = d.walk_jobs([], snap.total_bytes, snap.free_bytes)
        assert isinstance(jobs, Ranking) and ranked == []
        assert [c.job.name for c in jobs.candidates] == ["hog", "web", "db"]
        assert d.walk_listings["reused"] == 1 and d.walk_listings["read_again"] == 2
    finally:
        d.lister.close()


def test_of_many_jobs_named_by_events_the_one_that_grew_is_read_again(proc_tree, v2_tree, monkeypatch):
    """More jobs named by a wake's events than a walk reads: the job that
    grew since the listing (ranked low by its listed score, the reason a
    named job is read at all) is read again and killed, whatever its place."""
    jobs = (("a-grower", "grower", 4100, 5), ("hog", "hog", 4101, 60), ("web", "web", 4102, 50),
            ("db", "db", 4103, 40), ("q", "q", 4104, 30), ("r", "r", 4105, 20))
    short_arena(proc_tree, v2_tree, jobs)
    clock = Clock()
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=clock)
    reads = []
    real = d.cgroupfs.job
    monkeypatch.setattr(d.cgroupfs, "job", lambda p, *a, **k: reads.append(os.path.basename(p)) or real(p, *a, **k))
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MIB))
    d.jobs()
    # the grower takes 400 MiB since the listing (others gave back as much: free steady)
    proc_tree.root.joinpath("4100").rename(proc_tree.root / "gone-4100")
    proc_tree.proc(4100, "grower", anon_kb=400 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/a-grower\n")
    v2_tree.cgroup("arena/a-grower", (4100,), memory__stat=f"anon {400 * MIB}\nshmem 0\n",
                   memory__current=f"{400 * MIB}\n")
    clock.advance_ms(50)
    ids = [os.stat(v2_tree.root / "arena" / c).st_ino for c, *_ in jobs]
    rec = d.wake([PressureEvent(Source.EBPF, EventKind.MEMCG_RECLAIM, cgroup_id=i) for i in ids])
    assert reads[0] == "a-grower" and rec.victim["job"] == "a-grower"


def test_a_walk_whose_total_moved_since_the_listing_ranks_for_the_new_total(proc_tree, v2_tree, monkeypatch):
    """The total counts in the score (the oom_score_adj bias; with zram,
    swap's share moves with its compression): a ranking made for another
    total is made again, on the loop, for the walk's."""
    d, snap = _bg_listed(proc_tree, v2_tree, monkeypatch)
    try:
        jobs = d.walk_jobs([], snap.total_bytes * 2, snap.free_bytes)
        assert jobs.made_for[1] == snap.total_bytes * 2
        assert [c.job.name for c in jobs.candidates] == ["hog", "web", "db"]
        assert not d.lister.held
    finally:
        d.lister.close()
