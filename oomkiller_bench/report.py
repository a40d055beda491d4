"""From run records to a summary, a Markdown report and PNG plots.

``summarize`` is pure: plain records in, plain values out. Plots import
matplotlib only when asked for (the Agg backend: no display needed).
"""
from __future__ import annotations

import math
import os
from typing import Any

from . import markdown as md
from . import throughput
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


def freeze_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run of the freeze (scenario ``thrash``): the contender, the
    run, and its figures (``runner.freeze_figures``)."""
    out = []
    for r in records:
        if r.get("scenario") != "thrash" or r.get("error") or not r.get("freeze"):
            continue
        # Figured again from the series: a report rerendered from an older
        # results.json follows the current definitions.
        svc = r.get("service") or {}
        f = dict(r["freeze"], **throughput.headline(svc.get("series") or [], svc.get("baseline_ops_per_s"),
                                                    r.get("window_s") or 0.0, r["freeze"].get("kill_s"),
                                                    svc.get("alive")))
        out.append(dict(f, contender=r["contender"], run=r["run"], cell=r.get("cell", "thrash"),
                        baseline_ops_per_s=(r.get("service") or {}).get("baseline_ops_per_s"),
                        service_alive=(r.get("service") or {}).get("alive"), window_s=r.get("window_s")))
    return out


def freeze_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per contender, in the order first seen: runs, who acted, the collapse
    → relief times of the runs that were relieved, and how many never were."""
    out = []
    for (cont,), rs in group(rows, "contender").items():
        relief = numbers(r.get("collapse_to_relief_s") for r in rs)
        kill = numbers(r.get("collapse_to_kill_s") for r in rs)
        collapsed = [r for r in rs if r.get("collapse_s") is not None]
        out.append({"contender": cont, "runs": len(rs), "collapsed": len(collapsed),
                    "acted": tally(r.get("acted") or "nobody" for r in rs),
                    "victims": tally(r["kill_job"] for r in rs if r.get("kill_job")),
                    "never": sum(1 for r in collapsed if r.get("relief_s") is None),
                    "collapse_to_relief_s": spread(relief), "collapse_to_kill_s": spread(kill),
                    "window_s": max(numbers(r.get("window_s") for r in rs) or [0.0])})
    return out


def healthy_kills(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(load, contender) -> {"runs", "kills", "by_job", "seconds", "errors"}``
    for the false-positive suite (scenario ``healthy``): every kill in the
    run's window, by anyone (the kernel's included), counted."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.get("scenario") != "healthy":
            continue
        load = r["cell"][len("healthy-"):]
        e = out.setdefault((load, r["contender"]), {"runs": 0, "kills": 0, "by_job": {}, "seconds": 0.0,
                                                    "errors": 0, "decisions": []})
        e["runs"] += 1
        if r.get("error"):
            e["errors"] += 1
            continue
        e["seconds"] += r.get("window_s") or 0.0
        for k in r.get("kills", []):
            n = int((k.get("detail") or {}).get("count", 1)) if k.get("by") == "kernel" else 1
            e["kills"] += n
            key = f"{k.get('by')}: {k.get('job') or '?'}"
            e["by_job"][key] = e["by_job"].get(key, 0) + n
            why = (k.get("detail") or {}).get("decision")
            if why:
                e["decisions"].append(why)
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


def _s(v: float | None) -> str:
    return md.DASH if v is None else f"{v:.2f}"


FREEZE_TEXT = """\
The service's throughput over windows of {window:g} s, every {step:g} s, against its own rate in
the baseline window before the hog started. *Collapse*: the end of the first window under
{share:.0f}% of the baseline that stays under for {hold:g} s; *relief*: the end of the first window
wholly after the collapse back at {share:.0f}% or more that stays there for {hold:g} s. *Never*: no relief before the run's window ({run_window:g} s after the hog
started) ended. Times in seconds since the hog started. *Signal*: oomkiller's decision record
(`decision`; its `thrash` field holds the figures)."""


