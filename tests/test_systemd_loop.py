"""The daemon's loop and systemd: READY once the loop runs, STATUS on a
change, and the watchdog's pings sent by the loop itself, so a loop that
stalls stops them. A real AF_UNIX datagram socket stands for systemd."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

from oomkiller.config import Config
from oomkiller.daemon import Daemon
from oomkiller.notify import Notifier

MiB = 1 << 20


class Listener:
    """systemd's side: every datagram with the monotonic time it came."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()

    def times(self, key: str) -> list[float]:
        return [t for t, msg in self.got if key in msg.split("\n")]

    def values(self, key: str) -> list[str]:
        return [line[len(key) + 1:] for _, msg in self.got for line in msg.split("\n") if line.startswith(key + "=")]


class StallSource:
    """A source whose drain blocks for ``stall_s`` once its pipe is written:
    a wake that hangs in the loop."""

    name = "stall"

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stalled: tuple[float, float] | None = None

    def fds(self) -> list[int]:
        return [self.r]

    def drain(self, fd=None):
        os.read(self.r, 100)
        t0 = time.monotonic()
        time.sleep(self.stall_s)
        self.stalled = (t0, time.monotonic())
        return []

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _arena(proc_tree, v2_tree) -> None:
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    proc_tree.proc(4101, "hog", anon_kb=150 << 10, shmem_kb=0, swap_kb=0, cgroup="0::/arena/hog\n")
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{100 * MiB}\n", memory__stat="anon 1\n")
    v2_tree.cgroup("arena/hog", (4101,), memory__stat=f"anon {150 * MiB}\nshmem 0\n")


def _run(tmp_path, proc_tree, v2_tree, *, sleep_ms: int, watchdog_usec: int, sources=(), actions=(), metrics=None):
    """Run the loop in this thread (it owns the signal handlers) while
    ``actions`` (seconds after the start, callable) run beside it; the loop
    stops after the last one. The datagrams systemd would have got."""
    _arena(proc_tree, v2_tree)
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root), protect_self=False,
                  sleep_ms=sleep_ms, control_socket=str(tmp_path / "control.sock"))
    listener = Listener(str(tmp_path / "notify"))
    warnings: list[str] = []
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": str(watchdog_usec)},
                        warn=warnings.append)
    d = Daemon(conf, sources=list(sources), notifier=notifier, metrics=metrics)

    def script() -> None:
        t0 = time.monotonic()
        for at, act in actions:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            act(d)
        d._quit = True
        d._nudge()
    t = threading.Thread(target=script, daemon=True)
    t.start()
    start = time.monotonic()
    try:
        d.run()
    finally:
        t.join(5)
        time.sleep(0.1)
        listener.close()
        notifier.close()
    assert warnings == []
    return listener, start, d


def test_ready_with_status_then_pings_at_half_the_period_even_when_the_timer_sleeps_long(tmp_path, proc_tree,
                                                                                        v2_tree):
    # The timer would sleep 60 s: the pings must not wait for it.
    got, start, _d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=60_000, watchdog_usec=200_000,
                          actions=[(1.0, lambda d: None)])
    first = got.got[0][1].split("\n")
    assert first[0] == "READY=1" and "WATCHDOG=1" in first
    status = got.values("STATUS")[0]
    assert status.startswith("watching /arena, redline 5%") and "sources timer" in status, status
    pings = got.times("WATCHDOG=1")
    # 1 s at one ping per 100 ms
    assert 7 <= len(pings) <= 13, pings
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.3, gaps
    assert got.got[-1][1].startswith("STOPPING=1\nSTATUS=stopping after 0 kills")


def test_a_stalled_loop_stops_pinging_and_pings_again_once_it_runs(tmp_path, proc_tree, v2_tree):
    stall = StallSource(stall_s=1.2)
    try:
        got, start, _d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=1000, watchdog_usec=200_000, sources=[stall],
                              actions=[(0.6, lambda d: os.write(stall.w, b"x")), (2.4, lambda d: None)])
    finally:
        stall.close()
    assert stall.stalled is not None
    t0, t1 = stall.stalled
    pings = got.times("WATCHDOG=1")
    during = [p for p in pings if t0 + 0.05 < p < t1 - 0.05]
    assert during == [], (during, stall.stalled)
    assert len([p for p in pings if p < t0]) >= 4          # it pinged before the stall
    assert len([p for p in pings if p > t1]) >= 4          # and does again after it


def test_status_follows_a_stop_and_a_start(tmp_path, proc_tree, v2_tree):
    got, _start, _d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=1000, watchdog_usec=2_000_000,
                           actions=[(0.3, lambda d: d.handle("stop")), (0.6, lambda d: d.handle("start")),
                                    (0.9, lambda d: None)])
    states = [s.split(",")[0] for s in got.values("STATUS")]
    assert states == ["watching /arena", "stopped (`oomkiller start` starts it)", "watching /arena",
                      "stopping after 0 kills"], states


