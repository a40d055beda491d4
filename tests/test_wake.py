"""One wake of the daemon's core on fake trees: what a wake does, in which
order, when no kill is due."""
from __future__ import annotations

import io
import json
import select

import pytest

from oomkiller.config import Config
from oomkiller.core.state import JOB_PSI_REFRESH_USEC, STAT_LAG_HOLD_USEC
from oomkiller.daemon import Daemon
from oomkiller.model import PressureEvent

MiB = 1 << 20


class FakePsi:
    """A PSI source that records which job files it was asked to watch."""
    name = "psi"
    poll_events = select.EPOLLPRI

    def __init__(self) -> None:
        self.calls: list[set[str]] = []
        self.watched: list[tuple[str, set[str]]] = []
        self.changed = True

    def track(self, paths: set[str]) -> tuple[list[int], list[int]]:
        self.calls.append(set(paths))
        return [], []

    def watch_jobs(self, domain_path: str, jobs) -> None:
        self.watched.append((domain_path, set(jobs)))

    def jobs_changed(self) -> bool:
        return self.changed

    def release(self, fds: list[int]) -> None:
        pass

    def fds(self) -> list[int]:
        return []

    def drain(self, fd=None):
        return []

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class FakeArm:
    def __init__(self) -> None:
        self.armed = 0
        self.history: list[tuple[str, int]] = []

    def arm(self, path: str, cgroup_id: int) -> None:
        self.armed = cgroup_id
        self.history.append((path, cgroup_id))

    def disarm(self) -> None:
        self.armed = 0


def _arena(proc_tree, v2_tree, used_mib: int):
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(4101, "hog", anon_kb=150 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/hog\n")
    proc_tree.proc(4102, "svc", anon_kb=20 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/svc\n")
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{used_mib * MiB}\n",
                   memory__stat="anon 1\n")
    v2_tree.cgroup("arena/hog", (4101,), memory__stat=f"anon {150 * MiB}\nshmem 0\n")
    v2_tree.cgroup("arena/svc", (4102,), memory__stat=f"anon {20 * MiB}\nshmem 0\n")


def _daemon(proc_tree, v2_tree, clock):
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root),
                  protect=("svc",), protect_self=False)
    psi, arm, out = FakePsi(), FakeArm(), io.StringIO()
    d = Daemon(conf, json_out=out, sources=[psi], arm=arm, clock=clock)
    d._ep = object()        # the loop's epoll; FakePsi adds no fds to it
    return d, psi, arm, out


def test_a_wake_below_the_arm_line_arms_before_any_trigger_is_made(proc_tree, v2_tree):
    # 230 MiB used of 256: 26 MiB free, under the 20% arm line and over the 5% redline
    _arena(proc_tree, v2_tree, 230)
    now = [1_000_000_000]
    d, psi, arm, out = _daemon(proc_tree, v2_tree, lambda: now[0])
    tick = PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)
    assert d.wake([tick]) is None
    hog = v2_tree.mem / "arena" / "hog"
    assert arm.history == [(str(hog), hog.stat().st_ino)]
    # Writing a PSI trigger takes the kernel 10-19 ms: never in a critical wake.
    assert psi.calls == []
    rec = json.loads(out.getvalue().splitlines()[-1])
    assert (rec["event"], rec["job"], rec["free_bytes"]) == ("armed", "hog", 26 * MiB)
    assert rec["woken_by"][0]["source"] == "timer"
    # the steps of the wake, as the README names them
    t = rec["timings_usec"]
    assert set(t) == {"event_to_wake", "wake_to_armed", "snapshot", "rank", "listing", "arm"}
    assert t["listing"] <= t["rank"] and t["snapshot"] + t["rank"] + t["arm"] == t["wake_to_armed"]