def freeze_markdown(rows: list[dict[str, Any]], cont_order: list[str],
                    titles: dict[str, str] | None = None) -> list[str]:
    """The freeze's headline: per contender, then per run; a section per
    freeze cell (the freeze, the freeze on a slow disk)."""
    cells = list(dict.fromkeys(r.get("cell", "thrash") for r in rows))
    if len(cells) > 1:
        return [line for c in cells for line in freeze_markdown(
            [r for r in rows if r.get("cell", "thrash") == c], cont_order, titles)]
    if not rows:
        return []
    title = (titles or {}).get(cells[0], "")
    summ = {s["contender"]: s for s in freeze_summary(rows)}
    order = [c for c in cont_order if c in summ] + [c for c in summ if c not in cont_order]
    window = max(s["window_s"] for s in summ.values())
    lines = [f"## The freeze: collapse → relief{f', {title}' if title and cells[0] != 'thrash' else ''}", "",
             FREEZE_TEXT.format(window=throughput.WINDOW_S, step=throughput.STEP_S, share=100 * throughput.SHARE,
                                hold=throughput.HOLD_S, run_window=window), ""]
    trows = []
    for c in order:
        s = summ[c]
        rel = s["collapse_to_relief_s"]
        relieved = s["collapsed"] - s["never"]
        # a service that never collapsed (the kill came first) needed no relief
        text = (f"{_s(rel['median'])} / {_s(rel['worst'])}" if relieved
                else "never" if s["collapsed"] else "no collapse")
        if relieved and s["never"]:
            text += f" (never in {s['never']})"
        kill = s["collapse_to_kill_s"]
        trows.append([c, s["runs"], f"{s['collapsed']}/{s['runs']}",
                      _killed_by(s["acted"], None, s["runs"]),
                      ", ".join(f"{k} {n}" for k, n in s["victims"].items()) or md.DASH,
                      f"{_s(kill['median'])} / {_s(kill['worst'])}" if kill["median"] is not None else md.DASH,
                      text, f"{relieved}/{s['collapsed']}" if s["collapsed"] else md.DASH])
    lines += md.table(["contender", "runs", "collapsed", "who acted", "killed job",
                       "collapse → kill s, median / worst", "collapse → relief s, median / worst",
                       "relieved"], trows)
    lines += ["", "Per run:", ""]
    prow = []
    for c in order:
        for r in sorted((r for r in rows if r["contender"] == c), key=lambda r: r["run"]):
            prow.append([c, r["run"] + 1, _s(r.get("collapse_s")), r.get("acted") or "nobody",
                         r.get("kill_job") or md.DASH, _s(r.get("kill_s")),
                         _s(r.get("relief_s")) if r.get("relief_s") is not None
                         else ("never" if r.get("collapse_s") is not None else "no collapse"),
                         _s(r.get("collapse_to_relief_s")) if r.get("collapse_to_relief_s") is not None
                         else ("never" if r.get("collapse_s") is not None else md.DASH),
                         f"`{r['decision']}`" if r.get("decision") else md.DASH])
    lines += md.table(["contender", "run", "collapse s", "acted", "killed", "kill s", "relief s",
                       "collapse → relief s", "signal (oomkiller's record)"], prow)
    lines.append("")
    return lines


