"""From run records to a summary, a Markdown report and PNG plots.

``summarize`` is pure: plain records in, plain values out. Plots import
matplotlib only when asked for (the Agg backend: no display needed).
"""
from __future__ import annotations

import math
import os
from typing import Any

from . import markdown as md
from .records import group, split
from .stats import median, numbers, spread, tally

DEFINITIONS = """\
- **pressure onset**: the moment the arena's charged memory (v1 `memory.usage_in_bytes`, which
  includes page cache) first rises above *limit − redline* after the victim started. The kernel
  reports it: an eventfd registered for that threshold through v1 `cgroup.event_control` (checked
  every 128 pages charged per CPU, so at most ~1 MiB late); a harness thread blocked on it stamps
  CLOCK_MONOTONIC. The redline is {redline}% of the arena's limit for every contender.
- **kill decision**: when the first kill signal of the run went out. oomkiller: its record's `ts_usec`
  minus the kill step's time (`timings_usec.kill`). The kernel: the memcg OOM notification
  (eventfd on v1 `memory.oom_control`), which precedes its victim selection. earlyoom / nohang: the
  moment their `sending SIGKILL ...` line reached the harness through a pipe.
- **onset → decision**: kill decision − pressure onset, for the first kill of the run, whoever made it
  (the *killed by* column says who). Negative: the killer acted before usage reached the threshold;
  none (—) with a killer named: it acted before usage ever reached it.
- **signal → empty**: from the kill decision to the victim job's cgroup holding no process: v2
  `cgroup.events` `populated 0`, waited for with poll(POLLPRI). Empty only when every process of the
  job is gone (fork storm: all children too).
- **killed by**: the first kill in the run. *daemon* from oomkiller's decision records, *earlyoom* /
  *nohang* from their logs, *kernel* from the arena's memcg `oom_kill` counters, *unknown* if the victim
  job emptied with no claim, *nobody* if nothing was killed within the window.
- **right job**: the first kill hit the scenario's victim job. **collateral**: any other job lost a
  process, or the protected service died.
- **PSI stall**: `some` (and `full`) `total=` of the arena's cgroup v2 `memory.pressure`, read at the
  start and the end of the run's window: the time the arena's tasks were stalled on memory.
- **service work**: operations the protected service completed in the window (each: a 4 KiB read at a
  random offset of its own 16 MiB file, one byte read from each of 16 pages of its memory, a 1 ms pause),
  per second, as a share of its own rate in the baseline window before the victim started.
- **killer CPU / RSS**: CPU time of the killer's process tree in the window, from
  `/proc/PID/task/*/schedstat` (ns resolution; psutil's clock-tick CPU times are 10 ms coarse), and its
  resident set (`VmRSS`) and peak (`VmHWM`) at the end. *Idle CPU*: the same over the baseline window,
  with only the service running.
- **BPF cost**: with `kernel.bpf_stats_enabled=1`, `run_time_ns / run_cnt` of every BPF program the
  daemon holds (`/proc/PID/fdinfo` of its `bpf-prog` fds, what `bpftool prog show` prints).
- **ratios**: a contender's onset → decision divided by that of the kernel-only (×kernel) or the
  timer-only 1000 ms (×timer) contender in the same cell and the same round of runs; the median of
  those per-round ratios.
"""


