"""Wake → decision of the deployed daemon in the guest, kill after kill.

    python -m tests.vm.run --no-container-image --out build/vm-walk \\
        --cmd 'python tests/guest/measure_walk.py --runs 6 --services 30'

Starts the daemon as deploy/oomkiller.service does, with the shipped config
(every source), and lets ``--runs`` runaway services (4 MiB every 20 ms)
grow one after another until it kills each. For each kill it keeps the
decision record's ``timings_usec``: wake → decision is ``event_to_decision``
less ``event_to_wake`` (the snapshot, the walk's jobs and ranking, and the
re-check before the signal); ``listing_age`` is there when the walk took a
recent listing instead of listing every job on the loop, with the parts of
that (``listing_wait``, ``listing_check``, ``read_again``, and ``sweep``
when it read every job's usage).

Then (``--profile``, on by default) it profiles the walk in this process:
a Daemon on the same host domain and config, dry run, woken by ``lowmem``
``--profile-walks`` times, each walk under cProfile, with a background
listing as the deployed daemon keeps one.

Writes ``$OOMK_VM_RESULTS/measure-walk.json`` (and ``walk-profile.txt``)
and prints a summary."""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

from guestlib import (MIB, UNIT_PREFIX, Daemon, kernel_oom_kills, mem_available_bytes, sh,  # noqa: E402
                      start_hog, stop_test_units, wait_for)


def total_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def wake_to_decision_usec(t: dict) -> int:
    return t["event_to_decision"] - t["event_to_wake"]


def kills(daemon: Daemon, runs: int) -> list[dict]:
    out = []
    for i in range(runs):
        wait_for(lambda: mem_available_bytes() > total_bytes() // 2, 60, "MemAvailable to recover", 0.2)
        # the post-kill delay and the listing thread's period pass
        time.sleep(2)
        before = kernel_oom_kills()
        hog = start_hog(f"oomkt-walk-{i}", 4 * MIB, 0.02, 2 * total_bytes())
        res = hog.wait_dead(180)
        hog.stop()
        job = "system.slice/" + hog.name
        rec = next((r for r in daemon.kills() if r.get("victim", {}).get("job") == job), None)
        row = {"run": i, "result": res["Result"], "kernel_kills": kernel_oom_kills() - before}
        if rec is not None:
            t = rec["timings_usec"]
            row.update(decision=rec["decision"], woken_by=sorted({e["kind"] for e in rec["woken_by"]}),
                       jobs_ranked=len(rec.get("ranking", ())), timings_usec=t,
                       wake_to_decision_usec=wake_to_decision_usec(t) if "event_to_decision" in t else None)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def profile(walks: int, config_file: str) -> tuple[list[dict], str]:
    """Walks of an in-process dry-run Daemon on the host domain, profiled."""
    from oomkiller import config
    from oomkiller.daemon import Daemon as Core
    from oomkiller.model import EventKind, PressureEvent, Source
    conf = config.load(config_file=config_file,
                       cli={"dry_run": True, "kmsg": False, "cgroup_marks": False,
                            "control_socket": "/run/oomkiller-measure.sock"})
    d = Core(conf, json_out=io.StringIO(), background_listing=True)
    prof = cProfile.Profile()
    rows = []
    try:
        d.jobs()       # the first listing, on the loop, as the daemon's arming makes it
        for i in range(walks):
            d.lister.request()
            d.lister.wait(5)
            time.sleep(0.05)
            d.simulate_lowmem = True
            now = d.now_usec()
            ev = PressureEvent(Source.CONTROL, EventKind.LOWMEM, timestamp_usec=now)
            prof.enable()
            rec = d.wake([ev])
            prof.disable()
            t = rec.timings_usec if rec is not None else {}
            rows.append({"walk": i, "timings_usec": dict(t), "walk_listings": dict(d.walk_listings)})
    finally:
        if d.lister is not None:
            d.lister.close()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
    s2 = io.StringIO()
    pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(30)
    return rows, s.getvalue() + "\n\n" + s2.getvalue()


def summary(xs: list[int]) -> str:
    xs = sorted(x / 1000 for x in xs)
    if not xs:
        return "none"
    return f"median {statistics.median(xs):.1f} ms, range {xs[0]:.1f}-{xs[-1]:.1f} ms, n={len(xs)}"


def system_units() -> list[str]:
    try:
        return [u for u in os.listdir("/sys/fs/cgroup/system.slice") if u.endswith((".service", ".scope"))]
    except FileNotFoundError:
        return []


def add_services(n: int) -> None:
    """Idle services (``sleep infinity``, a few hundred KiB each) until
    system.slice holds ``n`` services and scopes: the guest's own are
    about 16, a server's some 30."""
    for i in range(max(0, n - len(system_units()))):
        sh("systemd-run", "--quiet", f"--unit={UNIT_PREFIX}idle-{i}", "--property=Restart=no", "--", "sleep",
           "infinity")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--profile-walks", type=int, default=10)
    ap.add_argument("--config", default="/etc/oomkiller/oomkiller.toml", help="for the profiled walks")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--trace", action="store_true", help="run the daemon under walktrace.py")
    ap.add_argument("--early-listing", action="store_true",
                    help="with --trace: ask for the next background listing sooner (see walktrace.py)")
    ap.add_argument("--no-kills", dest="kills", action="store_false")
    ap.add_argument("--services", type=int, default=0,
                    help="start idle services (a sleep each) until system.slice holds this many")
    a = ap.parse_args()
    results = os.environ.get("OOMK_VM_RESULTS", ".")
    out: dict = {"services": None}
    if a.services:
        add_services(a.services)
    units = system_units()
    out["services"] = len(units)
    print(f"{len(units)} services and scopes in system.slice", flush=True)
    if a.kills:
        trace = "/run/oomkiller/walktrace.jsonl"
        d = Daemon(exec_start=(f"{sys.executable} {HERE}/walktrace.py run --config /etc/oomkiller/oomkiller.toml"
                               if a.trace else ""),
                   **({"OOMK_WALKTRACE_EARLY": "1"} if a.early_listing else {})).start()
        try:
            out["kills"] = kills(d, a.runs)
            out["info"] = {k: d.info()[k] for k in ("walk_listings", "background_listings", "wakes")}
            if a.trace and os.path.exists(trace):
                with open(trace) as src, open(os.path.join(results, "walktrace.jsonl"), "w") as dst:
                    dst.write(src.read())
        finally:
            d.stop()
            stop_test_units()
        w2d = [r["wake_to_decision_usec"] for r in out["kills"] if r.get("wake_to_decision_usec") is not None]
        print(f"wake -> decision: {summary(w2d)}", flush=True)
        for key in ("snapshot", "rank", "listing_wait", "listing_check", "read_again", "sweep", "recheck",
                    "event_to_wake", "listing_age"):
            print(f"  {key}: {summary([r['timings_usec'][key] for r in out['kills'] if key in r.get('timings_usec', {})])}")
        print(f"  info: {out['info']}", flush=True)
    if a.profile:
        rows, text = profile(a.profile_walks, a.config)
        out["profile"] = rows
        with open(os.path.join(results, "walk-profile.txt"), "w") as f:
            f.write(text)
        print("profiled walks (dry run):", flush=True)
        for key in ("snapshot", "rank", "recheck", "listing_age"):
            print(f"  {key}: {summary([r['timings_usec'][key] for r in rows if key in r['timings_usec']])}")
        print(text[:6000])
    if a.services:
        stop_test_units()
    with open(os.path.join(results, "measure-walk.json"), "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
