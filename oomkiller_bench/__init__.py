"""``oomkiller bench``: scenarios, contenders side by side, and a report.

Every scenario runs in an arena (a memory cgroup with a small limit under the
harness's own cgroup); each contender in turn faces it, round after round, so
the kernel-only and timer-only baselines are measured in the same run as the
rest. Output: one progress line per run, ``results.json`` (every measurement),
``results.md`` (tables) and PNG plots in ``--out``.

Exit codes: 0 done; 1 a run failed or cgroups were left behind; 2 bad command
line or not root; 130 interrupted (what was measured is still written).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import contenders as cmod
from . import report, runner, scenarios, slowdisk
from .measure import BpfStats
from .records import load_results, stamp, write_results
from .stats import median

MODES = {
    # mode: (runs per cell, baseline window s, idle window s). The idle window
    # is a whole number of the slowest timer's periods (1 s).
    "ci": (1, 0.5, 2.0),
    "short": (1, 1.0, 3.0),
    "full": (5, 1.0, 10.0),
}
# Why the arena benchmark needs root.
ROOT_FOR = "makes cgroups, starts killers, loads BPF"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oomkiller bench",
        description="Run OOM killers side by side on the same memory-pressure scenarios, each inside a "
                    "small memory cgroup, and write results.json, results.md and PNG plots.",
        epilog="Exit codes: 0 done; 1 a run failed or cgroups were left behind; 2 bad command line or not root; "
               "130 interrupted (what was measured is still written).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ci", dest="mode", action="store_const", const="ci",
                      help="tiny: two scenarios, three contenders, one run (the test suite; about 35 s)")
    mode.add_argument("--short", dest="mode", action="store_const", const="short",
                      help="every scenario once against every contender (10 and 1000 jobs: three of them; the "
                           "freeze, 20 s, and the false-positive suite, 10 s per healthy load: the kernel, "
                           "oomkiller's shipped defaults, earlyoom and nohang); the default, `make bench`")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the full matrix: three hog rates, 10/100/1000/10,000 jobs against every contender, longer "
                           "windows (the freeze 40 s, each healthy load a minute), 5 runs per cell")
    p.add_argument("--host-level", action="store_true",
                   help="run on a whole machine with systemd on pure cgroup v2 (the VM tier's guest): the kernel "
                        "alone, earlyoom, nohang, systemd-oomd and oomd (shipped defaults and tuned) and "
                        "oomkiller as the machine's own services, against guest-wide pressure; writes "
                        "results.json and results.md (see oomkiller_bench/hostlevel.py)")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="hogs killed in a loop for MINUTES against one daemon, with its RSS, fds, threads and "
                        "who killed each hog over time (soak.json, soak.md, soak.png)")
    p.add_argument("--daemon-args", default="", metavar="ARGS",
                   help="with --soak: extra arguments for `oomkiller run`, as one shell-quoted string")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="where results go (default bench-out)")
    p.add_argument("--runs", type=int, metavar="N", help="runs per cell (default: 1 for --ci/--short, 5 for --full)")
    p.add_argument("--scenarios", metavar="LIST",
                   help="only these cells or scenarios, comma-separated (see --list); the 10,000-job cell "
                        "(many-jobs-10000) runs outside --full only when named here")
    p.add_argument("--contenders", metavar="LIST", help="only these contenders, comma-separated (see --list)")
    p.add_argument("--baseline-s", type=float, metavar="S", help="baseline window before the victim starts")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="print the cells and contenders of the mode and exit")
    p.add_argument("--rerender", metavar="RESULTS_JSON",
                   help="write results.md and the plots again from a results.json into --out, and exit")
    p.set_defaults(mode="short")
    return p


# What both benchmarks' command lines share.

def pick(csv: str, known, what: str, prog: str) -> tuple[str, ...] | None:
    """Names from a comma list, or None (after one message) if one is unknown."""
    names = tuple(n.strip() for n in csv.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad:
        print(f"{prog}: unknown {what}(s) {', '.join(bad)} (known: {', '.join(known)})", file=sys.stderr)
        return None
    return names


def print_list(what: str, width: int, items) -> None:
    """``--list``: a line per ``(key, description)``."""
    for key, text in items:
        print(f"{what} {key:{width}s} {text}")


def is_root(prog: str, why: str) -> bool:
    """Whether this runs as root; if not, says what needs it."""
    if os.geteuid() == 0:
        return True
    print(f"{prog}: needs root ({why})", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.host_level:
        from . import hostlevel
        return hostlevel.rerender(a.rerender, a.out) if a.rerender else hostlevel.main(a)
    if a.rerender:
        return rerender(a.rerender, a.out, not a.no_plots)
    if a.soak is not None:
        if not is_root("oomkiller bench", ROOT_FOR):
            return 2
        import shlex
        from . import soak
        return soak.soak(a.soak, shlex.split(a.daemon_args), a.out, not a.no_plots)
    runs, baseline_s, idle_s = MODES[a.mode]
    runs = a.runs or runs
    baseline_s = a.baseline_s or baseline_s
    cells = scenarios.cells(a.mode)
    want = {s.strip() for s in (a.scenarios or "").split(",") if s.strip()}
    cells = [c for c in cells if not c.only_named or c.key in want]
    if a.scenarios:
        cells = [c for c in cells if c.key in want or c.scenario in want]
        if not cells:
            print(f"oomkiller bench: no cell matches {a.scenarios!r}", file=sys.stderr)
            return 2
    known = cmod.contenders()
    chosen = cmod.CI_CONTENDERS if a.mode == "ci" else cmod.DEFAULT_CONTENDERS
    if a.contenders:
        chosen = pick(a.contenders, known, "contender", "oomkiller bench")
        if chosen is None:
            return 2
    if a.list:
        print_list("cell", 18, ((c.key, f"{c.title}: {c.describe()}") for c in cells))
        print_list("contender", 16, ((k, known[k].describe()) for k in chosen))
        return 0
    if not is_root("oomkiller bench", ROOT_FOR):
        return 2
    return Bench(a, cells, [known[k] for k in chosen], runs, baseline_s, idle_s).run()


class Bench:
    def __init__(self, a: argparse.Namespace, cells, conts, runs: int, baseline_s: float, idle_s: float) -> None:
        self.a = a
        self.idle_s = idle_s
        self.cells = cells
        self.conts = conts
        self.runs = runs
        self.baseline_s = baseline_s
        self.out = os.path.abspath(a.out)
        self.records: list[dict[str, Any]] = []
        self.idle: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def run(self) -> int:
        os.makedirs(self.out, exist_ok=True)
        tmpdir = tempfile.mkdtemp(prefix="oomk-bench-", dir="/var/tmp")
        host = cmod.Host(tmpdir)
        started = time.time()
        t0 = time.monotonic()
        interrupted = False
        unavailable = cmod.unavailable_elsewhere(host)
        live: list[cmod.Contender] = []
        for c in self.conts:
            why = c.unavailable(host)
            if why:
                unavailable[c.key] = why
            else:
                live.append(c)
        print(f"oomkiller bench --{self.a.mode}: {len(self.cells)} cells x {len(live)} contenders x {self.runs} "
              f"run(s) -> {self.out}", flush=True)
        for name, why in unavailable.items():
            print(f"  not run: {name}: {why}", flush=True)
        if any(cell.params.get("write_bps") or cell.params.get("read_bps") for cell in self.cells):
            for what in slowdisk.clean_leftovers():
                print(f"  removed a slow disk an earlier run left: {what}", flush=True)
        # OOMKILLER_* reaches every oomkiller contender's daemon: say so, and record it
        self.daemon_env = {k: v for k, v in os.environ.items() if k.startswith("OOMKILLER_")}
        for k, v in self.daemon_env.items():
            self.notes.append(f"the environment set {k}={v} for every oomkiller contender")
            print(f"  {self.notes[-1]}", flush=True)
        try:
            with BpfStats() as bpf:
                if not bpf.enabled:
                    self.notes.append(f"BPF statistics unavailable: {bpf.why}")
                lxcfs = host.ensure_lxcfs() if any(c.kind in ("earlyoom", "nohang") for c in live) else None
                files = self._files(tmpdir)
                total = self.runs * sum(1 for cell in self.cells for c in live if runs_in(cell, c))
                for c in live:
                    if c.kind == "kernel":
                        continue
                    rec = runner.idle_run(c, files, tmpdir, lxcfs, self.idle_s)
                    self.idle.append(rec)
                    print(idle_line(rec), flush=True)
                n = 0
                for rnd in range(self.runs):
                    for cell in self.cells:
                        first = True
                        for c in live:
                            if not runs_in(cell, c):
                                continue
                            n += 1
                            rec = runner.Run(cell, c, rnd, files, tmpdir, lxcfs, self.baseline_s,
                                             rank_probe=cell.measure_rank and first).execute()
                            first = False
                            self.records.append(rec)
                            print(progress_line(n, total, rec), flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("oomkiller bench: interrupted; writing what was measured", file=sys.stderr)
        finally:
            host.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
        leftovers = find_leftovers()
        meta = self._meta(started, time.monotonic() - t0, unavailable, live, leftovers)
        self._write(meta, live)
        if leftovers:
            print(f"oomkiller bench: left behind (cgroups, slow disks): {', '.join(leftovers)}", file=sys.stderr)
        failed = [r for r in self.records + self.idle if r.get("error")]
        for r in failed:
            print(f"oomkiller bench: {r.get('cell', 'idle')} / {r['contender']} run {r.get('run', 0)}: {r['error']}",
                  file=sys.stderr)
        if interrupted:
            return 130
        return 1 if failed or leftovers else 0

    def _files(self, tmpdir: str) -> runner.Files:
        svc = os.path.join(tmpdir, "service.dat")
        runner.make_file(svc, scenarios.SERVICE_FILE_BYTES)
        sizes: dict[str, int] = {}
        for c in self.cells:
            for key, size in c.files.items():
                sizes[key] = max(size, sizes.get(key, 0))
        made = {}
        for key, size in sizes.items():
            made[key] = os.path.join(tmpdir, f"{key}.dat")
            runner.make_file(made[key], size)
        return runner.Files(svc, made)

    def _meta(self, started: float, duration_s: float, unavailable: dict[str, str], live, leftovers) -> dict:
        from oomkiller.cgroupfs import detect_layout
        from oomkiller.files import read_kb_fields
        lay = detect_layout()
        cg = ("v2" if not lay.memory_v1 else "hybrid (v1 memory, cgroup2 without controllers)"
              if lay.unified_root else "v1")
        mem_kb = read_kb_fields("/proc/meminfo", ("MemTotal",), kb=True)["MemTotal"]
        meta = {
            "mode": self.a.mode, "runs": self.runs, "baseline_s": self.baseline_s, "idle_s": self.idle_s,
            "pid": os.getpid(),
            "command": "oomkiller bench " + " ".join(self.a_argv()),
            "started": stamp(started),
            "duration_s": round(duration_s, 1),
            "redline_percent": scenarios.REDLINE_PERCENT,
            "host": {"kernel": f"Linux {platform.release()}", "cpus": os.cpu_count(),
                     "mem_gib": round(mem_kb / (1 << 20), 1), "cgroups": cg, "python": platform.python_version(),
                     "versions": tool_versions()},
            "unavailable": unavailable, "leftover_cgroups": leftovers, "notes": list(self.notes),
            "bpf_unavailable": {},
        }
        for c in live:
            if c.kind != "oomkiller":
                continue
            rs = [r for r in self.records if r["contender"] == c.key and not r.get("error")]
            requested = set(c.sources.split(","))
            live_src = {s for r in rs for s in (r.get("contender_info") or {}).get("sources_live", [])}
            missing = sorted(requested - live_src)
            if rs and missing:
                why = {}
                for r in rs:
                    for name, s in ((r.get("contender_info") or {}).get("sources") or {}).items():
                        if name in missing and s.get("state") != "live":
                            why.setdefault(name, s.get("why") or s.get("state") or "not listed by the daemon")
                for m in missing:
                    why.setdefault(m, "not listed by the daemon")
                meta["notes"].append(f"{c.key}: requested sources not live: "
                                     + "; ".join(f"{k} ({v})" for k, v in sorted(why.items())))
            if not any(r.get("bpf") for r in rs):
                meta["bpf_unavailable"][c.key] = ("not available: the ebpf source was not live"
                                                  if requested & {"ebpf", "prearm"} else "—")
        return meta

    def a_argv(self) -> list[str]:
        out = [f"--{self.a.mode}", "--out", self.a.out]
        for flag in ("runs", "scenarios", "contenders", "baseline_s"):
            v = getattr(self.a, flag)
            if v:
                out += [f"--{flag.replace('_', '-')}", str(v)]
        return out

    def _write(self, meta: dict, live) -> None:
        summary = report.summarize(self.records)
        cells = []
        for c in self.cells:
            rs = [r for r in self.records if r["cell"] == c.key]
            if not rs:
                continue
            rates = [r["victim_alloc_mb_s"] for r in rs if r.get("victim_alloc_mb_s")]
            cells.append({"key": c.key, "scenario": c.scenario, "title": c.title, "description": c.describe(),
                          "limit_bytes": c.limit_bytes, "redline_bytes": c.redline_bytes, "window_s": c.window_s,
                          "victim_job": c.victim_job, "params": c.params,
                          "victim_alloc_mb_s": median(rates)})
        conts = [{"key": c.key, "label": c.label, "kind": c.kind, "describe": c.describe()} for c in live]
        plots: list[str] = []
        if not self.a.no_plots and self.records:
            try:
                plots = report.plots(self.out, self.records, summary, cells, [c["key"] for c in conts])
            except ImportError as e:
                meta["notes"].append(f"no plots: {e} (install matplotlib)")
        write_results(self.out, report.markdown(meta, summary, cells, conts, plots, self.idle, self.records),
                      {"meta": meta, "cells": cells, "contenders": conts, "summary": summary,
                       "idle": self.idle, "runs": self.records})
        print(f"oomkiller bench: wrote {os.path.join(self.out, 'results.json')}, results.md"
              + (", " + ", ".join(os.path.basename(p) for p in plots) if plots else ""), flush=True)


def rerender(path: str, out: str, with_plots: bool) -> int:
    data = load_results(path)
    os.makedirs(out, exist_ok=True)
    plots = []
    if with_plots:
        plots = report.plots(out, data["runs"], data["summary"], data["cells"], [c["key"] for c in data["contenders"]])
    write_results(out, report.markdown(data["meta"], data["summary"], data["cells"], data["contenders"], plots,
                                       data.get("idle", []), data["runs"]))
    print(f"oomkiller bench: wrote {os.path.join(out, 'results.md')}"
          + (", " + ", ".join(os.path.basename(p) for p in plots) if plots else ""))
    return 0


def runs_in(cell: scenarios.Cell, c: cmod.Contender) -> bool:
    """Whether contender ``c`` faces ``cell``: the cell's own list (a variant
    of a contender named there too: ``stands_for``), else every contender
    that runs everywhere."""
    if cell.contenders is None:
        return c.everywhere
    return c.key in cell.contenders or getattr(c, "stands_for", None) in cell.contenders


def idle_line(r: dict[str, Any]) -> str:
    head = f"[idle] {r['contender']:16s} {r['idle_s']:g} s"
    if r.get("error"):
        return f"{head}  FAILED: {r['error']}"
    bpf = r.get("bpf")
    return (f"{head}  cpu {r.get('cpu_ms', 0):.1f} ms ({r.get('cpu_pct', 0):.3f}%)  rss {r.get('rss_mb')} MB"
            + (f"  bpf: {bpf['programs']} programs, {bpf['runs']} runs" if bpf else ""))


def progress_line(n: int, total: int, r: dict[str, Any]) -> str:
    head = f"[{n:3d}/{total:3d}] {r['cell']:16s} {r['contender']:16s} #{r['run'] + 1}"
    if r.get("error"):
        return f"{head}  FAILED: {r['error']}"
    died = r.get("contender_exit")
    died = f" ({r['contender']} exited {died} during the run)" if died is not None else ""
    first = r["kills"][0] if r.get("kills") else None
    who = r["killed_by"] + (f" ({first['job']})" if first and first.get("job") else "")
    mark = "" if r.get("right_victim") in (True, None) else " WRONG JOB"
    coll = f" collateral: {','.join(r['collateral'])}" if r.get("collateral") else ""

    def ms(v):
        return "-" if v is None else f"{v:.1f} ms"
    svc = (r.get("service") or {}).get("ratio")
    cpu = (r.get("killer") or {}).get("cpu_ms")
    early = " (before the onset)" if r.get("killed_before_onset") else ""
    f = r.get("freeze")
    if f:
        def s(v):
            return "never" if v is None else f"{v:.2f} s"
        relief = (f"relief {s(f['relief_s'])}  collapse->relief {s(f['collapse_to_relief_s'])}"
                  if f["collapse_s"] is not None else "(no collapse: no relief needed)")
        return (f"{head}  acted: {f['acted']}{' (' + f['kill_job'] + ')' if f.get('kill_job') else ''}"
                f"  collapse {s(f['collapse_s'])}  kill {s(f['kill_s'])}  {relief}"
                + (f"  signal: {f['decision']}" if f.get("decision") else "") + f"  [{r.get('wall_s', 0):.1f} s]{died}")
    return (f"{head}  killed by {who}{mark}{coll}{early}  onset->decision {ms(r.get('onset_to_decision_ms'))}"
            f"  ->empty {ms(r.get('signal_to_empty_ms'))}  stall {ms((r.get('psi_ms') or {}).get('some'))}"
            f"  svc {'-' if svc is None else f'{100 * svc:.0f}%'}"
            + (f"  cpu {cpu:.1f} ms" if cpu is not None else "") + f"  [{r.get('wall_s', 0):.1f} s]{died}")


def tool_versions() -> dict[str, str]:
    out = {}
    for name, argv in (("earlyoom", ["earlyoom", "-v"]), ("nohang", ["nohang", "--version"]),
                       ("lxcfs", ["lxcfs", "--version"])):
        if shutil.which(argv[0]):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                text = (p.stdout or p.stderr).strip().splitlines()
                out[name] = next((line for line in text if "Warning" not in line and "sre_constants" not in line), "")
            except (OSError, subprocess.TimeoutExpired):
                pass
    from oomkiller import __version__
    out["oomkiller"] = __version__
    return out


def find_leftovers() -> list[str]:
    """Arena cgroups of this process, and slow disks, still present (there
    should be none)."""
    from oomkiller.cgroupfs import detect_layout, own_cgroup_paths

    from .arena import LEAF
    lay = detect_layout()
    mem, v2 = own_cgroup_paths("self", lay)
    if not lay.memory_v1 and os.path.basename(v2) == LEAF:
        mem = v2 = os.path.dirname(v2)
    roots = []
    if lay.memory_root:
        roots.append(lay.memory_root + mem)
    if lay.unified_root:
        roots.append(lay.unified_root + v2)
    prefix = f"oomk-bench-{os.getpid()}-"
    out = []
    for r in roots:
        try:
            out += [os.path.join(r, d) for d in os.listdir(r) if d.startswith(prefix)]
        except OSError:
            pass
    return out + slowdisk.leftovers()
