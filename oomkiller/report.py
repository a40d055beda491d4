"""The seed's log lines, byte for byte where they apply, and the JSON record.

Lines not in the seed (a failed kill, a dry run, the outcome) keep its shape.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from .model import Candidate, KillResult, MemorySnapshot, Proc, Ranking, labels_text
from .text import printable  # noqa: F401 - the one printable, used here and by report's users

_UNITS = "BKMGT"
MIB = 1 << 20

# The process list shows the largest few: on a host with hundreds of processes
# the rest is noise beside the jobs walk.
PROC_LIST_MAX = 32
PROC_LIST_MIN_BYTES = 1 << 20


def format_size(n: int) -> str:
    """Zircon's format_size: the largest unit below 1024, one decimal unless exact."""
    n = abs(n)
    i = 0
    while i < len(_UNITS) - 1 and n >= 1024 ** (i + 1):
        i += 1
    unit = 1024 ** i
    if n % unit == 0:
        return f"{n // unit}{_UNITS[i]}"
    return f"{n / unit:.1f}{_UNITS[i]}"


def format_signed(n: int) -> str:
    return ("-" if n < 0 else "+") + format_size(n)


# daemon.LISTING_REUSE_USEC, for the info line (report is imported by the
# control commands, which must not import the daemon)
LISTING_REUSE_MS = 500


def format_mib(n: int) -> str:
    return f"{n / MIB:.1f}M"


def state_word(state: str) -> str:
    return {"Z": "dead", "X": "dead", "T": "stop", "t": "stop"}.get(state, "run")


def free_line(snap: MemorySnapshot, delta_bytes: int) -> str:
    return f"OOM: {format_mib(snap.free_bytes)} free ({format_signed(delta_bytes)}) / {format_mib(snap.total_bytes)} total"


def lowmem_lines(shortfall_bytes: int, procs: Iterable[Proc]) -> list[str]:
    big = sorted((p for p in procs if p.committed_bytes >= PROC_LIST_MIN_BYTES),
                 key=lambda p: -p.committed_bytes)[:PROC_LIST_MAX]
    lines = [f"OOM: oom_lowmem(shortfall_bytes={shortfall_bytes}) called",
             "OOM: Process mapped committed bytes:"]
    lines += [f"OOM:   proc {p.pid:5d} {p.committed_bytes // MIB:4d}M '{printable(p.name)}'"
              for p in sorted(big, key=lambda p: p.pid)]
    lines.append("OOM: Finding a job to kill...")
    return lines


def job_line(tag: str, c: Candidate) -> str:
    return f"OOM:   {tag} job {c.job.inode:6d} '{printable(c.job.name)}'"


def kill_lines(c: Candidate, res: KillResult, procs: tuple[Proc, ...]) -> list[str]:
    lines = [job_line("*KILL*", c)]
    lines += [f"OOM:        + proc {p.pid:5d} {state_word(p.state):>4s} '{printable(p.name)}'" for p in procs]
    running = sum(1 for p in procs if state_word(p.state) == "run")
    lines.append(f"OOM:        = {running} running procs ({len(procs)} total), {c.job.descendants} jobs")
    return lines


# The walk's lines that say a kill failed: a job that could not be killed,
# and a walk that found no job to kill while memory was short.
FAIL_TAG = "(fail)"
NO_VICTIM_LINE = "OOM: no killable job found"


def is_failure_line(line: str) -> bool:
    """A line of ``walk_lines`` that reports a failed kill."""
    return line == NO_VICTIM_LINE or line.startswith(f"OOM:   {FAIL_TAG} ")


def walk_lines(ranking: Ranking, attempts: list[tuple[Candidate, KillResult]], next_count: int = 3) -> list[str]:
    """The walk as the seed prints it: skips met on the way, failed attempts,
    the kill with its processes, then the next ``next_count`` candidates."""
    tried = {id(c): r for c, r in attempts}
    lines: list[str] = []
    killed_at = None
    for i, c in enumerate(ranking.candidates):
        if killed_at is not None:
            break
        if id(c) in tried:
            r = tried[id(c)]
            if r.ok:
                lines += kill_lines(c, r, c.job.procs)
                if r.dry_run:
                    lines.append("OOM:        (dry run: nothing was killed)")
                killed_at = i
            else:
                lines.append(job_line(FAIL_TAG, c) + f": {printable(r.error)}")
        elif not c.killable:
            lines.append(job_line("(skip)", c))
    if killed_at is not None:
        nxt = [c for c in ranking.candidates[killed_at + 1:] if c.killable][:next_count]
        lines += [job_line("(next)", c) for c in nxt]
    else:
        lines.append(NO_VICTIM_LINE)
    return lines


