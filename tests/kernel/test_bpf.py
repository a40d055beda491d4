"""The eBPF source against the real kernel: compile, load, attach, events, armed kill.

Reclaim is made inside arenas only: a dd that writes a file larger than the
arena's limit (its page cache is charged to the arena and reclaimed, without
an OOM kill), and python hogs whose cap is above the limit.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from oomkiller.sources import bpf
from oomkiller.sources.bpf import BpfSource, PreArm, SourceUnavailable
from oomkiller_bench.arena import Arena

MIB = 1 << 20
ALL_TRACEPOINTS = sorted(tp for tps in bpf.TRACEPOINT_FLAGS.values() for tp in tps)


def arena_name(tag: str) -> str:
    return f"oomk-bpf-{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def source():
    src = BpfSource()
    src.start()
    yield src
    src.close()


@pytest.fixture
def disk_dir():
    # Page cache of a disk file is reclaimable; tmpfs pages would be shmem,
    # which no reclaim can free without swap.
    path = tempfile.mkdtemp(prefix="oomk-bpf-", dir="/var/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def collect(src: BpfSource, done, timeout_s: float) -> list[tuple[int, object]]:
    """(receipt time in usec, event) pairs, waiting on the source's fds as the
    daemon's selector does, until ``done(events)`` or the timeout."""
    got: list[tuple[int, object]] = []
    end = time.monotonic() + timeout_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return got
        select.select(src.fds(), [], [], min(left, 0.05))
        now_usec = time.monotonic_ns() // 1000
        got += [(now_usec, ev) for ev in src.drain()]
        if done([ev for _t, ev in got]):
            return got