def summarize(records: list[dict[str, Any]], baselines: tuple[str, ...] = ("kernel", "oomk-timer-1000")
              ) -> list[dict[str, Any]]:
    """One summary per (cell, contender): counts, medians, worst cases, ratios."""
    decision = {(r["cell"], r["contender"], r["run"]): r.get("onset_to_decision_ms") for r in records}
    out = []
    for (cell, cont), rs in group(records, "cell", "contender").items():
        ok, failed = split(rs)
        lat = numbers(r.get("onset_to_decision_ms") for r in ok)
        empty = numbers(r.get("signal_to_empty_ms") for r in ok)
        some = numbers((r.get("psi_ms") or {}).get("some") for r in ok)
        full = numbers((r.get("psi_ms") or {}).get("full") for r in ok)
        svc = numbers((r.get("service") or {}).get("ratio") for r in ok)
        cpu = numbers((r.get("killer") or {}).get("cpu_ms") for r in ok)
        peak = numbers((r.get("killer") or {}).get("peak_rss_mb") for r in ok)
        rss = numbers((r.get("killer") or {}).get("rss_mb") for r in ok)
        killed_by = tally(r["killed_by"] for r in ok)
        then_by = tally(who for r in ok for who in {k["by"] for k in r.get("kills", [])[1:]} - {r["killed_by"]})
        ratios = {}
        for base in baselines:
            vals = []
            for r in ok:
                mine, theirs = r.get("onset_to_decision_ms"), decision.get((cell, base, r["run"]))
                if mine is not None and theirs is not None and theirs > 0 and mine > 0:
                    vals.append(mine / theirs)
            ratios[base] = median(vals)
        live = sorted({s for r in ok for s in (r.get("contender_info") or {}).get("sources_live", [])})
        bpf = [r["bpf"] for r in ok if r.get("bpf")]
        rank = [r["rank"] for r in ok if r.get("rank")]
        timings = [r["daemon_timings_usec"] for r in ok if r.get("daemon_timings_usec")]
        out.append({
            "cell": cell, "contender": cont, "runs": len(rs), "errors": [r["error"] for r in failed],
            "killed_by": killed_by, "then_by": then_by,
            "right_victim": sum(1 for r in ok if r.get("right_victim")),
            "collateral": sum(1 for r in ok if r.get("collateral")),
            "emptied": sum(1 for r in ok if r.get("victim_job_emptied")),
            "onset_to_decision_ms": dict(spread(lat), n=len(lat)),
            "signal_to_empty_ms": spread(empty),
            "psi_some_ms": spread(some),
            "psi_full_ms": spread(full),
            "service_ratio": spread(svc, worst=min),
            "killer_cpu_ms": spread(cpu),
            "killer_rss_mb": median(rss), "killer_peak_rss_mb": max(peak) if peak else None,
            "ratio_vs": ratios,
            "sources_live": live,
            "bpf_run_cnt": sum(int(b.get("run_cnt", 0)) for b in bpf) if bpf else None,
            "bpf_run_time_ns": sum(int(b.get("run_time_ns", 0)) for b in bpf) if bpf else None,
            "rank": {k: median(numbers(x.get(k) for x in rank))
                     for k in ("jobs_seen", "list_ms", "rank_ms", "rank_cli_ms")} if rank else None,
            "daemon_timings_usec": {k: median(numbers(t.get(k) for t in timings))
                                    for k in ("snapshot", "rank", "recheck", "kill", "total")} if timings else None,
        })
    return out


# -- Markdown ---------------------------------------------------------------------

