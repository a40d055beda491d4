"""Signal to empty for a fork bomb in a job only signals can kill (run as root):

    .venv/bin/python tests/kernel/measure_forkbomb.py BOMB [RUNS] [--inline-mrelease]
        [--children-first] [--timeout-ms MS] [--killer-from DIR]

The job is a v1 memory cgroup of a 256 MiB arena with no v2 cgroup of its
own (so no ``cgroup.kill``) and no freezer, and a v1 pids cgroup; the Killer
is run on it in this process, as the daemon runs it. BOMB is one of:

* ``spin``: Python processes that all fork in a loop, as fast as they can,
  for 20 s, pinned to CPU 1, ``pids.max`` 500 (about 370 KiB each);
* ``respawn``: dash, 727 processes, each parent forking a replacement the
  moment a child dies (``pids.max`` 1000; idle until killed);
* ``respawn-py``: the same in Python, 511 processes.

``--inline-mrelease`` makes ``process_mrelease`` run on the killing thread,
as it did before it had a thread of its own; ``--children-first`` kills in
descending pid order, so that parents outlive their children and respawn
them; ``--killer-from DIR`` takes the Killer from the ``oomkiller`` package
in DIR (e.g. an older tree: ``git archive REV oomkiller | tar -x -C DIR``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import uuid

from oomkiller_bench.arena import Arena
from oomkiller.cgroupfs import Cgroupfs
from oomkiller.core.rank import Policy, rank

SPIN = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
os.sched_setaffinity(0, {int(sys.argv[2])})
print("ready", flush=True)
os.dup2(os.open("/dev/null", os.O_RDWR), 1)
while time.monotonic() < end:
    try:
        os.fork()
    except OSError:
        pass
time.sleep(3600)
"""

RESPAWN_PY = r"""
import os, sys, time
K, G, F = map(int, sys.argv[1:4])
gen, forks, kids = 0, 0, set()
print("ready", flush=True)
null = os.open("/dev/null", os.O_RDWR)
while True:
    while gen < G and len(kids) < K and forks < F:
        try:
            pid = os.fork()
        except OSError:
            time.sleep(0.05)
            continue
        forks += 1
        if pid == 0:
            os.dup2(null, 1)
            gen, forks, kids = gen + 1, 0, set()
            continue
        kids.add(pid)
    if not kids:
        time.sleep(3600)
        continue
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        kids.clear()
        continue
    kids.discard(pid)
"""


def load_killer(tree: str | None):
    if not tree:
        from oomkiller import killer
        return killer
    # an older oomkiller package, under another name beside this one
    spec = importlib.util.spec_from_file_location("oldoomk", os.path.join(tree, "oomkiller", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(tree, "oomkiller")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["oldoomk"] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module("oldoomk.killer")


def one(args, killer_mod) -> str:
    from test_killer_faults import BOMB     # the dash bomb of the kernel tests
    spin = args.bomb == "spin"
    with Arena(f"oomk-bomb-{uuid.uuid4().hex[:8]}", 256 << 20) as arena:
        job = arena.job("bomb", v2=False, pids_max=500 if spin else 1000)
        if spin:
            argv, want = [sys.executable, "-c", SPIN, "20", "1"], 495
        elif args.bomb == "respawn":
            argv, want = ["dash", "-c", BOMB, "bomb", "3", "5", "50"], 727
        else:
            argv, want = [sys.executable, "-c", RESPAWN_PY, "2", "8", "50"], 511
        p = arena.spawn(job, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().strip() == "ready"
        t_start = time.monotonic()
        cg = Cgroupfs()
        while len(cg.subtree_pids(job.path)) < want and time.monotonic() - t_start < 30:
            time.sleep(0.05)
        time.sleep(1)
        n = len(cg.subtree_pids(job.path))
        (c,) = rank(cg.jobs(arena.path, ("bomb",)), Policy(self_pid=os.getpid()), 256 << 20).killable()
        assert not c.job.v2_path
        if args.children_first:
            read = cg.subtree_pids
            cg.subtree_pids = lambda path: list(reversed(read(path)))
        k = killer_mod.Killer(cg, dry_run=False, self_pid=os.getpid(), timeout_usec=args.timeout_ms * 1000)
        if args.inline_mrelease:
            k.process_mrelease = k.releaser._mrelease
        if spin:
            os.sched_setaffinity(0, {0})
        t0 = time.monotonic()
        res = k.kill(c)
        wall = time.monotonic() - t0
        if spin:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        return (f"{args.bomb}: {n} procs, killing {t0 - t_start:.1f} s after the start: ok={res.ok} "
                f"method={res.method} signalled={len(res.signalled_pids)} "
                f"signal_to_empty={res.signal_to_empty_usec / 1000:.1f} ms kill={wall * 1000:.1f} ms "
                f"left={len(cg.subtree_pids(job.path))} {res.error}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bomb", choices=["spin", "respawn", "respawn-py"])
    ap.add_argument("runs", nargs="?", type=int, default=3)
    ap.add_argument("--inline-mrelease", action="store_true")
    ap.add_argument("--children-first", action="store_true")
    ap.add_argument("--timeout-ms", type=int, default=60_000)
    ap.add_argument("--killer-from")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    killer_mod = load_killer(args.killer_from)
    for _ in range(args.runs):
        print(one(args, killer_mod), flush=True)


if __name__ == "__main__":
    main()
