"""The SIGTERM step (term_redline) in the pure core, on plain values, and
its config: which job gets SIGTERM, when, and when nobody does."""
from __future__ import annotations

import dataclasses

import pytest

from oomkiller import config as cfg
from oomkiller.config import Config, Redline
from oomkiller.core import state as core
from oomkiller.core.decide import decide_term, term_target
from oomkiller.core.rank import Policy, rank
from oomkiller.model import EventKind, Job, KillDecision, KillResult, MemorySnapshot, PressureEvent, Proc, Source

MiB = 1 << 20
TOTAL = 256 * MiB
# redline 5% = 12.8 MiB, arm line 20% = 51.2 MiB, term line 25% = 64 MiB
CONF = Config(domain="/arena", protect=("svc",), term_redline=Redline(permyriad=2500))
SELF = 99999
GRACE = CONF.term_grace_ms * 1000


def snap(free_mib: float, t_usec: int = 0) -> MemorySnapshot:
    free = int(free_mib * MiB)
    return MemorySnapshot(domain="/arena", total_bytes=TOTAL, free_bytes=free, used_bytes=TOTAL - free,
                          reclaimable_bytes=0, taken_usec=t_usec)


def job(name: str, mib: int, pid: int) -> Job:
    return Job(name=name, path=f"/cg/arena/{name}", inode=pid * 10, procs=(Proc(pid, name, mib * MiB, 0, "S", 1),),
               v2_id=pid * 10, v2_path=f"/cg2/arena/{name}", charged_bytes=mib * MiB)


HOG, SVC, TWO = job("hog", 150, 4101), job("svc", 20, 4102), job("two", 60, 4103)
JOBS = [HOG, SVC, TWO]


def run(state, free_mib, t_usec=1_000_000, jobs=JOBS, conf=CONF, can_arm=False):
    """One wake as the daemon does it: without jobs, then with them if asked."""
    w = core.Wake(t_usec, snap(free_mib, t_usec), (PressureEvent(Source.TIMER, EventKind.TICK),), can_arm=can_arm)
    res = core.step(state, conf, w, None, SELF)
    if res.need in (core.Need.JOBS, core.Need.WALK_JOBS):
        res = core.step(state, conf, w, jobs, SELF)
    return res


def terms(res) -> list[str]:
    return [a.candidate.job.name for a in res.actions if isinstance(a, core.Term)]


def notes(res) -> list[str]:
    return [a.text for a in res.actions if isinstance(a, core.Note)]


def after_term(res, t_usec, ok=True, dry_run=False):
    (t,) = [a for a in res.actions if isinstance(a, core.Term)]
    return core.termed(res.state, t_usec, t.candidate.job, ok, dry_run)


# -- the pure decisions ------------------------------------------------------------------

def test_decide_term_acts_only_below_the_line_outside_the_grace_and_the_post_kill_delay():
    line = 64 * MiB
    assert decide_term(60 * MiB, 0, 10, None, GRACE, None, 0) == KillDecision(False, "free above term_redline")
    assert not decide_term(64 * MiB, line, 10, None, GRACE, None, 0).act
    assert decide_term(60 * MiB, line, 10, None, GRACE, None, 0) == KillDecision(True, "free below term_redline")
    d = decide_term(60 * MiB, line, 1_000_000, 0, 3_000_000, None, 0)
    assert d == KillDecision(False, "SIGTERM grace: 2000 ms left")
    assert decide_term(60 * MiB, line, 3_000_000, 0, 3_000_000, None, 0).act
    d = decide_term(60 * MiB, line, 3_100_000, 0, 3_000_000, 3_000_000, 500_000)
    assert d == KillDecision(False, "post-kill delay: 400 ms left")


def test_term_target_is_the_top_job_and_never_one_sent_sigterm_already():
    ranking = rank(JOBS, Policy(("svc",), (), (), SELF), TOTAL)
    assert term_target(ranking, ())[0].job == HOG
    top, why = term_target(ranking, {(HOG.path, HOG.inode)})
    assert top is None and why == "top job 'hog' was sent SIGTERM already: it is left to the redline"
    # the same path, another cgroup (made again): another job
    assert term_target(ranking, {(HOG.path, HOG.inode + 1)})[0].job == HOG
    assert term_target(rank([SVC], Policy(("svc",), (), (), SELF), TOTAL), ()) == (None, "no killable job")