def _ms(v: float | None, digits: int = 1) -> str:
    if v is None:
        return md.DASH
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def _killed_by(d: dict[str, int], then: dict[str, int] | None = None, runs: int = 1) -> str:
    """``kernel`` (one run), ``daemon 4, kernel 1`` (several); later killers in brackets."""
    text = ", ".join(f"{k} {n}" if runs > 1 else k for k, n in sorted(d.items(), key=lambda x: -x[1]))
    if then:
        text += " (then " + ", ".join(f"{k} {n}" if runs > 1 else k for k, n in sorted(then.items())) + ")"
    return text


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[dict[str, Any]],
             contenders: list[dict[str, Any]], plots: list[str], idle: list[dict[str, Any]]) -> str:
    cont_order = [c["key"] for c in contenders]
    labels = {c["key"]: c["label"] for c in contenders}
    by = {(s["cell"], s["contender"]): s for s in summary}
    lines = [f"# oomkiller benchmark ({meta['mode']})", "",
             f"`{meta['command']}` on {meta['host']['kernel']}, {meta['host']['cpus']} CPUs, "
             f"{meta['host']['mem_gib']} GiB, cgroups {meta['host']['cgroups']}; {meta['runs']} run(s) per cell, "
             f"{meta['duration_s'] / 60:.1f} min, {meta['started']}.", ""]

    # overview: one row per contender, one column per cell
    cell_keys = [c["key"] for c in cells]
    lines += ["## Overview: median onset → kill decision (ms), and who killed first", ""]
    rows = []
    for ck in cont_order:
        row = [f"{ck}"]
        for cell in cell_keys:
            s = by.get((cell, ck))
            if not s:
                row.append("")
                continue
            kb = _killed_by(s["killed_by"], None, s["runs"]) or md.DASH
            row.append(f"{_ms(s['onset_to_decision_ms']['median'])} ({kb})"
                       if s["onset_to_decision_ms"]["median"] is not None else kb)
        rows.append(row)
    lines += md.table(["contender", *cell_keys], rows)
    lines.append("")

    for cell in cells:
        lines += [f"## {cell['title']} (`{cell['key']}`)", "",
                  f"{cell['description']}. Arena {cell['limit_bytes'] >> 20} MiB, redline "
                  f"{cell['redline_bytes'] / (1 << 20):.1f} MiB, window {cell['window_s']:g} s, victim job "
                  f"`{cell['victim_job']}`, protected job `svc`."
                  + (f" The victim allocated {cell['victim_alloc_mb_s']:.0f} MB/s over the 64 MiB before the onset "
                     "(median of runs)." if cell.get("victim_alloc_mb_s") else ""), ""]
        rows = []
        for ck in cont_order:
            s = by.get((cell["key"], ck))
            if not s:
                continue
            n = s["runs"] - len(s["errors"])
            live = s["sources_live"]
            name = ck + (f" <sub>live: {','.join(live)}</sub>" if live else "")
            lat, emp, psi, svc = (s["onset_to_decision_ms"], s["signal_to_empty_ms"], s["psi_some_ms"],
                                  s["service_ratio"])
            rows.append([name, f"{n}{' (' + str(len(s['errors'])) + ' failed)' if s['errors'] else ''}",
                         _killed_by(s["killed_by"], s["then_by"], n) or md.DASH,
                         f"{s['right_victim']}/{n}", f"{s['collateral']}/{n}", f"{s['emptied']}/{n}",
                         f"{_ms(lat['median'])} / {_ms(lat['worst'])}",
                         md.ratio(s["ratio_vs"].get("kernel")), md.ratio(s["ratio_vs"].get("oomk-timer-1000")),
                         f"{_ms(emp['median'])} / {_ms(emp['worst'])}",
                         f"{_ms(psi['median'], 0)} / {_ms(psi['worst'], 0)}",
                         f"{md.pct(svc['median'])} / {md.pct(svc['worst'])}",
                         _ms(s["killer_cpu_ms"]["median"]), _ms(s["killer_peak_rss_mb"])])
        lines += md.table(["contender", "runs", "killed by", "right job", "collateral", "job emptied",
                           "onset→decision ms median / worst", "×kernel", "×timer",
                           "signal→empty ms median / worst", "PSI some stall ms median / worst",
                           "service work median / worst", "killer CPU ms", "killer RSS MB"], rows)
        lines.append("")

    # the killers' own cost
    idle_s = sorted({i["idle_s"] for i in idle})
    lines += ["## What the killers cost", "",
              f"Idle: each killer started on an arena holding only the service, measured over "
              f"{', '.join(f'{x:g}' for x in idle_s) or md.DASH} s after it settled. Under pressure: the median over "
              "the cells of its CPU time in a run's window, and the largest peak RSS seen. BPF: every program the "
              "daemon holds, with `kernel.bpf_stats_enabled=1`: total run time / total runs over every run.", ""]
    rows = []
    for ck in cont_order:
        if ck == "kernel":
            continue
        ss = [s for s in summary if s["contender"] == ck]
        ids = [i for i in idle if i["contender"] == ck and not i.get("error")]
        cpu = numbers(s["killer_cpu_ms"]["median"] for s in ss)
        peak = numbers(s["killer_peak_rss_mb"] for s in ss) + numbers(i.get("peak_rss_mb") for i in ids)
        pct = median(numbers(i.get("cpu_pct") for i in ids))
        rss = median(numbers(i.get("rss_mb") for i in ids))
        anon = median(numbers(i.get("rss_anon_mb") for i in ids))
        cnt = sum(int(s["bpf_run_cnt"] or 0) for s in ss)
        ns = sum(int(s["bpf_run_time_ns"] or 0) for s in ss)
        has_bpf = any(s["bpf_run_cnt"] is not None for s in ss) or any(i.get("bpf") for i in ids)
        nprog = max([i["bpf"]["programs"] for i in ids if i.get("bpf")] or [0])
        idle_runs = sum(i["bpf"]["runs"] for i in ids if i.get("bpf"))
        if has_bpf:
            bpf_cols = [nprog, idle_runs, cnt, _ms(ns / cnt) if cnt else md.DASH]
        else:
            bpf_cols = [meta.get("bpf_unavailable", {}).get(ck, md.DASH), md.DASH, md.DASH, md.DASH]
        per_wake = median(numbers(i.get("cpu_usec_per_timer_wake") for i in ids))
        rows.append([ck, _ms(pct, 3), _ms(per_wake, 0), f"{_ms(rss)} ({_ms(anon)})", _ms(median(cpu)),
                     _ms(max(peak) if peak else None), *bpf_cols])
    lines += md.table(["contender", "idle CPU %", "idle CPU µs per timer wake", "idle RSS MB (anon)",
                       "CPU ms in a window", "peak RSS MB", "BPF programs", "BPF runs, idle",
                       "BPF runs, all windows", "BPF ns per run"], rows)
    lines.append("")

    ranks = [s for s in summary if s.get("rank") or s.get("daemon_timings_usec")]
    many = [c for c in cells if c["scenario"] == "many-jobs"]
    if many:
        lines += ["## Ranking and wake cost against the number of jobs", "",
                  "`list` = reading every job's cgroup and processes, `rank` = list + rank, in process; "
                  "`oomkiller rank` = the command, interpreter start included. Daemon timings: medians of its "
                  "decision records' `timings_usec` over every oomkiller contender that killed.", ""]

        def pick(xs, k):
            return median(numbers(x.get(k) for x in xs))
        rows = []
        for c in many:
            rk = [s["rank"] for s in ranks if s["cell"] == c["key"] and s.get("rank")]
            tm = [s["daemon_timings_usec"] for s in ranks if s["cell"] == c["key"] and s.get("daemon_timings_usec")]
            rows.append([c["params"]["jobs"], _ms(pick(rk, "list_ms")), _ms(pick(rk, "rank_ms")),
                         _ms(pick(rk, "rank_cli_ms")), _ms(pick(tm, "rank"), 0), _ms(pick(tm, "total"), 0)])
        lines += md.table(["jobs", "list ms", "rank ms", "`oomkiller rank` ms", "daemon rank µs",
                           "daemon wake→kill done µs"], rows)
        lines.append("")

    lines += ["## Contenders", ""]
    for c in contenders:
        lines.append(f"- **{c['key']}** ({c['label']}): {c['describe']}")
    for name, why in meta.get("unavailable", {}).items():
        lines.append(f"- **{name}**: not run: {why}")
    lines.append("")
    notes = meta.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Definitions", "", DEFINITIONS.format(redline=meta["redline_percent"]), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------