def healthy_markdown(kills: dict[tuple[str, str], dict[str, Any]], cont_order: list[str],
                     cells: list[dict[str, Any]]) -> list[str]:
    """The false-positive suite: kills per healthy load and contender."""
    if not kills:
        return []
    loads = [c["key"][len("healthy-"):] for c in cells if c["scenario"] == "healthy"]
    loads = [x for x in loads if any(k[0] == x for k in kills)]
    conts = [c for c in cont_order if any(k[1] == c for k in kills)]
    text = {c["key"][len("healthy-"):]: c["description"] for c in cells if c["scenario"] == "healthy"}
    lines = ["## False positives: kills on healthy loads", "",
             "Every kill in the run's window, by anyone (the kernel's OOM killer included); zero is right. "
             "Each cell: kills (runs × seconds), and who killed which job.", ""]
    rows = []
    for load in loads:
        row = [load]
        for c in conts:
            e = kills.get((load, c))
            if not e:
                row.append("")
                continue
            cell = f"{e['kills']} ({e['runs']} × {e['seconds'] / max(1, e['runs'] - e['errors']):.0f} s)"
            if e["by_job"]:
                cell += ": " + ", ".join(f"{k} {n}" for k, n in e["by_job"].items())
            if e["errors"]:
                cell += f", {e['errors']} failed"
            row.append(cell)
        rows.append(row)
    lines += md.table(["load", *conts], rows)
    lines.append("")
    lines += [f"- **{x}**: {text[x]}" for x in loads if x in text]
    why = sorted({d for e in kills.values() for d in e["decisions"]})
    if why:
        lines += ["", "oomkiller's decisions: " + "; ".join(f"`{d}`" for d in why)]
    lines.append("")
    return lines


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[dict[str, Any]],
             contenders: list[dict[str, Any]], plots: list[str], idle: list[dict[str, Any]],
             records: list[dict[str, Any]] | None = None) -> str:
    cont_order = [c["key"] for c in contenders]
    labels = {c["key"]: c["label"] for c in contenders}
    by = {(s["cell"], s["contender"]): s for s in summary}
    lines = [f"# oomkiller benchmark ({meta['mode']})", "",
             f"`{meta['command']}` on {meta['host']['kernel']}, {meta['host']['cpus']} CPUs, "
             f"{meta['host']['mem_gib']} GiB, cgroups {meta['host']['cgroups']}; {meta['runs']} run(s) per cell, "
             f"{meta['duration_s'] / 60:.1f} min, {meta['started']}.", ""]

    lines += freeze_markdown(freeze_runs(records or []), cont_order, {c["key"]: c["title"] for c in cells})
    lines += healthy_markdown(healthy_kills(records or []), cont_order, cells)
    # The false-positive suite has its own table: no onset, nothing to kill.
    cells = [c for c in cells if c["scenario"] != "healthy"]

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
    if cells:
        lines += md.table(["contender", *cell_keys], rows)
        lines.append("")
    else:
        lines = lines[:-2]

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
    ok = [r for r in records if not r.get("error")]
    freeze = [r for r in ok if r.get("scenario") == "thrash" and r.get("freeze")]
    # one plot: the freeze's own runs where there are any, else the slow disk's
    freeze = [r for r in freeze if r.get("cell") == "thrash"] or freeze
    if freeze:
        paths.append(freeze_plot(out_dir, freeze, contender_keys))
    if len(scale_points(ok, cells)) >= 2:
        paths.append(scale_plot(out_dir, ok, cells, contender_keys))
    # The false-positive suite has no onset to time: its table says it all;
    # the freeze is timed from its collapse, in its own plot.
    cells = [c for c in cells if c["scenario"] not in ("healthy", "thrash")]
    if not cells:
        return paths
    cell_keys = [c["key"] for c in cells]

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
    pick = next((c for c in ("fork-storm", "noisy-neighbour") if c in cell_keys), cell_keys[0])
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
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    fig.tight_layout()
    p = os.path.join(out_dir, "service-timeline.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def freeze_plot(out_dir: str, runs: list[dict[str, Any]], contender_keys: list[str]) -> str:
    """The service's throughput in the freeze, one panel per contender, one
    line per run, as a share of its baseline; collapse and relief marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conts = [c for c in contender_keys if any(r["contender"] == c for r in runs)]
    conts += sorted({r["contender"] for r in runs} - set(conts))
    fig, axes = plt.subplots(len(conts), 1, figsize=(10, 2.2 * len(conts) + 0.8), sharex=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, cont in zip(axes[:, 0], conts):
        for j, r in enumerate(sorted((r for r in runs if r["contender"] == cont), key=lambda r: r["run"])):
            svc = r.get("service") or {}
            base = svc.get("baseline_ops_per_s") or 0
            pts = throughput.normalised(svc.get("series") or [], base, t_from=-1.5,
                                        t_until=throughput.observed_until(svc.get("series") or [], r["window_s"],
                                                                          svc.get("alive")))
            color = cmap(j % 10)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linewidth=0.9,
                        label=f"run {r['run'] + 1}")
            f = dict(r["freeze"], **throughput.headline(svc.get("series") or [], base, r["window_s"],
                                                        r["freeze"].get("kill_s"), svc.get("alive")))
            if f.get("collapse_s") is not None:
                ax.axvline(f["collapse_s"], color=color, linestyle=":", linewidth=0.8)
            if f.get("kill_s") is not None:
                ax.plot([f["kill_s"]], [105], marker="v", color=color, markersize=6)
            if f.get("relief_s") is not None:
                ax.axvline(f["relief_s"], color=color, linestyle="--", linewidth=0.8)
        ax.axhline(100 * throughput.SHARE, color="grey", linewidth=0.6)
        ax.set_ylim(0, 150)
        ax.set_ylabel("% of baseline", fontsize=8)
        ax.set_title(cont, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the hog started (dotted: collapse, ▼: first kill, dashed: relief)")
    fig.suptitle("The freeze: the service's throughput, per run", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "freeze.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Where a run that decided at or before the onset is drawn on the scale plot's
# log axis.
SCALE_FLOOR_MS = 0.1


def scale_points(records: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[int, str]:
    """``jobs -> cell key`` of the many-jobs cells that have runs without an
    error in ``records``."""
    ran = {r["cell"] for r in records if not r.get("error")}
    return {int(c["params"]["jobs"]): c["key"] for c in cells
            if c.get("scenario") == "many-jobs" and c["key"] in ran}


def own_kill(contender: str, killed_by: str | None) -> bool:
    """Whether the first kill of a run was the contender's own: oomkiller's
    contenders kill as ``daemon``, the others under their own name."""
    return killed_by == ("daemon" if contender.startswith("oomk-") else contender)


def cpu_ms_per_s(r: dict[str, Any]) -> float | None:
    """The killer's CPU time in a run's window per second of it (the
    windows of the cells differ), at least SCALE_FLOOR_MS for a log axis."""
    cpu = (r.get("killer") or {}).get("cpu_ms")
    t0, t1 = r.get("t_start_usec"), r.get("t_end_usec")
    span_s = (t1 - t0) / 1e6 if isinstance(t0, int) and isinstance(t1, int) and t1 > t0 else r.get("window_s")
    if not isinstance(cpu, (int, float)) or not span_s:
        return None
    return max(cpu / span_s, SCALE_FLOOR_MS)


def scale_plot(out_dir: str, records: list[dict[str, Any]], cells: list[dict[str, Any]],
               contender_keys: list[str]) -> str:
    """Cost against the number of jobs, one line per contender, log-log:
    onset → decision (every run a dot, hollow when another killer was first;
    the line through the medians, a bar over the range), and the killer's
    CPU time in the run's window per second of it. Raises ValueError
    without runs of two many-jobs cells at least."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    points = scale_points(records, cells)
    if len(points) < 2:
        raise ValueError(f"a scale plot needs runs of two many-jobs cells at least, not {len(points)}")
    ok = [r for r in records if not r.get("error") and r["cell"] in points.values()]
    conts = [c for c in contender_keys if any(r["contender"] == c for r in ok)]
    conts += sorted({r["contender"] for r in ok} - set(conts))
    jobs = sorted(points)
    fig, (lat_ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("tab10")
    fmt = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    for i, cont in enumerate(conts):
        color = cmap(i % 10)
        # a little sideways per contender, so ranges do not hide each other
        nudge = 1.0 + 0.06 * (i - (len(conts) - 1) / 2)
        lat_line, cpu_line = [], []
        for n in jobs:
            rs = [r for r in ok if r["cell"] == points[n] and r["contender"] == cont]
            lat = numbers(r.get("onset_to_decision_ms") for r in rs)
            for r in rs:
                v = r.get("onset_to_decision_ms")
                if v is None:
                    continue
                own = own_kill(cont, r.get("killed_by"))
                lat_ax.scatter([n * nudge], [max(v, SCALE_FLOOR_MS)], s=14, zorder=3, linewidths=0.8,
                               facecolors=color if own else "none", edgecolors=color)
            if lat:
                m = median(lat)
                lo, hi = max(min(lat), SCALE_FLOOR_MS), max(max(lat), SCALE_FLOOR_MS)
                lat_ax.vlines(n * nudge, lo, hi, color=color, linewidth=1.0, alpha=0.7)
                lat_line.append((n * nudge, max(m, SCALE_FLOOR_MS)))
            per_s = numbers(cpu_ms_per_s(r) for r in rs)
            if per_s:
                m = median(per_s)
                cpu_ax.vlines(n * nudge, min(per_s), max(per_s), color=color, linewidth=1.0, alpha=0.7)
                cpu_line.append((n * nudge, m))
        if lat_line:
            lat_ax.plot(*zip(*lat_line), color=color, marker="o", markersize=4, linewidth=1.2, label=cont)
        if cpu_line:
            cpu_ax.plot(*zip(*cpu_line), color=color, marker="o", markersize=4, linewidth=1.2, label=cont)
    for ax in (lat_ax, cpu_ax):
        ax.set_xscale("log")
        ax.set_xticks(jobs)
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.set_xlabel("idle jobs beside the hog")
        ax.grid(which="both", alpha=0.3)
        if ax.has_data():
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(fmt)
    lat_ax.set_ylabel("onset → kill decision, ms")
    lat_ax.set_title("Onset → decision: median, range, each run", fontsize=10)
    cpu_ax.set_ylabel("killer CPU in the run's window, ms per s")
    cpu_ax.set_title("The killer's CPU per second of the run (1000 = a whole core)", fontsize=10)
    handles = [Line2D([], [], color=cmap(i % 10), marker="o", markersize=4, label=c) for i, c in enumerate(conts)]
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="grey",
                          label="run where another killer was first"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Cost against the number of jobs (runs at or before the onset drawn at {SCALE_FLOOR_MS:g} ms)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    path = os.path.join(out_dir, "scale.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