def outcome_line(c: Candidate, res: KillResult, decision_usec: int) -> str:
    line = _outcome(c, res, decision_usec)
    if c.job.labels:
        line += f"; {printable(labels_text(c.job.labels))}"
    return line


def _outcome(c: Candidate, res: KillResult, decision_usec: int) -> str:
    if res.dry_run:
        return (f"OOM: would kill job '{printable(c.job.name)}' ({len(res.signalled_pids)} procs, "
                f"{format_size(c.job.committed_bytes)} committed); dry run")
    thawed = ", thawed its v1 freezer" if res.thawed else ""
    if not res.emptied:
        # Signalled, but the job did not empty within kill_timeout_ms: say so.
        return (f"OOM: signalled job '{printable(c.job.name)}' by {res.method}: {len(res.signalled_pids)} procs, "
                f"{format_size(res.freed_bytes)} freed, NOT EMPTY: {printable(res.error)}{thawed}, "
                f"{decision_usec / 1000:.1f} ms after the wake")
    return (f"OOM: killed job '{printable(c.job.name)}' by {res.method}: {len(res.signalled_pids)} procs, "
            f"{format_size(res.freed_bytes)} freed, empty {res.signal_to_empty_usec / 1000:.1f} ms "
            f"after the signal{thawed}, {decision_usec / 1000:.1f} ms after the wake")


# A job's name in a kernel log line is cut to this many characters (see kmsg.py).
KMSG_NAME_MAX = 240