KILLER_COLORS = {"kernel": "#d62728", "daemon": "#1f77b4", "earlyoom": "#2ca02c", "nohang": "#9467bd",
                 "unknown": "#7f7f7f", "nobody": "#bbbbbb"}


def plots(out_dir: str, records: list[dict[str, Any]], summary: list[dict[str, Any]], cells: list[dict[str, Any]],
          contender_keys: list[str]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    paths = []
    cell_keys = [c["key"] for c in cells]
    ok = [r for r in records if not r.get("error")]

    # 1. onset -> decision per contender, one panel per cell
    ncol = min(3, len(cell_keys))
    nrow = math.ceil(len(cell_keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    for ax, ck in zip(axes.flat, cell_keys):
        conts = [c for c in contender_keys if any(r["cell"] == ck and r["contender"] == c for r in ok)]
        nobody_y = 0.5
        for i, cont in enumerate(conts):
            rs = [r for r in ok if r["cell"] == ck and r["contender"] == cont]
            for j, r in enumerate(rs):
                v = r.get("onset_to_decision_ms")
                color = KILLER_COLORS.get(r["killed_by"], "#7f7f7f")
                x = i + (j - (len(rs) - 1) / 2) * 0.08
                if v is None:
                    ax.scatter([x], [nobody_y], marker="x", color=KILLER_COLORS["nobody"], zorder=3)
                else:
                    ax.scatter([x], [max(v, 0.05)], color=color, s=28, zorder=3, edgecolors="black", linewidths=0.3)
            mine = numbers(r.get("onset_to_decision_ms") for r in rs)
            if mine:
                ax.hlines(max(median(mine), 0.05), i - 0.3, i + 0.3, color="black", linewidth=1.2)
        vals = [v for v in numbers(r.get("onset_to_decision_ms") for r in ok if r["cell"] == ck) if v > 0]
        # A log axis only where the values span more than a decade or so;
        # otherwise a linear one from 0 reads better.
        if vals and max(vals) / min(vals) > 20:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        else:
            ax.set_ylim(0, (max(vals) if vals else 1) * 1.15)
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.set_xticks(range(len(conts)))
        ax.set_xticklabels([c.replace("oomk-", "oomk\n") for c in conts], fontsize=7)
        ax.set_title(ck, fontsize=10)
        ax.set_ylabel("onset → kill decision, ms", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(cell_keys):]:
        ax.axis("off")
    seen = {r["killed_by"] for r in ok}
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=f"killed by {k}")
               for k, c in KILLER_COLORS.items() if k != "nobody" and k in seen]
    handles.append(Line2D([], [], marker="x", linestyle="", color=KILLER_COLORS["nobody"],
                          label="nobody killed (drawn at 0.5)"))
    handles.append(Line2D([], [], color="black", label="median"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Time from pressure onset to the first kill decision (each dot one run)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    p = os.path.join(out_dir, "latency.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    by = {(s["cell"], s["contender"]): s for s in summary}

    def grouped(metric, ylabel, title, fname, scale=1.0, worst_is_min=False, log=False):
        fig, ax = plt.subplots(figsize=(min(14.0, max(8.0, 1.6 * len(cell_keys))), 4.8))
        width = 0.8 / max(1, len(contender_keys))
        cmap = plt.get_cmap("tab10")
        for i, cont in enumerate(contender_keys):
            xs, ys, lo, hi = [], [], [], []
            for k, ck in enumerate(cell_keys):
                s = by.get((ck, cont))
                if not s or s[metric]["median"] is None:
                    continue
                m, w = s[metric]["median"] * scale, s[metric]["worst"] * scale
                xs.append(k + (i - (len(contender_keys) - 1) / 2) * width)
                ys.append(m)
                lo.append(max(0.0, m - w) if worst_is_min else 0)
                hi.append(0 if worst_is_min else max(0.0, w - m))
            if xs:
                ax.bar(xs, ys, width, label=cont, color=cmap(i % 10), yerr=[lo, hi], capsize=2,
                       error_kw={"linewidth": 0.8})
        ax.set_xticks(range(len(cell_keys)))
        ax.set_xticklabels(cell_keys, fontsize=8, rotation=15)
        ax.set_xlim(-0.6, len(cell_keys) - 0.4)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("symlog", linthresh=1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.12), frameon=False)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    paths.append(grouped("psi_some_ms", "arena memory stall (PSI some), ms",
                         "Memory stall time in the arena during the window (median, bar to the worst run)",
                         "stall.png", log=True))
    paths.append(grouped("service_ratio", "service work, % of its baseline rate",
                         "Protected service's completed operations in the window (median, bar to the worst run)",
                         "service.png", scale=100, worst_is_min=True))

    # 4. the service's rate over time, first run of each contender, in the noisiest cell
    pick = next((c for c in ("fork-storm", "noisy-neighbour", "thrash") if c in cell_keys), cell_keys[0])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, cont in enumerate(contender_keys):
        r = next((r for r in ok if r["cell"] == pick and r["contender"] == cont), None)
        if not r:
            continue
        svc = r.get("service") or {}
        s = svc.get("series") or []
        pts = [(0.5 * (a[0] + b[0]), (b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(s, s[1:]) if b[0] > a[0]]
        if pts and not svc.get("alive", True):
            # it died: it does nothing from its last report to the end of the window
            pts += [(s[-1][0], 0.0), (r["window_s"], 0.0)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=cont, color=cmap(i % 10), linewidth=1)
        if r.get("start_to_decision_ms") is not None:
            ax.axvline(r["start_to_decision_ms"] / 1000, color=cmap(i % 10), linestyle=":", linewidth=0.8)
    ax.set_xlabel("seconds since the victim started (dotted: first kill)")
    ax.set_ylabel("service operations / s")
    ax.set_title(f"Protected service's throughput over one run of {pick} (0 once it was killed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    fig.tight_layout()
    p = os.path.join(out_dir, "service-timeline.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
