"""The policy core on plain values: no files, no clock, no kernel."""
from __future__ import annotations

import dataclasses

from oomkiller.config import Config, Redline
from oomkiller.core import state as core
from oomkiller.core.timer import MIN_TICK_USEC, next_tick_usec
from oomkiller.model import (Candidate, EventKind, Importance, Job, KillResult, MemorySnapshot, PressureEvent, Proc,
                             Source)

MiB = 1 << 20
TOTAL = 256 * MiB
CONF = Config(domain="/arena", protect=("svc",))     # redline 5% = 12.8 MiB, arm line 20% = 51.2 MiB
SELF = 99999


def snap(free_mib: float, t_usec: int = 0, stall_usec: int = -1) -> MemorySnapshot:
    free = int(free_mib * MiB)
    return MemorySnapshot(domain="/arena", total_bytes=TOTAL, free_bytes=free, used_bytes=TOTAL - free,
                          reclaimable_bytes=0, taken_usec=t_usec, full_stall_usec=stall_usec)


def job(name: str, mib: int, pid: int, v2: bool = True) -> Job:
    return Job(name=name, path=f"/cg/arena/{name}", inode=pid * 10,
               procs=(Proc(pid, name, mib * MiB, 0, "S", 1),), v2_id=pid * 10 if v2 else 0,
               v2_path=f"/cg2/arena/{name}" if v2 else "", charged_bytes=mib * MiB)


HOG, SVC, TWO = job("hog", 150, 4101), job("svc", 20, 4102), job("two", 60, 4103)
JOBS = [HOG, SVC, TWO]


def ev(source=Source.TIMER, kind=EventKind.TICK, pid=0, t=0) -> PressureEvent:
    return PressureEvent(source, kind, pid=pid, timestamp_usec=t)


def run(state, free_mib, t_usec=0, events=(ev(),), jobs=JOBS, **wake):
    """One wake as the daemon does it: without jobs, then with them if asked."""
    w = core.Wake(t_usec, snap(free_mib, t_usec), tuple(events), **{"can_arm": True, "can_track": True, **wake})
    res = core.step(state, CONF, w, None, SELF)
    if res.need in (core.Need.JOBS, core.Need.WALK_JOBS):
        res = core.step(state, CONF, w, jobs, SELF)
    elif res.need is core.Need.ARMED_JOB:
        res = core.step(state, CONF, w, [j for j in jobs if j.path == state.armed.path], SELF)
    return res


def kinds(res) -> list[str]:
    return [type(a).__name__ for a in res.actions]


# -- arming ------------------------------------------------------------------------------

def test_above_the_arm_line_nothing_is_armed_and_no_jobs_are_read_without_a_tick():
    res = core.step(core.CoreState(), CONF, core.Wake(0, snap(150), (ev(Source.MEMCG, EventKind.MEMCG_THRESHOLD),),
                                                      can_arm=True, can_track=True), None, SELF)
    assert res.need is core.Need.NOTHING and res.actions == () and res.state.armed is None


def test_below_the_arm_line_the_top_victim_is_armed_and_reranked_at_most_every_250_ms():
    t0 = 1_000_000
    res = run(core.CoreState(), 40, t0)
    assert kinds(res) == ["Arm"] and res.actions[0].job == HOG and res.state.armed == HOG
    s = res.state
    for t in range(t0 + 10_000, t0 + core.ARM_RERANK_USEC, 10_000):
        r = core.step(s, CONF, core.Wake(t, snap(40, t), (ev(),), can_arm=True, can_track=True), None, SELF)
        assert r.need is core.Need.NOTHING and r.actions == ()       # no job list needed
        s = r.state
    bigger = dataclasses.replace(TWO, charged_bytes=300 * MiB)
    r = run(s, 40, t0 + core.ARM_RERANK_USEC, jobs=[HOG, SVC, bigger])
    assert kinds(r) == ["Arm"] and r.actions[0].job == bigger and r.actions[0].previous == HOG


