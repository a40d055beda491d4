"""The seed's lines, byte for byte, from values that produce them."""
from oomkiller import report
from oomkiller.model import Candidate, Importance, Job, KillResult, MemorySnapshot, Proc, Ranking

M = 1 << 20


def proc(pid, mb, name, state="S"):
    return Proc(pid=pid, name=name, committed_bytes=mb * M + 4096, oom_score_adj=0, state=state, start_ticks=pid)


def cand(inode, name, procs=(), killable=True, descendants=0):
    return Candidate(Job(name=name, path="/c/" + name, inode=inode, procs=tuple(procs), descendants=descendants),
                     Importance.NORMAL, 0, killable)


def test_sizes():
    assert report.format_size(0) == "0B"
    assert report.format_signed(0) == "+0B"
    assert report.format_signed(-int(12.4 * M)) == "-12.4M"
    assert report.format_size(512 * 1024) == "512K"
    assert report.format_size(1536) == "1.5K"
    assert report.format_size(3 << 30) == "3G"


def test_free_line():
    snap = MemorySnapshot("host", int(8072.4 * M), int(5915.8 * M), 0, 0, 0)
    assert report.free_line(snap, 0) == "OOM: 5915.8M free (+0B) / 8072.4M total"
    snap = MemorySnapshot("host", int(8072.4 * M), int(45.8 * M), 0, 0, 0)
    assert report.free_line(snap, -int(12.4 * M)) == "OOM: 45.8M free (-12.4M) / 8072.4M total"


def test_lowmem_and_walk_lines_match_the_seed():
    procs = [proc(1043, 397, "bin/devmgr"), proc(2107, 88, "devhost:pci#1:8086:1916"),
             proc(1297, 12, "virtual-console"), proc(31584, 9, "dart:weather_agent"), proc(77, 0, "tiny")]
    lines = report.lowmem_lines(524288, procs)
    assert lines == [
        "OOM: oom_lowmem(shortfall_bytes=524288) called",
        "OOM: Process mapped committed bytes:",
        "OOM:   proc  1043  397M 'bin/devmgr'",
        "OOM:   proc  1297   12M 'virtual-console'",
        "OOM:   proc  2107   88M 'devhost:pci#1:8086:1916'",
        "OOM:   proc 31584    9M 'dart:weather_agent'",
        "OOM: Finding a job to kill...",
    ]
    victim = cand(29254, "agent", [proc(32093, 14, "dart:mi_dashboard.dartx", "R")])
    r = Ranking((cand(57930, "story-8cf82cb9f742d9ecc77f1d449", killable=False),
                 cand(37434, "story-10293ae401bc0358b3ce52d2a", killable=False),
                 victim, cand(29247, "agent"), cand(11, "x", killable=False), cand(29240, "agent"),
                 cand(29233, "agent"), cand(29226, "agent")))
    res = KillResult(victim.job, True, False, "cgroup.kill", (32093,))
    assert report.walk_lines(r, [(victim, res)]) == [
        "OOM:   (skip) job  57930 'story-8cf82cb9f742d9ecc77f1d449'",
        "OOM:   (skip) job  37434 'story-10293ae401bc0358b3ce52d2a'",
        "OOM:   *KILL* job  29254 'agent'",
        "OOM:        + proc 32093  run 'dart:mi_dashboard.dartx'",
        "OOM:        = 1 running procs (1 total), 0 jobs",
        "OOM:   (next) job  29247 'agent'",
        "OOM:   (next) job  29240 'agent'",
        "OOM:   (next) job  29233 'agent'",
    ]


def test_failed_attempt_then_kill_and_nothing_to_kill():
    gone, ok = cand(5, "gone", [proc(9, 1, "a")]), cand(6, "next", [proc(10, 1, "b"), proc(11, 1, "c", "Z")], descendants=2)
    r = Ranking((gone, ok))
    lines = report.walk_lines(r, [(gone, KillResult(gone.job, False, False, "none", error="cgroup vanished before the kill")),
                               (ok, KillResult(ok.job, True, True, "none", (10, 11)))])
    assert lines == ["OOM:   (fail) job      5 'gone': cgroup vanished before the kill",
                     "OOM:   *KILL* job      6 'next'",
                     "OOM:        + proc    10  run 'b'",
                     "OOM:        + proc    11 dead 'c'",
                     "OOM:        = 1 running procs (2 total), 2 jobs",
                     "OOM:        (dry run: nothing was killed)"]
    assert report.walk_lines(Ranking((cand(3, "e", killable=False),)), []) == [
        "OOM:   (skip) job      3 'e'", "OOM: no killable job found"]