# -- the step ------------------------------------------------------------------------------

def test_off_by_default_and_above_the_line_nothing_is_sent():
    assert terms(run(core.CoreState(), 60, conf=Config(domain="/arena"))) == []
    res = run(core.CoreState(), 100)
    assert terms(res) == [] and res.need is core.Need.NOTHING


def test_below_the_term_line_the_top_job_gets_sigterm_once_and_the_grace_holds_everyone():
    t0 = 1_000_000
    first = core.step(core.CoreState(), CONF, core.Wake(t0, snap(60, t0), ()), None, SELF)
    assert first.need is core.Need.JOBS         # the ranking needs the job list
    res = run(core.CoreState(), 60, t0)
    assert terms(res) == ["hog"]
    (t,) = [a for a in res.actions if isinstance(a, core.Term)]
    assert t.reason == "free below term_redline" and t.term_line_bytes == 64 * MiB
    s = after_term(res, t0)
    assert s.terms == 1 and s.term_usec == t0 and s.termed == ((HOG.path, HOG.inode),)
    # within the grace: no one, and no job list read
    for t in (t0 + 10_000, t0 + GRACE - 1):
        r = core.step(s, CONF, core.Wake(t, snap(60, t), ()), None, SELF)
        assert r.need is core.Need.NOTHING and terms(r) == []
        assert any(n.startswith("OOM: no SIGTERM now: SIGTERM grace: ") for n in notes(r))


def test_after_the_grace_a_top_job_that_ignored_its_sigterm_is_left_to_the_redline_and_no_one_else_gets_one():
    t0 = 1_000_000
    s = after_term(run(core.CoreState(), 60, t0), t0)
    r = run(s, 60, t0 + GRACE)
    assert terms(r) == [] and "OOM: no SIGTERM: top job 'hog' was sent SIGTERM already: it is left to the redline" \
        in notes(r)
    # ranked again at most every 250 ms
    r2 = core.step(r.state, CONF, core.Wake(t0 + GRACE + 10_000, snap(60, t0 + GRACE + 10_000), ()), None, SELF)
    assert r2.need is core.Need.NOTHING and terms(r2) == []
    # ... and below the redline the kill applies to it as ever
    r3 = run(r.state, 10, t0 + GRACE + 20_000)
    assert [type(a).__name__ for a in r3.actions] == ["Walk"]
    assert r3.actions[0].ranking.killable()[0].job == HOG


def test_after_the_grace_a_new_top_job_gets_its_sigterm():
    t0 = 1_000_000
    s = after_term(run(core.CoreState(), 60, t0), t0)
    r = run(s, 60, t0 + GRACE, jobs=[SVC, TWO])         # hog exited; two is the top now
    assert terms(r) == ["two"]
    bigger = dataclasses.replace(TWO, charged_bytes=200 * MiB)
    r = run(s, 60, t0 + GRACE, jobs=[HOG, SVC, bigger])  # two outgrew the hog that ignored its SIGTERM
    assert terms(r) == ["two"]


def test_below_the_redline_the_kill_applies_at_once_within_the_grace():
    t0 = 1_000_000
    s = after_term(run(core.CoreState(), 60, t0), t0)
    r = run(s, 10, t0 + 1000)
    assert [type(a).__name__ for a in r.actions] == ["Walk"] and r.actions[0].reason == "free below redline"


def test_the_episode_ends_above_the_line_and_the_next_one_starts_afresh():
    t0 = 1_000_000
    s = after_term(run(core.CoreState(), 60, t0), t0)
    r = run(s, 100, t0 + GRACE)
    assert r.state.termed == () and r.state.terms == 1
    assert terms(run(r.state, 60, t0 + GRACE + 1)) == ["hog"]


def test_the_armed_kill_stays_armed_beside_the_sigterm():
    res = run(core.CoreState(), 40, can_arm=True)        # below the arm line and the term line
    assert [type(a).__name__ for a in res.actions] == ["Arm", "Term"]
    assert res.actions[0].job == HOG and res.state.armed == HOG and terms(res) == ["hog"]
    s = after_term(res, 1_000_000)
    assert s.armed == HOG