def test_job_triggers_are_refreshed_on_calm_timer_ticks_only(proc_tree, v2_tree):
    _arena(proc_tree, v2_tree, 100)
    now = [1_000_000_000]
    d, psi, arm, _out = _daemon(proc_tree, v2_tree, lambda: now[0])

    def wake(source: str) -> None:
        d.wake([PressureEvent(source, "x", timestamp_usec=now[0] // 1000)])

    wake("memcg")
    assert psi.calls == []                  # not a timer tick
    wake("timer")
    jobs = v2_tree.mem / "arena"
    assert psi.calls == [{str(jobs / "hog" / "memory.pressure"), str(jobs / "svc" / "memory.pressure")}]
    now[0] += (JOB_PSI_REFRESH_USEC - 1) * 1000
    wake("timer")
    assert len(psi.calls) == 1              # not again before the refresh period
    now[0] += 2000
    wake("timer")
    assert len(psi.calls) == 2
    assert arm.history == []                # 156 MiB free: above the arm line


def test_idle_jobs_are_listed_again_only_when_cgroups_came_or_went(proc_tree, v2_tree, monkeypatch):
    _arena(proc_tree, v2_tree, 100)
    now = [1_000_000_000]
    d, psi, _arm, _out = _daemon(proc_tree, v2_tree, lambda: now[0])
    listed = []
    real_jobs = d.jobs
    monkeypatch.setattr(d, "jobs", lambda: listed.append(now[0]) or real_jobs())

    def tick_after(s: float) -> None:
        now[0] += int(s * 1e9)
        d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])

    psi.changed = False
    tick_after(0)
    assert len(listed) == 1 and len(psi.calls) == 1    # the first refresh
    arena = v2_tree.mem / "arena"
    assert psi.watched == [(d.domain.path, {str(arena / "hog"), str(arena / "svc")})]
    for _ in range(6):
        tick_after(10)
    assert len(listed) == 1                 # a minute of calm ticks: never listed again
    psi.changed = True
    tick_after(10)
    assert len(listed) == 2 and len(psi.calls) == 2 and len(psi.watched) == 2


def test_below_the_arm_line_the_ranking_is_redone_at_most_every_250_ms(proc_tree, v2_tree, monkeypatch):
    _arena(proc_tree, v2_tree, 230)
    now = [1_000_000_000]
    d, _psi, arm, _out = _daemon(proc_tree, v2_tree, lambda: now[0])
    listed = []
    real_jobs = d.jobs
    monkeypatch.setattr(d, "jobs", lambda: listed.append(now[0]) or real_jobs())

    def wake_after(ms: int) -> None:
        now[0] += ms * 1_000_000
        d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])

    wake_after(0)
    assert len(listed) == 1 and arm.armed
    for _ in range(20):
        wake_after(10)
    assert len(listed) == 1             # 200 ms of 10 ms ticks: the armed choice stands
    wake_after(60)
    assert len(listed) == 2


def test_a_failure_that_repeats_is_logged_once_a_minute(proc_tree, v2_tree, caplog):
    _arena(proc_tree, v2_tree, 100)
    now = [1_000_000_000]
    d, *_ = _daemon(proc_tree, v2_tree, lambda: now[0])
    caplog.set_level("DEBUG", logger="oomkiller")

    def fail() -> None:
        try:
            raise OSError(19, "No such device")
        except OSError:
            d._failed("wake failed")
    for _ in range(1000):
        fail()
        now[0] += 200_000_000          # a wake every 0.2 s, for 200 s
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "OOM: wake failed" and caplog.records[0].exc_info
    assert msgs[1:] == ["OOM: wake failed: OSError: [Errno 19] No such device "
                        "(299 more times in the last minute)"] * 3, msgs


def _lagging_arena(proc_tree, v2_tree, load: str, anon_kb: int, file_kb: int) -> None:
    # 250 MiB charged of 256, and memory.stat names 1 MiB of it: the kernel
    # has not summed the rest yet (up to 2 s on a 6.18 host)
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(4201, load, anon_kb=anon_kb, shmem_kb=0, swap_kb=0, file_kb=file_kb, cgroup="0::/arena/load\n")
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{250 * MiB}\n",
                   memory__stat=f"anon {MiB}\nfile 0\ninactive_file 0\nactive_file 0\n")
    v2_tree.cgroup("arena/load", (4201,), memory__stat=f"anon {MiB}\nfile 0\n")