class CountingSource:
    """A source whose counters are read only when the loop publishes them."""

    name = "ebpf"

    def __init__(self) -> None:
        self.reads = 0

    def fds(self) -> list[int]:
        return []

    def drain(self, fd=None):
        return []

    def stats(self) -> dict:
        return {}

    @property
    def lost_perf(self) -> int:
        self.reads += 1
        return 0

    rate_limited = outside_domain = lost_perf

    def close(self) -> None:
        pass


def test_the_loop_publishes_its_counters_only_for_a_metrics_endpoint(tmp_path, proc_tree, v2_tree):
    # Publishing reads the eBPF counters' maps: at idle, with no endpoint
    # to serve them, that was a sixth of a tick's cost.
    quiet = CountingSource()
    _got, _start, d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=100, watchdog_usec=60_000_000, sources=[quiet],
                           actions=[(1.2, lambda d: None)])
    assert d.wakes >= 5 and d.published is None and quiet.reads == 0


def test_the_loop_publishes_its_counters_for_a_metrics_endpoint(tmp_path, proc_tree, v2_tree):
    served = CountingSource()
    _got, _start, d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=100, watchdog_usec=60_000_000, sources=[served],
                           actions=[(1.2, lambda d: None)], metrics=object())
    assert d.published is not None and d.published["ebpf"] == {"lost_perf": 0, "rate_limited": 0,
                                                                 "outside_domain": 0}
    assert served.reads >= 3


def test_the_collector_runs_on_the_loop_while_calm_and_is_given_back_after(tmp_path, proc_tree, v2_tree,
                                                                             monkeypatch):
    """While the loop runs, the garbage collector never starts by itself
    (not in a walk, not in the lister's listing while an event waits for
    the GIL): the loop makes its passes while memory is plenty. After the
    loop, the collector is as it was."""
    import gc
    from oomkiller import daemon as daemon_mod
    monkeypatch.setattr(daemon_mod, "GC_CALM_EVERY_USEC", 200_000)
    seen = []

    def check(d) -> None:
        # the loop has started (on a loaded machine its start-up may take
        # longer than the first action's delay)
        end = time.monotonic() + 10
        while d.wakes < 1 and time.monotonic() < end:
            time.sleep(0.01)
        seen.append((gc.isenabled(), d.gc_passes, sys.getswitchinterval()))
    assert gc.isenabled()
    switch = sys.getswitchinterval()
    _got, _start, d = _run(tmp_path, proc_tree, v2_tree, sleep_ms=50, watchdog_usec=60_000_000,
                           actions=[(0.1, check), (1.5, check)])
    assert seen[0] == (False, 0, daemon_mod.SWITCH_INTERVAL_S)
    assert seen[1][0] is False and seen[1][1] >= 2
    assert gc.isenabled() and gc.get_freeze_count() == 0 and sys.getswitchinterval() == switch
    assert "garbage collected" in d.info()[0]


def test_the_collector_waits_while_memory_is_short_but_not_for_ever(tmp_path, proc_tree, v2_tree, monkeypatch):
    from oomkiller import daemon as daemon_mod
    monkeypatch.setattr(daemon_mod, "GC_CALM_EVERY_USEC", 100_000)
    monkeypatch.setattr(daemon_mod, "GC_EVERY_USEC", 1_000_000)
    # 30 MiB free of the arena's 256: under the arm line, over the redline
    _arena(proc_tree, v2_tree)
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{226 * MiB}\n", memory__stat="anon 1\n")
    conf = Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root), protect_self=False,
                  control_socket=str(tmp_path / "control.sock"))
    d = Daemon(conf)
    now = [10_000_000]
    d.clock = lambda: now[0] * 1000
    d.last_snapshot = d.domain.snapshot(d.now_usec())
    d._collected_usec = now[0]
    now[0] += 500_000
    d._collect()
    assert d.gc_passes == 0                     # short: not yet
    now[0] += 600_000
    d._collect()
    assert d.gc_passes == 1                     # but at least every GC_EVERY_USEC
    # 6 MiB free: below the redline a walk may be due at any moment
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{250 * MiB}\n", memory__stat="anon 1\n")
    d.last_snapshot = d.domain.snapshot(d.now_usec())
    now[0] += 3_000_000
    d._collect()
    assert d.gc_passes == 1
    v2_tree.cgroup("arena", memory__max=f"{256 * MiB}\n", memory__current=f"{50 * MiB}\n", memory__stat="anon 1\n")
    d.last_snapshot = d.domain.snapshot(d.now_usec())
    now[0] += 150_000
    d._collect()
    assert d.gc_passes == 2                     # calm again: every GC_CALM_EVERY_USEC