def test_no_sigterm_within_the_post_kill_delay():
    t0 = 1_000_000
    s, _ = core.walked(core.CoreState(), t0, [(rank(JOBS, Policy((), (), (), SELF), TOTAL).killable()[0],
                                               KillResult(HOG, True, False, "cgroup.kill", (4101,)))])
    r = run(s, 60, t0 + 100_000, jobs=[SVC, TWO])
    assert terms(r) == [] and any("post-kill delay" in n for n in notes(r))
    assert terms(run(s, 60, t0 + CONF.post_kill_delay_ms * 1000, jobs=[SVC, TWO])) == ["two"]


def test_a_sigterm_that_reached_no_one_starts_no_grace_and_a_dry_run_counts_none():
    t0 = 1_000_000
    res = run(core.CoreState(), 60, t0)
    assert after_term(res, t0, ok=False) == res.state
    s = after_term(res, t0, dry_run=True)
    assert s.terms == 0 and s.termed == ((HOG.path, HOG.inode),) and s.term_usec == t0
    assert core.domain_replaced(after_term(res, t0)).terms == 1


# -- the config ----------------------------------------------------------------------------

def test_term_redline_is_off_by_default_and_read_like_the_redline():
    assert Config().term_line_bytes(TOTAL) == 0
    assert cfg.load(cli={"term_redline": "0"}).term_line_bytes(TOTAL) == 0
    assert cfg.load(cli={"term_redline": "10%"}).term_line_bytes(TOTAL) == TOTAL // 10
    assert cfg.load(environ={"OOMKILLER_TERM_REDLINE": "100M"}).term_line_bytes(TOTAL) == 100 * MiB
    assert cfg.load(cli={"term_grace_ms": "250"}).term_grace_ms == 250
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'term_grace_ms': -1 is outside"):
        cfg.load(cli={"term_grace_ms": -1})
    warned = []
    conf = cfg.load(cmdline="oomkiller.term_redline=10%", warn=warned.append)
    assert conf.term_line_bytes(TOTAL) == 0
    assert warned and "a key read only from the config file, environment or flags" in warned[0]


def test_term_redline_must_be_above_the_redline_and_below_the_domain(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"'term_redline': 5% is at or below redline \(5%, the default\): "
                                              r"it must be above the redline"):
        cfg.load(cli={"term_redline": "5%"})
    # the key set last is the one blamed
    toml = tmp_path / "c.toml"
    toml.write_text('term_redline = "10%"\n')
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'redline': 12% is at or above "
                                              r"term_redline \(10%, "):
        cfg.load(config_file=str(toml), cli={"redline": "12%"})
    # mixed kinds: in bytes, once the domain is known
    conf = cfg.load(cli={"term_redline": "10M"})
    with pytest.raises(cfg.ConfigError, match=r"10M is at or below redline \(5%, the default\) on a domain of 256M, "
                                              r"where they are 12.8M and 10M"):
        conf.check_domain(TOTAL)
    cfg.load(cli={"term_redline": "20M"}).check_domain(TOTAL)
    with pytest.raises(cfg.ConfigError, match=r"'term_redline': 300M is at or above the domain's size \(256M\)"):
        cfg.load(cli={"term_redline": "300M"}).check_domain(TOTAL)


def test_while_memory_falls_the_timer_also_wakes_halfway_to_the_term_line():
    from oomkiller.core.timer import redline_tick_usec
    # 10 MiB fell in 1 s; 20 MiB above the term line (64 MiB): 1 s to it, wake in half
    hist = (snap(94, 0), snap(84, 1_000_000))
    assert redline_tick_usec(hist, CONF, running=True, can_arm=True) == 1_000_000
    hist = (snap(89, 0), snap(79, 1_000_000))
    assert redline_tick_usec(hist, CONF, running=True, can_arm=True) == 750_000
    # 20 MiB/s from 79 MiB: the term line is 15 MiB away, the arm line (51.2 MiB), without the step, 27.8
    hist = (snap(99, 0), snap(79, 1_000_000))
    assert redline_tick_usec(hist, CONF, running=True, can_arm=True) == 375_000
    off = Config(domain="/arena")
    assert redline_tick_usec(hist, off, running=True, can_arm=True) == \
        (79 * MiB - off.arm_line_bytes(TOTAL)) * 1_000_000 // (20 * MiB) // 2


