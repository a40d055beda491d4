"""The daemon's eBPF source is compiled by a child: the daemon never maps bcc or LLVM.

The reclaim is a dd in a job of the test's arena (the domain) writing a file
larger than the arena's limit: its page cache is reclaimed, no OOM kill.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from kproc import wait_for

from oomkiller.footprint import mappings

# What the compile brings in: bcc's own library and its compiler.
COMPILER_MAPPINGS = ("libbcc", "libLLVM", "libclang")


def children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def test_the_daemon_holds_the_program_without_the_compiler_and_events_arrive(arena, daemon, tmp_path):
    d = daemon("--domain", arena.path, "--redline", "1M", "--sources", "ebpf,prearm,timer")
    info = json.loads(d.ctl("info", "--json").stdout)
    ebpf = info["sources"]["ebpf"]
    assert ebpf["state"] == "live", ebpf
    assert ebpf["attached_tracepoints"] == len(ebpf["tracepoints"]) >= 2
    assert info["sources"]["prearm"]["state"] == "live"
    # The loader has exited and been reaped; what it loaded lives on.
    assert children(d.p.pid) == []
    # and the daemon holds its programs, as `bpftool prog show --pid` and the
    # benchmark's BPF run-time figures find them
    from oomkiller_bench.measure import bpf_prog_stats
    assert len(bpf_prog_stats([d.p.pid])) >= 2
    names = {name for _lo, _hi, name in mappings(f"/proc/{d.p.pid}/maps")}
    compiler = sorted(n for n in names if any(lib in os.path.basename(n) for lib in COMPILER_MAPPINGS))
    assert compiler == [], compiler
    # The check can fail: a process that imported bcc maps libbcc.
    probe = subprocess.run([sys.executable, "-c", "import bcc, sys; sys.stdout.write(open('/proc/self/maps').read())"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and "libbcc" in probe.stdout, probe.stderr
    disk = tempfile.mkdtemp(prefix="oomk-loader-", dir="/var/tmp")
    try:
        job = arena.job("writer")
        dd = arena.spawn(job, ["dd", "if=/dev/zero", f"of={disk}/data", "bs=1M", "count=512"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert dd.wait(timeout=120) == 0

        def reclaim_seen():
            by_kind = json.loads(d.ctl("info", "--json").stdout)["sources"]["ebpf"]["events_by_kind"]
            return by_kind.get("memcg_reclaim", 0) + by_kind.get("stall", 0)
        wait_for(reclaim_seen, 20, "a reclaim event from the arena", step_s=0.1)
        assert arena.kernel_oom_kills() == 0
    finally:
        shutil.rmtree(disk, ignore_errors=True)
    # still none after the events went through the perf buffer
    names = {name for _lo, _hi, name in mappings(f"/proc/{d.p.pid}/maps")}
    assert not [n for n in names if any(lib in os.path.basename(n) for lib in COMPILER_MAPPINGS)]
    assert d.stop() == 0