def writer(arena: Arena, job, path: str, mib: int) -> subprocess.Popen:
    return arena.spawn(job, ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_program_compiles_loads_and_attaches(source):
    stats = source.stats()
    assert stats["live"]
    assert stats["tracepoints"] == ALL_TRACEPOINTS
    assert stats["attached_tracepoints"] == len(ALL_TRACEPOINTS)
    fds = source.fds()
    assert fds and all(fd >= 0 for fd in fds)
    assert len(set(fds)) == len(fds)
    assert PreArm(source).armed == 0


def test_memcg_reclaim_in_an_arena_is_reported_with_the_job_cgroup(source, disk_dir):
    source.drain()
    with Arena(arena_name("reclaim"), 64 * MIB) as arena:
        job = arena.job("writer")
        job_id = job.v2_id
        dd = writer(arena, job, os.path.join(disk_dir, "data"), 160)
        got = collect(source, lambda evs: any(e.cgroup_id == job_id for e in evs), 30)
        assert dd.wait(timeout=60) == 0
        got += collect(source, lambda evs: False, 0.1)
        assert arena.kernel_oom_kills() == 0
    ours = [(t, e) for t, e in got if e.cgroup_id == job_id]
    assert ours, f"no event for cgroup {job_id}; saw {[e for _t, e in got][:5]}"
    received_usec, first = ours[0]
    # The first reclaim after a quiet period is news at once, before any stall sum.
    assert first.kind == "memcg_reclaim"
    assert first.source == "ebpf"
    assert first.pid == dd.pid
    assert f"tid={dd.pid}" in first.detail and "comm=dd" in first.detail
    now_usec = time.monotonic_ns() // 1000
    assert 0 < first.timestamp_usec <= received_usec <= now_usec
    # Delivery is about 1 ms here; a loaded CI host gets a wide margin.
    assert received_usec - first.timestamp_usec < 1_000_000
    assert {e.kind for _t, e in ours} <= {"memcg_reclaim", "stall"}


def test_reclaim_burst_is_rate_limited_per_cgroup(disk_dir):
    rate_limit_usec = 50_000
    # A 1 us threshold makes every reclaim end want to send a stall event.
    src = BpfSource(stall_threshold_usec=1, window_usec=100_000, rate_limit_usec=rate_limit_usec)
    src.start()
    try:
        before = src.rate_limited
        with Arena(arena_name("burst"), 64 * MIB) as arena:
            job = arena.job("writer")
            job_id = job.v2_id
            dd = writer(arena, job, os.path.join(disk_dir, "data"), 384)
            got = []
            while dd.poll() is None:
                got += collect(src, lambda evs: False, 0.05)
            assert dd.returncode == 0
            got += collect(src, lambda evs: False, 0.1)
        suppressed = src.rate_limited - before
        ours = [e for _t, e in got if e.cgroup_id == job_id]
        assert len(ours) >= 2, ours
        assert ours[0].kind == "memcg_reclaim"
        assert any(e.kind == "stall" and e.stall_usec > 0 for e in ours)
        gaps = [b.timestamp_usec - a.timestamp_usec for a, b in zip(ours, ours[1:])]
        # ns truncated to us can shave one us off an interval.
        assert min(gaps) >= rate_limit_usec - 1, gaps
        assert suppressed > len(ours)
        stats = src.stats()
        assert stats["rate_limited"] >= suppressed and "lost_events" not in stats
        assert stats["domain_filter"] == "off: the host is the domain" and stats["outside_domain"] == 0
    finally:
        src.close()


def test_reclaim_outside_a_cgroup_domain_never_reaches_user_space(disk_dir):
    # Two arenas: the domain, and another cgroup reclaiming beside it. The
    # program filters by the domain's v2 cgroup before it sends anything.
    with Arena(arena_name("dom"), 64 * MIB) as dom, Arena(arena_name("out"), 64 * MIB) as out:
        src = BpfSource(stall_threshold_usec=1, window_usec=100_000, rate_limit_usec=10_000,
                        domain_v2=dom.v2_path)
        src.start()
        try:
            assert src.stats()["domain_filter"] == dom.v2_path
            outside = out.job("writer")
            dd = writer(out, outside, os.path.join(disk_dir, "out"), 256)
            got = []
            while dd.poll() is None:
                got += collect(src, lambda evs: False, 0.05)
            assert dd.returncode == 0
            got += collect(src, lambda evs: False, 0.1)
            assert not [e for _t, e in got if e.cgroup_id == outside.v2_id]
            filtered = src.outside_domain
            assert filtered > 0
            inside = dom.job("writer")
            dd = writer(dom, inside, os.path.join(disk_dir, "in"), 256)
            got = []
            while dd.poll() is None:
                got += collect(src, lambda evs: False, 0.05)
            got += collect(src, lambda evs: False, 0.1)
            ours = [e for _t, e in got if e.cgroup_id == inside.v2_id]
            assert ours and {e.kind for e in ours} <= {"memcg_reclaim", "stall", "kswapd", "direct_reclaim"}
            assert not [e for _t, e in got if e.cgroup_id == outside.v2_id]
            # the domain replaced by another cgroup: the filter follows it
            src.set_domain(out.v2_path)
            assert src.stats()["domain_filter"] == out.v2_path
            dd = writer(out, outside, os.path.join(disk_dir, "out2"), 256)
            got = []
            while dd.poll() is None:
                got += collect(src, lambda evs: False, 0.05)
            got += collect(src, lambda evs: False, 0.1)
            assert [e for _t, e in got if e.cgroup_id == outside.v2_id]
        finally:
            src.close()


def test_armed_cgroup_dies_at_its_failed_reclaim_before_the_kernel_oom_killer(source):
    source.drain()
    with Arena(arena_name("armed"), 128 * MIB) as arena:
        victim, keeper = arena.job("victim"), arena.job("keeper")
        # the hog runs one cgroup below the armed job: the whole subtree is armed
        inner = arena.job("victim/inner")
        victim_id, inner_id = victim.v2_id, inner.v2_id
        idle = arena.spawn_idle(keeper)
        prearm = PreArm(source)
        prearm.arm(victim.v2_path, victim_id)
        try:
            assert prearm.armed == victim_id
            hog = arena.spawn_hog(inner, chunk_bytes=4 * MIB, cap_bytes=256 * MIB)
            rc = hog.wait(timeout=30)
            got = collect(source, lambda evs: any(e.kind == "armed_kill" and e.pid == hog.pid for e in evs), 5)
            assert prearm.armed == 0        # one shot: the program cleared the map as it fired
        finally:
            prearm.disarm()
        assert prearm.armed == 0
        assert rc == -signal.SIGKILL
        assert arena.kernel_oom_kills() == 0
        time.sleep(0.2)
        assert idle.poll() is None
    kills = [e for _t, e in got if e.kind == "armed_kill"]
    assert kills, [e for _t, e in got]
    assert kills[0].pid == hog.pid
    assert kills[0].cgroup_id == inner_id
    assert f"armed_cgroup_id={victim_id}" in kills[0].detail
    assert "reclaim=memcg_reclaim" in kills[0].detail and "signal_rc=0" in kills[0].detail
    assert source.stats()["signal_failed"] == 0


def test_disarmed_hog_meets_the_kernel_oom_killer_and_that_is_reported(source):
    source.drain()
    with Arena(arena_name("lost"), 64 * MIB) as arena:
        job = arena.job("hog")
        job_id = job.v2_id
        hog = arena.spawn_hog(job, chunk_bytes=4 * MIB, cap_bytes=192 * MIB)
        assert hog.wait(timeout=30) == -signal.SIGKILL
        got = collect(source, lambda evs: any(e.kind == "kernel_oom_victim" and e.pid == hog.pid for e in evs), 5)
        assert arena.kernel_oom_kills() == 1
    victims = [e for _t, e in got if e.kind == "kernel_oom_victim" and e.pid == hog.pid]
    assert victims, [e for _t, e in got]
    fields = dict(kv.split("=", 1) for kv in victims[0].detail.split())
    assert victims[0].cgroup_id == job_id      # the hog ran the memcg OOM killer itself
    assert fields["comm"].startswith("python")
    # The victim held most of the 64 MiB limit in anonymous memory.
    assert 32 * MIB < int(fields["anon_rss_bytes"]) <= 64 * MIB
    reclaim = [e for _t, e in got if e.kind == "memcg_reclaim" and e.cgroup_id == job_id]
    assert reclaim and reclaim[0].timestamp_usec <= victims[0].timestamp_usec


def test_event_struct_size_matches_the_header(monkeypatch):
    import bcc
    # the headers the daemon compiles against: on a host with no
    # /lib/modules/RELEASE (nor kheaders), a tree under /usr/src
    headers = bpf.find_kernel_headers()
    if headers.source_dir:
        monkeypatch.setenv("BCC_KERNEL_SOURCE", headers.source_dir)
    cflags = [f"-I{bpf.DEFAULT_BPF_DIR}", *(f"-I{d}" for d in headers.include_dirs)]
    ok = bcc.BPF(text=bpf.layout_check_source().encode(), cflags=cflags)
    ok.cleanup()
    # The check can fail: a mirror 8 bytes short does not compile.
    with pytest.raises(Exception, match="compile"):
        bcc.BPF(text=bpf.layout_check_source(event_size=bpf.EVENT_SIZE - 8).encode(), cflags=cflags)


def test_program_text_holds_the_cflags_and_the_sources():
    src = BpfSource(stall_threshold_usec=3000, window_usec=70_000, rate_limit_usec=40_000)
    text = src.program_text()
    for flag in src.cflags():
        assert flag in text.splitlines()[0]
    assert "-DSTALL_THRESHOLD_NS=3000000ULL" in text
    assert "-DRATE_LIMIT_NS=40000000ULL" in text
    assert "-DHAVE_TP_MEMCG_RECLAIM" in text and "-DMARK_VICTIM_RSS" in text
    assert "struct oom_event {" in text
    assert "TRACEPOINT_PROBE(oom, mark_victim)" in text


def test_broken_program_is_unavailable_with_the_compiler_error(tmp_path):
    shutil.copy(os.path.join(bpf.DEFAULT_BPF_DIR, bpf.HEADER_FILE), tmp_path)
    (tmp_path / bpf.PROGRAM_FILE).write_text('#include "oomkiller.h"\nint broken( {\n')
    with pytest.raises(SourceUnavailable, match="failed to compile: .*error"):
        BpfSource(bpf_dir=str(tmp_path)).start()


def test_missing_kernel_headers_is_unavailable_with_what_to_install(tmp_path):
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        pytest.skip("this kernel carries its own headers (CONFIG_IKHEADERS)")
    with pytest.raises(SourceUnavailable, match=f"no kernel headers for {os.uname().release}.*linux-headers"):
        BpfSource(modules_dir=str(tmp_path), usr_src=str(tmp_path)).start()


COMPILE_WITHOUT_MODULES = """
import os
from oomkiller.sources.bpf import BpfSource
release = os.uname().release
assert not os.path.exists(f"/lib/modules/{release}/build"), "the mount did not hide it"
src = BpfSource()
src.start()
print(src.headers.how, src.headers.source_dir, src.stats()["attached_tracepoints"], os.environ.get("BCC_KERNEL_SOURCE"))
src.close()
"""


def test_compiles_from_usr_src_headers_with_nothing_in_lib_modules():
    # A host running a kernel its distribution does not ship: no
    # /lib/modules/RELEASE/build, Debian's headers of another version under
    # /usr/src. In a private mount namespace an empty tmpfs hides this host's
    # /lib/modules/RELEASE from the compile, and from no one else.
    try:
        bpf.find_kernel_headers(modules_dir="/nonexistent")
    except SourceUnavailable as e:
        pytest.skip(f"no header tree under /usr/src: {e}")
    release = os.uname().release
    hide = (f"mount -t tmpfs oomk-test-empty /lib/modules/{release} && "
            if os.path.isdir(f"/lib/modules/{release}") else "")
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          f'{hide}exec "$0" -c "$1"', sys.executable, COMPILE_WITHOUT_MODULES],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    how, source_dir, attached, env_after = out.stdout.split()
    assert how == "usr-src" and source_dir.startswith("/usr/src/linux-headers-")
    assert int(attached) >= 2
    assert env_after == "None"          # set for the compile only