def kmsg_text(text: str, limit: int = KMSG_NAME_MAX) -> str:
    """``text`` for the kernel log: escaped as ``printable`` does, then
    ASCII only (``\\u00e9`` for an é), cut to ``limit`` characters: nothing
    a cgroup's maker chose can end the line or reach a console raw."""
    out = printable(text).encode("ascii", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[:limit - 3] + "..."


def kmsg_line(job_name: str, res: KillResult | None, domain: str, free_bytes: int, total_bytes: int) -> str:
    """The kernel log's line for one kill (``kmsg.py``): ``res`` None for
    an armed job the kernel killed whole. One line, ASCII, ending in a
    newline, with its ``<4>`` priority."""
    where = f"domain '{kmsg_text(domain, 120)}' had {format_size(free_bytes)} free of {format_size(total_bytes)}"
    if res is None:
        what = "in the kernel at its failed reclaim (armed kill), freed unknown"
    else:
        what = (f"by {res.method}: {len(res.signalled_pids)} procs, {format_size(res.freed_bytes)} freed "
                f"({res.freed_bytes} bytes), ")
        if res.emptied:
            what += f"empty {res.signal_to_empty_usec / 1000:.1f} ms after the signal"
        else:
            what += f"NOT EMPTY: {len(res.left_pids)} procs left"
            if res.evaded_pids:
                what += f", evaded: {len(res.evaded_pids)}"
    return f"<4>oomkiller: Killed job '{kmsg_text(job_name)}' {what}; {where}\n"


def candidate_record(c: Candidate) -> dict[str, Any]:
    out = {"job": c.job.name, "inode": c.job.inode, "class": c.importance.name.lower(),
           "score_bytes": c.score_bytes, "killable": c.killable, "reasons": list(c.reasons)}
    if c.job.labels:
        out["labels"] = dict(c.job.labels)
    return out


def result_record(res: KillResult) -> dict[str, Any]:
    return {"job": res.job.name, "inode": res.job.inode, "ok": res.ok, "dry_run": res.dry_run,
            "method": res.method, "pids": list(res.signalled_pids), "error": res.error,
            "signal_to_empty_usec": res.signal_to_empty_usec, "signal_to_exit_usec": res.signal_to_exit_usec,
            "freed_bytes": res.freed_bytes, "emptied": res.emptied, "left_pids": list(res.left_pids),
            "thawed": res.thawed, "evaded_pids": list(res.evaded_pids), "still_populated": res.still_populated}


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def format_ranking(ranking: Ranking) -> str:
    """The walk as ``oomkiller rank`` prints it."""
    lines = []
    for i, c in enumerate(ranking.candidates, 1):
        tag = "kill" if c.killable else "skip"
        lines.append(f"{i:3d}. ({tag}) job {c.job.inode:6d} '{printable(c.job.name)}' {c.importance.name.lower()} "
                     f"score {format_size(c.score_bytes)}: {printable('; '.join(c.reasons))}")
    return "\n".join(lines) if lines else "no jobs in the domain"


def sufferers_text(suffer: list[dict[str, Any]]) -> str:
    """The jobs whose file pages were read back the most, for the log."""
    return "refaulted most: " + ", ".join(
        f"'{printable(d['job'])}' {format_mib(d['refault_pages'] * 4096)} in {d['span_usec'] / 1e6:.2f} s"
        for d in suffer)


def thrash_text(t: dict[str, Any] | None) -> str:
    """The thrash detector's line of ``info``."""
    if not t:
        return "-"
    if t["state"] in ("off", "unknown"):
        return t["state"] + (" (no refault or file cache figures)" if t["state"] == "unknown" else "")
    stall = t.get("stall_permyriad")
    return (f"{t['state']}, refaults {t['refault_permyriad_per_s'] / 100:.1f}%/s of the file cache "
            f"(limit {t['limit_refault_permyriad_per_s'] / 100:g}%/s), episode {t['episode_usec'] // 1000} ms "
            f"(sustain {t['sustain_usec'] // 1000} ms), memory stall "
            + (f"{stall / 100:.1f}%" if stall is not None else "-" if t["state"] == "calm" else "unknown")
            + f" (limit {t['limit_stall_permyriad'] / 100:g}%)"
            + ("" if t.get("io_stall_permyriad") is None
               else f", I/O stall {t['io_stall_permyriad'] / 100:.1f}% "
                    + (f"(it carries an episode at {t['limit_io_stall_permyriad'] / 100:g}%)"
                       if t.get("limit_io_stall_permyriad") else "(it carries none: thrash_io_stall_limit 0)"))
            + ("" if t.get("activated_permyriad") is None
               else f", activated {t['activated_permyriad'] / 100:.1f}% of the "
                    + ("host's " if t.get("activated_host") else "")
                    + f"refaults (at least {t.get('limit_activated_permyriad', 0) / 100:g}%)")
            + ("" if t.get("activated_rate_permyriad_per_s") is None or t.get("activated_permyriad") is None
               else f", {t['activated_rate_permyriad_per_s'] / 100:.1f}%/s of the file cache "
                    f"(limit {t.get('limit_activated_rate_permyriad_per_s', 0) / 100:g}%/s)")
            + f", free {t['free_permyriad'] / 100:.1f}%, fired {t['fired']}")


def term_text(t: dict[str, Any] | None) -> str:
    """The SIGTERM step's line of ``info``."""
    if not t:
        return "off"
    line = t["term_redline"]
    line = f"{line} = {format_size(t['term_line_bytes'])}" if line.endswith("%") else format_size(t["term_line_bytes"])
    return (f"term_redline {line}, grace {t['grace_ms']} ms, SIGTERMs {t['terms']} "
            f"(jobs sent one below the line now: {t['in_episode']})")


def walks_text(w: dict[str, Any] | None) -> str:
    """How the walks got their jobs: listed afresh, or a recent listing with
    the jobs they may kill read again."""
    if not w:
        return "-"
    return (f"{w['listed']} listed every job, {w['reused']} took a recent listing and "
            f"read {w['read_again']} jobs again" + (f" ({w['swept']} of them after reading every job's usage)"
                                                   if w.get("swept") else ""))


def job_reads_text(r: dict[str, int] | None) -> str:
    """How the listings read their jobs: in full, or unchanged since."""
    if not r:
        return "-"
    took = r.get("latest_listing_usec")
    gc = r.get("gc_passes")
    return (f"{r['read']} read in full, {r['reused']} unchanged since their last read and taken as read"
            + (f"; the latest listing took {took / 1000:.1f} ms" if took else "")
            + (f"; garbage collected {gc} times while calm, the latest in {r.get('gc_latest_usec', 0) / 1000:.1f} ms"
               if gc else ""))


def swap_text(swap: dict[str, Any] | None) -> str:
    """The info line on swap: counted in free memory, or why not."""
    if not swap:
        return "unknown"
    if swap.get("counted"):
        return (f"{format_size(swap['free_bytes'])} free of {format_size(swap['total_bytes'])}, "
                "counted in free and total memory")
    if not swap.get("count_swap"):
        return "not counted (count_swap = false): free memory is RAM alone"
    return "none for this domain"


def pressure_text(p: dict[str, Any] | None, have_file: bool) -> str:
    """The pressure limit's line of ``info``: the limit, and whether the
    domain's dirty pages hold it (see core/detect.py)."""
    if not p:
        return "unknown"
    limit = int(p.get("limit_permyriad") or 0)
    if not limit:
        return "off"
    text = f"{limit / 100:g}% of full stall"
    if not have_file:
        return text + " (no pressure file: off)"
    dirty = int(p.get("dirty_bytes", -1))
    if not p.get("dirty_hold_permyriad"):
        return text + "; dirty pages never hold it (pressure_dirty_hold 0)"
    if dirty < 0:
        return text
    hold = int(p.get("dirty_hold_permyriad") or 0) / 100
    if p.get("held_by_dirty"):
        return f"{text}, held: {format_size(dirty)} dirty or under writeback >= {hold:g}% of the domain " \
               "(the stall is the disk's)"
    return f"{text}; {format_size(dirty)} dirty or under writeback (it holds at {hold:g}% of the domain, " \
           "with at most half of it not file cache)"


def info_text(data: dict[str, Any], own_memory: dict[str, int]) -> str:
    """``oomkiller info`` as the seed's ``k oom info`` prints it, from the
    data ``info --json`` gives."""
    red, red_b = data["redline"], data["redline_bytes"]
    red_txt = f"{red} = {format_size(red_b)}" if red.endswith("%") else format_size(red_b)
    gone = data["domain_state"]
    lines = ["OOM info:",
             f"  running: {str(data['running']).lower()}",
             f"  printing: {str(data['printing']).lower()}",
             f"  simulating lowmem: {str(data['simulating_lowmem']).lower()}",
             f"  sleep duration: {data['sleep_ms']}ms",
             f"  redline: {red_txt} ({red_b} bytes)",
             f"  domain: {printable(data['domain'])} ({printable(data['domain_path'])})" + ("" if gone == "live" else f", GONE: {printable(gone[6:])}"),
             f"  dry run: {str(data['dry_run']).lower()}",
             "  pressure file: " + (printable(data["pressure_file"]) if data.get("pressure_file")
                                    else "none (no memory stall figures: the pressure limit is off)"),
             "  pressure limit: " + pressure_text(data.get("pressure"), bool(data.get("pressure_file"))),
             "  thrash: " + thrash_text(data.get("thrash")),
             "  swap: " + swap_text(data.get("swap")),
             "  walks: " + walks_text(data.get("walk_listings")),
             "  jobs listed: " + job_reads_text(data.get("job_reads")),
             "  own memory: " + ", ".join(f"{k} {format_size(v)}" for k, v in own_memory.items()),
             f"  kills: {data['kills']} (in the kernel, armed: {data['armed_kills']}; "
             f"by the kernel's own OOM killer: {data['kernel_kills_seen']})",
             "  SIGTERM step: " + term_text(data.get("term")),
             "  other OOM killers running: " + (", ".join(f"{printable(n)} (pid {p})"
                                                         for p, n in data.get("other_oom_killers", ()))
                                                or "none"),
             "  sources:"]
    for name, s in data["sources"].items():
        extra = ", ".join(f"{k}={printable(str(v))}" for k, v in s.items()
                          if k not in ("state", "source", "live") and not isinstance(v, (list, dict)))
        lines.append(f"    {name}: {s['state']}" + (f" ({extra})" if extra else ""))
    lines.append("  output:")
    for name, o in data["output"].items():
        lines.append(f"    {name}: " + ", ".join(f"{k}={printable(str(v))}" for k, v in o.items()))
    return "\n".join(lines)