# -- in the daemon --------------------------------------------------------------------------

def test_the_daemon_sends_the_sigterm_records_it_and_counts_it(proc_tree, v2_tree, monkeypatch, caplog):
    import io
    import logging

    from trees import short_arena, short_config

    from oomkiller.daemon import Daemon
    from oomkiller.output import NOTICE
    short_arena(proc_tree, v2_tree)
    v2_tree.cgroup("arena", memory__current=f"{150 * MiB}\n")     # 106 MiB free: under 128M, over 12.8M
    d = Daemon(short_config(proc_tree, v2_tree, term_redline=Redline(bytes_=128 * MiB)), json_out=io.StringIO(),
               clock=lambda: 5_000_000_000)
    sent = []

    def term(c):
        sent.append(c.job.name)
        return KillResult(c.job, ok=True, dry_run=False, method="term", signalled_pids=(4101,))
    monkeypatch.setattr(d.killer, "term", term)
    monkeypatch.setattr(d.killer, "walk", lambda *a, **k: pytest.fail("no kill above the redline"))
    with caplog.at_level(logging.INFO, logger="oomkiller"):
        rec = d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)])
    assert sent == ["hog"] and rec.result == "termed" and rec.decision == "free below term_redline"
    assert rec.victim["job"] == "hog" and rec.attempts[0]["method"] == "term" and rec.attempts[0]["emptied"] is False
    assert rec.shortfall_bytes == 128 * MiB - rec.snapshot["free_bytes"]
    (line,) = [r for r in caplog.records if "SIGTERM" in r.getMessage()]
    assert line.levelno == NOTICE and line.getMessage().startswith("OOM: sent SIGTERM to job 'hog' (1 procs): ")
    # the next wake, within the grace: nothing
    assert d.wake([PressureEvent(Source.TIMER, EventKind.TICK, timestamp_usec=5_000_000)]) is None and sent == ["hog"]
    data = d.info()[1]["term"]
    assert data == {"term_redline": str(128 * MiB), "term_line_bytes": 128 * MiB, "grace_ms": 3000, "terms": 1,
                    "in_episode": 1}
    assert "SIGTERM step: term_redline 128M, grace 3000 ms, SIGTERMs 1 (jobs sent one below the line now: 1)" \
        in d.info()[0]
    d.publish()
    assert d.published["terms"] == {"signalled": 1}
    pytest.importorskip("prometheus_client")
    from oomkiller.metrics import families
    fams = {f.name: f for f in families(d.published, {})}
    # both results from the start, at 0 until they happen (an increase() sees the first)
    assert sorted((s.labels["result"], s.value) for s in fams["oomkiller_terms"].samples
                  if s.name.endswith("_total")) == [("failed", 0), ("signalled", 1)]


def test_no_sigterm_while_free_memory_is_under_the_line_only_by_lagging_statistics():
    # 40 MiB free, under the 64 MiB term line; 200 MiB of the charge not in
    # memory.stat yet, and the processes map none of it: a stream's cache
    t0 = 1_000_000

    def lagging_run(state, t_usec):
        s = dataclasses.replace(snap(40, t_usec), stat_lag_bytes=200 * MiB)
        w = core.Wake(t_usec, s, (PressureEvent(Source.TIMER, EventKind.TICK),), lag_is_anon=False)
        res = core.step(state, CONF, w, None, SELF)
        return core.step(state, CONF, w, JOBS, SELF) if res.need is not core.Need.NOTHING else res

    r = lagging_run(core.CoreState(), t0)
    assert terms(r) == [] and any("memory.stat does not account for yet" in n for n in notes(r))
    assert r.state.stat_lag_since_usec == t0
    # ... for no longer than the redline would wait
    late = lagging_run(r.state, t0 + core.STAT_LAG_HOLD_USEC)
    assert terms(late) == ["hog"]
    # a lag the processes' own counts show as a hog's does not hold it
    s = dataclasses.replace(snap(40, t0), stat_lag_bytes=200 * MiB)
    w = core.Wake(t0, s, (PressureEvent(Source.TIMER, EventKind.TICK),), lag_is_anon=True)
    assert terms(core.step(core.CoreState(), CONF, w, JOBS, SELF)) == ["hog"]