@pytest.mark.parametrize("prearm", [False, True])
@pytest.mark.parametrize("load, anon_kb, file_kb, waits", [
    ("cat", 1 << 10, 240 << 10, True),       # a stream: the lag is page cache
    ("hog", 240 << 10, 0, False),            # a fast hog: the lag is its own memory
])
def test_the_redline_waits_only_for_a_lag_no_process_maps(proc_tree, v2_tree, load, anon_kb, file_kb, waits,
                                                         prearm):
    _lagging_arena(proc_tree, v2_tree, load, anon_kb, file_kb)
    now = [1_000_000_000]
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root),
                  protect_self=False, dry_run=not prearm)
    out = io.StringIO()
    arm = FakeArm() if prearm else None
    d = Daemon(conf, json_out=out, sources=[FakePsi()], arm=arm, clock=lambda: now[0])
    walks = []
    # the fake jobs' pids may be anybody's here: nothing is signalled
    d.killer.walk = lambda ranking, *a, **k: walks.append(ranking) or []
    d._ep = object()
    d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])
    decisions = [r for r in map(json.loads, out.getvalue().splitlines()) if r["event"] == "oom_decision"]
    if waits:
        assert decisions == [] and walks == [] and d.state.stat_lag_since_usec == now[0] // 1000
    else:
        assert [r["decision"] for r in decisions] == ["free below redline"], decisions
        assert len(walks) == 1


def test_the_daemon_counts_only_while_the_wait_lasts(proc_tree, v2_tree):
    _lagging_arena(proc_tree, v2_tree, "cat", 1 << 10, 240 << 10)
    now = [1_000_000_000]
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root),
                  protect_self=False, dry_run=True)
    out = io.StringIO()
    d = Daemon(conf, json_out=out, sources=[FakePsi()], arm=None, clock=lambda: now[0])
    d.killer.walk = lambda ranking, *a, **k: []
    d._ep = object()
    counted = []
    count = d.domain.lag_is_anon
    d.domain.lag_is_anon = lambda *a: counted.append(now[0]) or count(*a)
    d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])
    assert counted and d.state.stat_lag_waiting
    # the wait spent: no count, and the redline acts on what it has
    now[0] += STAT_LAG_HOLD_USEC * 1000
    counted.clear()
    d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])
    decisions = [r for r in map(json.loads, out.getvalue().splitlines()) if r["event"] == "oom_decision"]
    assert counted == [] and [r["decision"] for r in decisions] == ["free below redline"]


def test_with_a_job_armed_the_redline_waits_where_the_counts_cannot_tell(proc_tree, v2_tree):
    _lagging_arena(proc_tree, v2_tree, "hog", 240 << 10, 0)
    v2_tree.cgroup("arena", memory__current=f"{220 * MiB}\n")      # 36 MiB free: under the arm line
    now = [1_000_000_000]
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root), protect_self=False)
    out, arm = io.StringIO(), FakeArm()
    d = Daemon(conf, json_out=out, sources=[FakePsi()], arm=arm, clock=lambda: now[0])
    walks = []
    d.killer.walk = lambda ranking, *a, **k: walks.append(ranking) or []
    d._ep = object()
    d.domain.lag_is_anon = lambda *a: None      # a pid of another namespace, a subtree too big, ...
    d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])
    assert arm.armed and d.state.armed is not None
    v2_tree.cgroup("arena", memory__current=f"{250 * MiB}\n")
    now[0] += 50_000_000
    d.wake([PressureEvent("timer", "tick", timestamp_usec=now[0] // 1000)])
    assert walks == [] and d.state.stat_lag_waiting