def test_a_top_victim_that_cannot_be_armed_means_no_one_is():
    s = run(core.CoreState(), 40).state
    nov2 = dataclasses.replace(TWO, charged_bytes=300 * MiB, v2_id=0, v2_path="")
    r = run(s, 40, core.ARM_RERANK_USEC, jobs=[HOG, SVC, nov2])
    assert kinds(r) == ["Disarm"] and r.state.armed is None


def test_a_top_victim_too_small_to_end_a_shortage_is_not_armed():
    # The hog is gone (the kernel's OOM killer took it): the top job left is
    # a 2 MiB service; armed, its own failed reclaim would kill it.
    s = run(core.CoreState(), 40).state
    assert s.armed == HOG
    tiny = dataclasses.replace(SVC, name="logind", charged_bytes=2 * MiB)
    r = run(s, 40, core.ARM_RERANK_USEC, jobs=[tiny])
    assert kinds(r) == ["Disarm"] and r.state.armed is None
    just = dataclasses.replace(tiny, charged_bytes=-(-TOTAL // 100))     # 1% of the domain, rounded up
    assert run(s, 40, core.ARM_RERANK_USEC, jobs=[just]).state.armed == just


def test_back_above_the_arm_line_disarms_and_dry_run_never_arms():
    s = run(core.CoreState(), 40).state
    r = run(s, 100, 1000, can_track=False)
    assert kinds(r) == ["Disarm"] and r.state.armed is None and r.state.armed_ranked_usec == 0
    r = core.step(core.CoreState(), dataclasses.replace(CONF, dry_run=True),
                  core.Wake(0, snap(40), (ev(),), can_arm=True), JOBS, SELF)
    assert r.actions == () and r.state.armed is None


def test_an_arming_the_kernel_refused_is_tried_again():
    res = run(core.CoreState(), 40)
    s = core.arm_failed(res.state, res.actions[0])
    assert s.armed is None
    assert kinds(run(s, 40, core.ARM_RERANK_USEC)) == ["Arm"]


def test_without_prearm_nothing_is_armed():
    assert run(core.CoreState(), 40, can_arm=False).actions == ()


# -- PSI triggers on jobs -----------------------------------------------------------------

def test_job_triggers_are_refreshed_on_calm_timer_ticks_at_most_every_10_s():
    r = run(core.CoreState(), 150, 0, events=(ev(Source.PSI, EventKind.PSI_SOME),))
    assert r.actions == ()                       # not a timer tick
    r = run(core.CoreState(), 150, 1_000_000)
    (track,) = r.actions
    assert track.paths == {"/cg2/arena/hog/memory.pressure", "/cg2/arena/two/memory.pressure",
                           "/cg2/arena/svc/memory.pressure"}
    assert run(r.state, 150, 1_000_000 + core.JOB_PSI_REFRESH_USEC - 1).actions == ()
    assert kinds(run(r.state, 150, 1_000_000 + core.JOB_PSI_REFRESH_USEC)) == ["TrackTriggers"]
    # never below the arm line: there the arming comes first
    assert kinds(run(core.CoreState(), 40, 1_000_000)) == ["Arm"]
    assert run(core.CoreState(), 150, 1_000_000, can_track=False).actions == ()


def test_job_triggers_are_refreshed_only_when_the_jobs_may_have_changed():
    # the first refresh lists the jobs whatever the watch says
    r = run(core.CoreState(), 150, 1_000_000, jobs_changed=False)
    assert kinds(r) == ["TrackTriggers"]
    (track,) = r.actions
    assert track.jobs == {j.path for j in JOBS}
    later = 1_000_000 + core.JOB_PSI_REFRESH_USEC
    # no cgroup came or went and free memory stayed: the jobs are not listed
    res = core.step(r.state, CONF, core.Wake(later, snap(150, later), (ev(),), can_arm=True, can_track=True,
                                             jobs_changed=False), None, SELF)
    assert res.need is core.Need.NOTHING and res.actions == ()
    # free memory moved by less than JOB_PSI_MOVE_PERMYRIAD of the domain: still not
    just_under = (TOTAL * core.JOB_PSI_MOVE_PERMYRIAD // 10000 - 1) / MiB
    assert run(res.state, 150 - just_under, later, jobs_changed=False).actions == ()
    assert run(res.state, 150 + just_under, later, jobs_changed=False).actions == ()
    # by that much, either way: listed again
    moved = (TOTAL * core.JOB_PSI_MOVE_PERMYRIAD // 10000 + 1) / MiB
    assert kinds(run(res.state, 150 - moved, later, jobs_changed=False)) == ["TrackTriggers"]
    assert kinds(run(res.state, 150 + moved, later, jobs_changed=False)) == ["TrackTriggers"]
    # a cgroup came or went: listed again, but not before the refresh period
    assert kinds(run(res.state, 150, later, jobs_changed=True)) == ["TrackTriggers"]
    assert run(r.state, 150, later - 1, jobs_changed=True).actions == ()
    # the free figure of the last refresh is the reference
    r2 = run(r.state, 150 - moved, later, jobs_changed=False)
    assert r2.state.triggers_free_bytes == snap(150 - moved).free_bytes
    assert run(r2.state, 150 - moved, later + core.JOB_PSI_REFRESH_USEC, jobs_changed=False).actions == ()


# -- low memory: hold or walk ----------------------------------------------------------------

def test_below_the_redline_the_walk_rechecks_and_a_kill_holds_the_next():
    r = run(core.CoreState(), 10, 5_000_000)
    (walk,) = [a for a in r.actions if isinstance(a, core.Walk)]
    assert walk.reason == "free below redline" and walk.recheck_redline_bytes == TOTAL * 500 // 10000
    assert walk.past_gone
    assert [c.job.name for c in walk.ranking.killable()] == ["hog", "two"]
    hog = walk.ranking.killable()[0]
    s, after = core.walked(r.state, 5_010_000, [(hog, KillResult(HOG, True, False, "cgroup.kill", (4101,)))])
    assert s.kills == 1 and s.last_walk_usec == 5_010_000 and 4101 in s.our_victims and s.history == ()
    held = run(s, 10, 5_010_000 + 100_000)
    assert kinds(held) == ["Hold"] and held.actions[0].reason.startswith("post-kill delay")
    assert kinds(run(s, 10, 5_010_000 + CONF.post_kill_delay_ms * 1000))[-1] == "Walk"


def lagging(free_mib: float, lag_mib: float, t_usec: int) -> MemorySnapshot:
    return dataclasses.replace(snap(free_mib, t_usec), stat_lag_bytes=int(lag_mib * MiB))


def wake(state, s: MemorySnapshot, lag_is_anon: bool | None = False, can_arm: bool = True):
    w = core.Wake(s.taken_usec, s, (ev(),), can_arm=can_arm, can_track=True, lag_is_anon=lag_is_anon)
    res = core.step(state, CONF, w, None, SELF)
    return core.step(state, CONF, w, JOBS, SELF) if res.need is not core.Need.NOTHING else res


def test_the_redline_waits_for_statistics_that_lag_the_charge_but_not_for_long():
    # 1 MiB free, but 200 MiB of the charge not in memory.stat yet, and the
    # processes' own counts show none of it is their anonymous memory: a
    # stream's cache, which the statistics will name once summed
    t0 = 1_000_000
    r = wake(core.CoreState(), lagging(1, 200, t0))
    assert "Walk" not in kinds(r) and not r.detection.low and "not in memory.stat yet" in r.detection.lag_held
    assert r.state.stat_lag_since_usec == t0
    # ... while the arming does not wait
    assert "Arm" in kinds(r)
    assert next_tick_usec(r.state.history, CONF, running=True, can_arm=True, stat_lag=True) == 50_000
    # they caught up: it was cache, free memory is back, and nothing is killed
    r2 = wake(r.state, snap(150, t0 + 50_000))
    assert not r2.detection.low and r2.state.stat_lag_since_usec is None
    # they caught up: it was not cache after all (kernel memory, say), and
    # the redline acts at once
    r3 = wake(r.state, snap(1, t0 + 50_000))
    assert r3.detection.reason == "free below redline" and "Walk" in kinds(r3)
    # they never catch up (a v1 domain's slab, which its memory.stat does
    # not name): the redline acts on what it has once the hold is over
    s = r.state
    for t in range(t0 + 50_000, t0 + core.STAT_LAG_HOLD_USEC, 50_000):
        ri = wake(s, lagging(1, 200, t))
        assert "Walk" not in kinds(ri), t
        s = ri.state
    last = wake(s, lagging(1, 200, t0 + core.STAT_LAG_HOLD_USEC))
    assert last.detection.reason == "free below redline" and "Walk" in kinds(last)


def test_a_lag_the_processes_own_counts_show_as_a_hogs_is_not_waited_for():
    # even with a job armed in the kernel: the statistics would only say so later
    armed = wake(core.CoreState(), snap(40, 1_000_000)).state
    assert armed.armed is not None
    r = wake(armed, lagging(1, 200, 1_050_000), lag_is_anon=True)
    assert r.detection.reason == "free below redline" and "Walk" in kinds(r) and not r.state.stat_lag_waiting


def test_where_the_counts_cannot_tell_the_redline_waits_only_while_a_job_is_armed():
    # a job armed in the kernel ends a fast hog at its failed reclaims
    armed = wake(core.CoreState(), snap(40, 1_000_000)).state
    r = wake(armed, lagging(1, 200, 1_050_000), lag_is_anon=None)
    assert "Walk" not in kinds(r) and r.state.stat_lag_waiting and r.state.stat_lag_since_usec == 1_050_000
    # none armed (the first wake of a fast fill, a dry run, a top job that
    # cannot be armed): a wait would hand the race to the kernel's OOM killer
    r = wake(core.CoreState(), lagging(1, 200, 1_000_000), lag_is_anon=None)
    assert r.detection.reason == "free below redline" and "Walk" in kinds(r) and not r.state.stat_lag_waiting
    # without the pre-armed kill at all
    r = wake(core.CoreState(), lagging(1, 200, 1_000_000), lag_is_anon=None, can_arm=False)
    assert r.detection.reason == "free below redline" and "Walk" in kinds(r) and not r.state.stat_lag_waiting


def test_without_the_pre_armed_kill_the_redline_waits_when_the_lag_is_no_processs_anonymous_memory():
    t0 = 1_000_000
    r = wake(core.CoreState(), lagging(1, 200, t0), can_arm=False)
    assert "Walk" not in kinds(r) and not r.detection.low and r.state.stat_lag_since_usec == t0
    # for no longer than with it
    r2 = wake(r.state, lagging(1, 200, t0 + core.STAT_LAG_HOLD_USEC), can_arm=False)
    assert r2.detection.reason == "free below redline" and "Walk" in kinds(r2)


def test_a_spent_wait_does_not_start_again_until_memory_is_back_over_the_line():
    # the daemon stops counting once the wait is spent (it answers None):
    # with nothing armed that must not start a new wait while free memory
    # stays short, nor must a count that says "not anonymous" again
    t0 = 1_000_000
    s = wake(core.CoreState(), lagging(1, 200, t0), can_arm=False).state
    for t, says in ((t0 + core.STAT_LAG_HOLD_USEC, None), (t0 + core.STAT_LAG_HOLD_USEC + 100_000, None),
                    (t0 + core.STAT_LAG_HOLD_USEC + 200_000, False)):
        r = wake(s, lagging(1, 200, t), lag_is_anon=says, can_arm=False)
        assert r.detection.reason == "free below redline" and not r.state.stat_lag_waiting, t
        assert r.state.stat_lag_since_usec == t0
        s = core.walked(r.state, t, [])[0]
    # back over the line: the next shortfall may wait again
    s = wake(s, snap(100, t0 + 3_000_000), can_arm=False).state
    assert s.stat_lag_since_usec is None
    assert wake(s, lagging(1, 200, t0 + 3_100_000), can_arm=False).state.stat_lag_waiting


def test_the_term_line_does_not_take_the_redlines_wait_away():
    # free 4 MiB, 20 MiB lagging: the lag explains the redline's 12.8 MiB
    # shortfall, not the 64 MiB term line's; the redline waits as it would
    # without the term line
    conf = dataclasses.replace(CONF, term_redline=Redline(permyriad=2500))
    s = dataclasses.replace(snap(4, 1_000_000), stat_lag_bytes=20 * MiB)
    w = core.Wake(s.taken_usec, s, (ev(),), can_arm=False, can_track=True, lag_is_anon=False)
    r = core.step(core.CoreState(), conf, w, JOBS, SELF)
    assert "Walk" not in kinds(r) and not r.detection.low and r.state.stat_lag_waiting


def test_the_timer_samples_fast_only_while_the_lines_wait():
    t0 = 1_000_000
    r = wake(core.CoreState(), lagging(1, 200, t0), can_arm=False)
    assert r.state.stat_lag_waiting
    spent = wake(r.state, lagging(1, 200, t0 + core.STAT_LAG_HOLD_USEC), lag_is_anon=None, can_arm=False)
    assert spent.state.stat_lag_since_usec == t0 and not spent.state.stat_lag_waiting


def test_a_shortage_the_lag_cannot_explain_is_not_held():
    # 1 MiB free and 5 MiB unaccounted: under the 12.8 MiB redline either way
    r = wake(core.CoreState(), lagging(1, 5, 1_000_000))
    assert r.detection.reason == "free below redline" and "Walk" in kinds(r) and r.state.stat_lag_since_usec is None


def test_a_kill_of_the_armed_job_disarms_and_a_dry_run_counts_nothing():
    s = run(core.CoreState(), 40).state
    hog = Candidate(HOG, Importance.NORMAL, 150 * MiB, True)
    s2, after = core.walked(s, 1, [(hog, KillResult(HOG, True, False, "cgroup.kill", (4101,)))])
    assert after == (core.Disarm(HOG),) and s2.armed is None
    s3, after = core.walked(s, 1, [(hog, KillResult(HOG, True, True, "none", (4101,)))])
    assert after == () and s3.kills == 0 and s3.last_walk_usec == 1


def test_a_simulated_lowmem_walks_without_a_recheck_and_is_consumed():
    r = run(core.CoreState(), 150, lowmem=True)
    assert r.lowmem_consumed and r.detection.simulated
    assert [(a.recheck_redline_bytes, a.past_gone) for a in r.actions if isinstance(a, core.Walk)] == [(None, True)]


def test_a_stall_share_over_the_limit_is_low():
    s = run(core.CoreState(), 150, 0, events=(), jobs=JOBS).state
    w = core.Wake(2_000_000, snap(150, 2_000_000, stall_usec=1_500_000), (), can_arm=True)
    s = dataclasses.replace(s, history=(snap(150, 0, stall_usec=0),))
    r = core.step(s, CONF, w, JOBS, SELF)
    assert r.detection.low and r.detection.reason.startswith("memory stall 75.0%")
    # nothing to re-check: a job someone else ended ends the walk
    (walk,) = [a for a in r.actions if isinstance(a, core.Walk)]
    assert walk.recheck_redline_bytes is None and walk.past_gone is False


# -- the armed kill and the kernel's own ------------------------------------------------------

def test_an_armed_kill_finishes_the_armed_job_whatever_the_numbers():
    s = run(core.CoreState(), 40).state
    r = run(s, 150, 1000, events=(ev(Source.EBPF, EventKind.ARMED_KILL, pid=4101),))
    assert kinds(r)[:2] == ["Disarm", "Walk"]
    walk = r.actions[1]
    assert [c.job.name for c in walk.ranking.candidates] == ["hog"] and walk.recheck_redline_bytes is None
    assert r.state.armed_kills == 1 and 4101 in r.state.our_victims and r.state.armed is None
    # the task the kernel killed was the job's last: the job is done
    empty = run(s, 150, 1000, events=(ev(Source.EBPF, EventKind.ARMED_KILL, pid=4101),), jobs=[])
    assert kinds(empty) == ["Disarm", "ArmedDone"] and empty.state.kills == 1


def test_an_armed_kill_of_a_task_we_killed_already_or_after_a_disarm_is_no_new_kill():
    s = run(core.CoreState(), 40).state
    s = dataclasses.replace(s, our_victims=(4101,))
    r = run(s, 150, 1000, events=(ev(Source.EBPF, EventKind.ARMED_KILL, pid=4101),), can_track=False)
    assert kinds(r) == ["Note", "Disarm"] and r.state.armed_kills == 0 and r.state.kills == 0   # disarm: 150 MiB free
    r = run(core.CoreState(), 150, 1000, events=(ev(Source.EBPF, EventKind.ARMED_KILL, pid=4102),), can_track=False)
    assert kinds(r) == ["Note"] and r.state.armed_kills == 1 and r.state.kills == 0 and 4102 in r.state.our_victims


def test_the_kernels_own_kills_are_counted_only_when_they_are_its_own_and_in_the_domain():
    from oomkiller.core.thrash import ThrashSample, ThrashState
    onset = ThrashSample(0, 1, 1, 1)
    s = dataclasses.replace(core.CoreState(), our_victims=(4101,),
                            thrash=ThrashState(recent=(onset,), onset=onset, fired=2))
    events = (ev(Source.EBPF, EventKind.KERNEL_OOM_VICTIM, pid=4101),     # our dying victim, marked
              ev(Source.EBPF, EventKind.KERNEL_OOM_VICTIM, pid=7000),     # outside the domain
              ev(Source.EBPF, EventKind.KERNEL_OOM_VICTIM, pid=4103))     # a race lost
    r = run(s, 150, events=events, foreign_pids=frozenset({7000}))
    assert r.state.kernel_kills_seen == 1
    # the kernel relieved the domain: a thrash episode starts over
    assert r.state.thrash.onset is None and r.state.thrash.fired == 2
    assert [a.event.pid for a in r.actions if isinstance(a, core.KernelKill)] == [4103]
    assert sum(isinstance(a, core.Note) for a in r.actions) == 2


def test_a_replaced_domain_forgets_what_it_learned_but_not_the_counts():
    s = dataclasses.replace(run(core.CoreState(), 40).state, kills=3, last_walk_usec=5)
    s = core.domain_replaced(s)
    assert (s.kills, s.last_walk_usec, s.history, s.prev_free_bytes, s.armed) == (3, None, (), None, None)


# -- the adaptive timer --------------------------------------------------------------------------

def test_the_timer_wakes_halfway_to_the_next_line_while_memory_falls():
    def tick(*snaps, **kw) -> int:
        return next_tick_usec(snaps, kw.pop("config", CONF), running=True, can_arm=kw.pop("can_arm", True))
    assert tick() == 1_000_000                                  # nothing seen yet: the seed's period
    headroom = 180 * MiB - TOTAL * 2000 // 10000
    assert tick(snap(200, 0), snap(180, 100_000)) == headroom * 100_000 // (20 * MiB) // 2   # to the arm line
    assert tick(snap(200, 0), snap(180, 100_000), can_arm=False) == \
        (180 * MiB - TOTAL * 500 // 10000) * 100_000 // (20 * MiB) // 2                       # no prearm: the redline
    assert tick(snap(40, 0), snap(30, 100_000)) == (30 * MiB - TOTAL * 500 // 10000) * 100_000 // (10 * MiB) // 2
    assert tick(snap(14, 0), snap(13, 1000)) == MIN_TICK_USEC                   # fast and close: the floor
    # a leak in steps looks steady between two close ticks: the rate is over the kept span
    assert tick(snap(200, 0), snap(180, 90_000), snap(180, 100_000)) == headroom * 100_000 // (20 * MiB) // 2
    assert tick(snap(150, 0), snap(150, 100_000)) == 1_000_000                  # steady
    assert tick(snap(150, 0), snap(149, 1_000_000)) == 1_000_000                # slow: capped at sleep_ms
    assert tick(snap(10, 0), snap(5, 100_000)) == 1_000_000                     # below the redline: the walk decides
    fixed = dataclasses.replace(CONF, adaptive_sleep=False)
    assert tick(snap(200, 0), snap(180, 100_000), config=fixed) == 1_000_000
    assert next_tick_usec((snap(200, 0), snap(180, 100_000)), CONF, running=False, can_arm=True) == 1_000_000


def test_the_history_keeps_one_snapshot_a_pressure_span_old():
    s = core.CoreState()
    for t in range(0, 5_000_001, 500_000):
        s = run(s, 150, t, events=(), can_track=False).state
    assert s.history[0].taken_usec == 3_000_000 and s.history[-1].taken_usec == 5_000_000