def test_a_job_signalled_but_not_emptied_is_not_logged_as_empty():
    c = cand(7, "paused", [proc(40, 64, "sleep")])
    stuck = KillResult(c.job, True, False, "signal", (40,), "1 procs left after 5000 ms: [40]",
                       freed_bytes=64 * M, left_pids=(40,))
    assert not stuck.emptied
    assert report.outcome_line(c, stuck, 5_130_000) == (
        "OOM: signalled job 'paused' by signal: 1 procs, 64M freed, NOT EMPTY: "
        "1 procs left after 5000 ms: [40], 5130.0 ms after the wake")
    rec = report.result_record(stuck)
    assert (rec["ok"], rec["emptied"], rec["left_pids"], rec["signal_to_empty_usec"]) == (True, False, [40], 0)
    done = KillResult(c.job, True, False, "cgroup.kill", (40,), freed_bytes=64 * M, signal_to_empty_usec=5600)
    assert done.emptied and report.result_record(done)["emptied"] is True
    assert report.outcome_line(c, done, 7300) == (
        "OOM: killed job 'paused' by cgroup.kill: 1 procs, 64M freed, empty 5.6 ms after the signal, "
        "7.3 ms after the wake")


def test_names_cannot_forge_lines():
    assert report.printable("dart:mi_dashboard.dartx") == "dart:mi_dashboard.dartx"
    assert report.printable("caf\u00e9 story") == "caf\u00e9 story"
    assert report.printable("x\nOOM: killed j") == "x\\nOOM: killed j"
    assert report.printable("a\\nb") == "a\\\\nb"      # a real backslash cannot pass for an escape
    assert report.printable("e\x1b[1A\x1b[2K\r\t\x7f\u202e\U000e0001") == "e\\x1b[1A\\x1b[2K\\r\\t\\x7f\\u202e\\U000e0001"
    forged = cand(8, "empty\rOOM:   *KILL* job 1 'sshd.service'", killable=False)
    victim = cand(9, "batch", [proc(41, 24, "x\nOOM: killed j", "R")])
    lines = report.lowmem_lines(0, victim.job.procs)
    lines += report.walk_lines(Ranking((forged, victim)), [(victim, KillResult(victim.job, True, False, "signal", (41,)))])
    lines.append(report.outcome_line(victim, KillResult(victim.job, True, False, "signal", (41,)), 0))
    lines += report.format_ranking(Ranking((forged, victim))).split("\n")
    assert all("\n" not in line and "\r" not in line for line in lines), lines
    assert "OOM:   proc    41   24M 'x\\nOOM: killed j'" in lines
    assert "OOM:   (skip) job      8 'empty\\rOOM:   *KILL* job 1 'sshd.service''" in lines
    assert "OOM:        + proc    41  run 'x\\nOOM: killed j'" in lines
    assert [line for line in lines if line.startswith("OOM:   *KILL*")] == ["OOM:   *KILL* job      9 'batch'"]


def test_rank_lines_escape_what_a_cgroup_owner_named():
    from oomkiller.model import Candidate, Importance, Job, Ranking
    job = Job(name="evil\n  2. (kill) job", path="/x", inode=7)
    c = Candidate(job=job, importance=Importance.NORMAL, score_bytes=0, killable=False,
                  reasons=("user.oomd_omit of 'a\nforged line' ignored",))
    out = report.format_ranking(Ranking((c,)))
    assert len(out.splitlines()) == 1 and "\\n" in out


def test_the_pressure_limit_line_says_when_dirty_pages_hold_it():
    base = {"limit_permyriad": 6000, "dirty_hold_permyriad": 1250}
    assert report.pressure_text(dict(base, dirty_bytes=200 << 20, held_by_dirty=True), True) == \
        "60% of full stall, held: 200M dirty or under writeback >= 12.5% of the domain (the stall is the disk's)"
    assert report.pressure_text(dict(base, dirty_bytes=1 << 20, held_by_dirty=False), True) == \
        "60% of full stall; 1M dirty or under writeback (it holds at 12.5% of the domain, " \
        "with at most half of it not file cache)"
    # no pressure file: off, whatever the dirty pages
    assert report.pressure_text(dict(base, dirty_bytes=200 << 20, held_by_dirty=True), False) == \
        "60% of full stall (no pressure file: off)"
    assert report.pressure_text(dict(base, dirty_bytes=-1), True) == "60% of full stall"
    assert report.pressure_text(dict(base, limit_permyriad=0), True) == "off"
    assert report.pressure_text(None, True) == "unknown"
    assert report.pressure_text(dict(base, dirty_hold_permyriad=0, dirty_bytes=200 << 20), True) == \
        "60% of full stall; dirty pages never hold it (pressure_dirty_hold 0)"
