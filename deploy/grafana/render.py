"""The Grafana dashboard (oomkiller.json) drawn without Grafana: the
endpoint scraped every 0.5 s, each panel's own PromQL evaluated on those
scrapes, and the panels laid out as the dashboard lays them out, with
matplotlib (the benchmark's extra). So the picture is the dashboard's
queries, not a look-alike.

    python deploy/grafana/render.py demo docs/metrics/dashboard.png   (root)
    python deploy/grafana/render.py scrape ADDRESS SERIES.jsonl [--seconds N]
    python deploy/grafana/render.py draw SERIES.jsonl PNG
    python deploy/grafana/render.py table ADDRESS|FILE

``demo`` makes a 256 MiB arena under its own cgroup, runs the daemon on it
with the endpoint on a Unix socket, starts hogs that grow until killed,
scrapes for about a minute, draws, and removes what it made. ``scrape``
records a running daemon's endpoint (``ADDRESS`` as the ``metrics`` key
takes it: a socket path or a loopback HOST:PORT); ``draw`` draws a
recording; ``table`` prints the README's table of the metrics from an
endpoint or a file of its text.

PromQL is parsed with promql-parser (the test extra); the evaluation here
covers what the dashboard uses (selectors, rate, increase,
histogram_quantile, sum/max by, arithmetic and comparison), with the
increase over a window taken as the difference of the counter's ends
(counter resets added back), without Prometheus's extrapolation.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, CHECKOUT)

DASHBOARD = os.path.join(HERE, "oomkiller.json")
INTERVAL_S = 0.5
# Grafana's $__rate_interval is four scrape intervals at the least; over a
# minute's run at 0.5 s a longer window reads better.
RATE_WINDOW_S = 5.0
INSTANCE = "arena"

Labels = Tuple[Tuple[str, str], ...]          # sorted (name, value) pairs, __name__ included
Sample = Tuple[str, Dict[str, str], float]


# -- scraping ------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def scrape(address: str, timeout_s: float = 2.0) -> str:
    """The endpoint's page; ``address`` as the ``metrics`` key takes it."""
    from oomkiller.metrics import parse_address
    kind, where = parse_address(address)
    conn = (_UnixHTTPConnection(where, timeout_s) if kind == "unix"
            else http.client.HTTPConnection(where[0], where[1], timeout=timeout_s))
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError(f"{address}: HTTP {reply.status}")
        return body.decode()
    finally:
        conn.close()


def samples(text: str) -> List[Sample]:
    from prometheus_client.parser import text_string_to_metric_families
    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


class Recorder:
    """Scrapes ``address`` every ``interval_s`` from a thread of its own,
    keeping (seconds since the start, samples) for each scrape that
    answered; the last page's text is kept for the table."""

    def __init__(self, address: str, interval_s: float = INTERVAL_S) -> None:
        self.address, self.interval_s = address, interval_s
        self.scrapes: List[Tuple[float, List[Sample]]] = []
        self.last_text = ""
        self.failed = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="scrape", daemon=True)

    def start(self) -> "Recorder":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        tick = self._t0
        while not self._stop.is_set():
            try:
                text = scrape(self.address)
                self.scrapes.append((round(time.monotonic() - self._t0, 3), samples(text)))
                self.last_text = text
            except (OSError, ValueError) as e:
                self.failed += 1
                self.last_error = str(e) or type(e).__name__
            tick += self.interval_s
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def save(scrapes: Sequence[Tuple[float, List[Sample]]], path: str) -> None:
    with open(path, "w") as f:
        for t, smp in scrapes:
            f.write(json.dumps({"t": t, "samples": smp}) + "\n")


def load(path: str) -> List[Tuple[float, List[Sample]]]:
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append((float(d["t"]), [(str(a), {str(k): str(v) for k, v in b.items()}, float(c))
                                            for a, b, c in d["samples"]]))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: not a scrape record ({type(e).__name__}: {e})") from None
    return out


# -- the table of the metrics ---------------------------------------------------
def metric_table(text: str) -> str:
    """The README's table: every metric of an endpoint's page, as a query
    names it, with its type, its labels and its help."""
    from prometheus_client.parser import text_string_to_metric_families
    rows = []
    for fam in text_string_to_metric_families(text):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels = sorted({k for s in fam.samples for k in s.labels if k != "le"})
        what = fam.documentation
        if fam.type == "histogram":
            bounds = sorted({float(s.labels["le"]) for s in fam.samples if "le" in s.labels} - {math.inf})
            what += f" Buckets `le` {bounds[0]:g} to {bounds[-1]:g} s; `_bucket`, `_sum`, `_count`."
        rows.append((name, fam.type, ", ".join(f"`{k}`" for k in labels), what))
    lines = ["| metric | type | labels | what |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {t} | {lab} | {w} |" for n, t, lab, w in sorted(rows)]
    return "\n".join(lines)


# -- the dashboard's queries, evaluated on the scrapes ---------------------------
def substitute(expr: str, rate_window_s: float = RATE_WINDOW_S, range_s: float = 60.0,
               interval_s: float = INTERVAL_S) -> str:
    """Grafana's variables as the queries would get them: every instance,
    the rate window, the dashboard's range and the step."""
    def ms(s: float) -> str:
        return f"{max(1, int(round(s * 1000)))}ms"
    out = re.sub(r"\$\{instance(:[a-z]+)?\}|\$instance\b", ".*", expr)
    out = out.replace("$__rate_interval", ms(rate_window_s)).replace("$__range", ms(range_s))
    out = out.replace("$__interval", ms(interval_s))
    if "$" in out:
        raise ValueError(f"a Grafana variable this renderer does not know: {expr!r}")
    return out


class Series:
    """The scrapes as aligned arrays: ``times`` and, per label set, the
    value at each time (NaN where the series was absent)."""

    def __init__(self, scrapes: Sequence[Tuple[float, List[Sample]]], instance: str = INSTANCE) -> None:
        import numpy as np
        self.np = np
        self.times = np.array([t for t, _ in scrapes], dtype=float)
        self.data: Dict[Labels, Any] = {}
        for i, (_, smp) in enumerate(scrapes):
            for name, labels, value in smp:
                key = tuple(sorted({**labels, "__name__": name, "instance": instance, "job": "oomkiller"}.items()))
                arr = self.data.get(key)
                if arr is None:
                    arr = self.data[key] = np.full(len(scrapes), np.nan)
                arr[i] = value


Vector = Dict[Labels, Any]      # label set (no __name__ after a function) -> values over Series.times


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _matches(labels: Labels, matchers: Any) -> bool:
    d = dict(labels)
    for m in matchers.matchers:
        op, have = str(m.op).split(".")[-1], d.get(m.name, "")
        ok = {"Equal": lambda: have == m.value, "NotEqual": lambda: have != m.value,
              "Re": lambda: re.fullmatch(m.value, have) is not None,
              "NotRe": lambda: re.fullmatch(m.value, have) is None}.get(op)
        if ok is None:
            raise ValueError(f"matcher {op} is not evaluated here")
        if not ok():
            return False
    return True


def evaluate(expr: str, series: Series, **subst: float) -> Any:
    """A float for a scalar, else a Vector."""
    import promql_parser
    return _eval(promql_parser.parse(substitute(expr, **subst)), series)


def _eval(node: Any, s: Series) -> Any:
    import promql_parser as pq
    np = s.np
    if isinstance(node, pq.NumberLiteral):
        return float(node.val)
    if isinstance(node, pq.ParenExpr):
        return _eval(node.expr, s)
    if isinstance(node, pq.VectorSelector):
        return {k: v for k, v in s.data.items() if dict(k)["__name__"] == node.name and _matches(k, node.matchers)}
    if isinstance(node, pq.Call):
        name = node.func.name
        if name in ("rate", "increase"):
            (arg,) = node.args
            window = arg.range.total_seconds()
            out = {}
            for k, v in _eval(arg.vector_selector, s).items():
                out[_drop_name(k)] = _increase(s.times, v, window, np) / (window if name == "rate" else 1.0)
            return out
        if name == "histogram_quantile":
            q, vec = _eval(node.args[0], s), _eval(node.args[1], s)
            return _quantile(q, vec, np)
        raise ValueError(f"function {name} is not evaluated here")
    if isinstance(node, pq.AggregateExpr):
        op = str(node.op)
        vec = _eval(node.expr, s)
        keep = list(node.modifier.labels) if node.modifier is not None else []
        if node.modifier is not None and str(node.modifier.type).endswith("Without"):
            raise ValueError("without() is not evaluated here")
        groups: Dict[Labels, list] = {}
        for k, v in vec.items():
            d = dict(k)
            groups.setdefault(tuple((n, d.get(n, "")) for n in sorted(keep)), []).append(v)
        f = {"sum": np.nansum, "max": np.nanmax, "min": np.nanmin}.get(op)
        if f is None:
            raise ValueError(f"aggregation {op} is not evaluated here")
        out = {}
        for k, vs in groups.items():
            stack = np.vstack(vs)
            with warnings.catch_warnings():          # a column of NaN only: "All-NaN slice"
                warnings.simplefilter("ignore", RuntimeWarning)
                r = f(stack, axis=0)
            r[np.all(np.isnan(stack), axis=0)] = np.nan
            out[k] = r
        return out
    if isinstance(node, pq.BinaryExpr):
        op = str(node.op)
        lhs, rhs = _eval(node.lhs, s), _eval(node.rhs, s)
        arith = {"*": np.multiply, "/": np.divide, "+": np.add, "-": np.subtract}
        cmp = {">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal, "==": np.equal,
               "!=": np.not_equal}
        if node.modifier is not None and (node.modifier.matching is not None or node.modifier.card is not None
                                          and "OneToOne" not in str(node.modifier.card)):
            raise ValueError("vector matching modifiers are not evaluated here")

        def apply(a: Any, b: Any) -> Any:
            with np.errstate(all="ignore"):
                if op in arith:
                    return arith[op](a, b)
                if op in cmp:       # a filter: keep the left side where it holds
                    keep = cmp[op](a, b)
                    return np.where(keep, a, np.nan)
            raise ValueError(f"operator {op} is not evaluated here")
        if isinstance(lhs, float) and isinstance(rhs, float):
            return float(apply(lhs, rhs))
        if isinstance(rhs, float):
            return {_drop_name(k) if op in arith else k: apply(v, rhs) for k, v in lhs.items()}
        if isinstance(lhs, float):
            return {_drop_name(k): apply(lhs, v) for k, v in rhs.items()}
        right = {_drop_name(k): v for k, v in rhs.items()}
        return {_drop_name(k): apply(v, right[_drop_name(k)]) for k, v in lhs.items() if _drop_name(k) in right}
    raise ValueError(f"{type(node).__name__} is not evaluated here")


def _increase(times: Any, v: Any, window: float, np: Any) -> Any:
    """v's growth over the window ending at each time, counter resets added
    back; NaN where the series is absent at that time."""
    ok = ~np.isnan(v)
    steps = np.where(ok, v, 0.0)
    # each sample's increase from the previous present one (a fall is a reset: the new value is the increase)
    prev = np.full_like(v, np.nan)
    last = np.nan
    for i in range(len(v)):
        prev[i] = last
        if ok[i]:
            last = v[i]
    delta = np.where(np.isnan(prev), 0.0, np.where(steps >= prev, steps - prev, steps))
    delta[~ok] = 0.0
    cum = np.cumsum(delta)
    out = np.full_like(v, np.nan)
    for i in range(len(v)):
        if not ok[i]:
            continue
        j = np.searchsorted(times, times[i] - window - 1e-9, side="left")
        j = min(j, i)
        while j < i and not ok[j]:
            j += 1
        out[i] = cum[i] - cum[j]
    return out


def _quantile(q: float, vec: Vector, np: Any) -> Vector:
    groups: Dict[Labels, list] = {}
    for k, v in vec.items():
        d = dict(k)
        le = float(d.pop("le"))
        groups.setdefault(tuple(sorted(d.items())), []).append((le, v))
    out = {}
    for k, buckets in groups.items():
        buckets.sort(key=lambda b: b[0])
        bounds = [b for b, _ in buckets]
        counts = np.vstack([v for _, v in buckets])
        res = np.full(counts.shape[1], np.nan)
        for i in range(counts.shape[1]):
            col = counts[:, i]
            if np.isnan(col).any() or col[-1] <= 0:
                continue
            rank = q * col[-1]
            b = int(np.searchsorted(col, rank, side="left"))
            if b >= len(bounds) - 1:        # in the +Inf bucket: the highest finite bound
                res[i] = bounds[-2]
                continue
            lo, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], col[b - 1])
            n = col[b] - below
            res[i] = lo + (bounds[b] - lo) * ((rank - below) / n if n > 0 else 1.0)
        out[k] = res
    return out


def legend(fmt: str, labels: Labels) -> str:
    d = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt).strip()


# -- drawing ------------------------------------------------------------------
BG, PANEL, TEXT, GRID, MUTED = "#111217", "#181b1f", "#ccccdc", "#2c3235", "#8e8e9a"
COLORS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "blue": "#5794f2", "text": TEXT,
          "dark-orange": "#fa6400"}
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#5ac4d8", "#b877d9", "#705da0", "#37872d"]
MiB = 1 << 20


def _fmt(unit: str) -> Callable[[float], str]:
    def f(v: float) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "No data"
        if unit == "bytes":
            for div, suffix in ((1 << 30, "GiB"), (MiB, "MiB"), (1 << 10, "KiB")):
                if abs(v) >= div:
                    return f"{v / div:.3g} {suffix}"
            return f"{v:.0f} B"
        if unit == "s":
            return f"{v * 1e3:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
        if unit in ("wps", "cps"):
            return f"{v:.3g}/s"
        return f"{v:.4g}"
    return f


def _color_for(name: str, overrides: list) -> Tuple[Optional[str], Optional[str], bool]:
    color, style, nofill = None, None, False
    for o in overrides:
        m = o["matcher"]
        hit = name == m["options"] if m["id"] == "byName" else re.fullmatch(m["options"], name) is not None
        if not hit:
            continue
        for p in o["properties"]:
            if p["id"] == "color":
                color = COLORS.get(p["value"].get("fixedColor"), p["value"].get("fixedColor"))
            elif p["id"] == "custom.lineStyle":
                style = "--"
            elif p["id"] == "custom.fillOpacity" and p["value"] == 0:
                nofill = True
    return color, style, nofill


def _style(ax: Any) -> None:
    ax.set_facecolor(PANEL)
    for sp in ax.spines.values():
        sp.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def _binary_ticks(ax: Any) -> None:
    """Byte axes ticked at binary multiples (64 MiB, not 67.1 MB)."""
    from matplotlib.ticker import MultipleLocator
    lo, hi = ax.get_ylim()
    step = 1
    while (hi - lo) / step > 5:
        step *= 2
    ax.yaxis.set_major_locator(MultipleLocator(step))


def _draw_timeseries(ax: Any, panel: dict, s: Series, kills: List[float]) -> List[Tuple[Any, str]]:
    """Draws the panel's queries; returns the legend's (handle, label)s."""
    from matplotlib.ticker import FuncFormatter
    np = s.np
    d = panel["fieldConfig"]["defaults"]
    unit, custom = d.get("unit", "none"), d.get("custom", {})
    bars, stacked = custom.get("drawStyle") == "bars", custom.get("stacking", {}).get("mode") == "normal"
    log = custom.get("scaleDistribution", {}).get("type") == "log"
    step = RATE_WINDOW_S            # one bar per rate window, as Grafana shows at a step that long
    edges = np.arange(s.times[0], s.times[-1], step)
    at = [max(0, min(len(s.times) - 1, int(np.searchsorted(s.times, e + step, side="right")) - 1)) for e in edges]
    bottom = np.zeros(len(edges))
    shown: List[Tuple[Any, str]] = []
    for t in panel["targets"]:
        vec = evaluate(t["expr"], s, range_s=float(s.times[-1] - s.times[0]))
        for labels in sorted(vec):
            v = vec[labels]
            if np.all(np.isnan(v)):
                continue
            name = legend(t.get("legendFormat", ""), labels)
            color, style, nofill = _color_for(name, panel["fieldConfig"].get("overrides", []))
            color = color or PALETTE[len(shown) % len(PALETTE)]
            if bars:
                vals = np.nan_to_num(v[at])
                h = ax.bar(edges + step / 2, vals, width=step * 0.8, bottom=bottom if stacked else 0, color=color,
                           alpha=0.85)
                if stacked:
                    bottom = bottom + vals
            else:
                (h,) = ax.plot(s.times, v, color=color, linewidth=1.2, linestyle=style or "-")
                if not (nofill or style or log):
                    ax.fill_between(s.times, np.nan_to_num(v), color=color, alpha=0.10, linewidth=0)
            shown.append((h, name))
    if log:
        from matplotlib.ticker import LogLocator, NullFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.5, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif custom.get("axisSoftMin") == 0:
        ax.set_ylim(bottom=0)
    if bars and not shown:
        ax.set_ylim(0, 1)
    if unit == "bytes" and not log:
        _binary_ticks(ax)
    elif unit == "none" and not log:
        from matplotlib.ticker import MaxNLocator
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    fmt = _fmt(unit)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt(v)))
    for k in kills:
        ax.axvline(k, color=COLORS["red"], linewidth=0.8, alpha=0.45, linestyle=":")
    if not shown:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=9)
    return shown


def _draw_heatmap(ax: Any, panel: dict, s: Series) -> None:
    np = s.np
    (t,) = panel["targets"]
    vec = evaluate(t["expr"], s)
    rows = sorted(((float(dict(k)["le"]), v) for k, v in vec.items()), key=lambda r: r[0])
    if not rows:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=9)
        return
    step = RATE_WINDOW_S
    cols = np.arange(s.times[0] + step, s.times[-1] + step, step)
    idx = [min(len(s.times) - 1, int(np.searchsorted(s.times, c, side="right")) - 1) for c in cols]
    cum = np.nan_to_num(np.vstack([v[idx] for _, v in rows]))
    counts = np.diff(np.vstack([np.zeros(cum.shape[1]), cum]), axis=0)       # de-accumulated, as Grafana does
    labels = [_fmt("s")(b) if not math.isinf(b) else "+Inf" for b, _ in rows]
    masked = np.ma.masked_less_equal(counts, 0)
    from matplotlib.colors import LinearSegmentedColormap
    cmap = LinearSegmentedColormap.from_list("oranges", ["#3d2a14", "#ff9830", "#ffd8a8"])
    x = np.append(cols - step, cols[-1])
    ax.pcolormesh(x, np.arange(len(rows) + 1), masked, cmap=cmap, shading="flat",
                  vmin=0, vmax=max(1.0, float(counts.max())))
    ax.set_yticks(np.arange(len(rows)) + 0.5)
    ax.set_yticklabels(labels, fontsize=5.5)
    ax.set_ylim(0, len(rows))
    ax.grid(False)


def _draw_stat(ax: Any, panel: dict, s: Series) -> None:
    (t,) = panel["targets"]
    d = panel["fieldConfig"]["defaults"]
    vec = evaluate(t["expr"], s, range_s=float(s.times[-1] - s.times[0]) if len(s.times) else 60.0)
    vals = [v[~s.np.isnan(v)] for v in vec.values()]
    value = float(vals[0][-1]) if vals and len(vals[0]) else float("nan")
    steps = d.get("thresholds", {}).get("steps", [])
    color = None
    for st in steps:
        if st["value"] is None or (not math.isnan(value) and value >= st["value"]):
            color = COLORS.get(st["color"], st["color"])
    text = _fmt(d.get("unit", "none"))(value)
    for m in d.get("mappings", []):
        key = f"{value:g}" if not math.isnan(value) else ""
        if key in m.get("options", {}):
            text = m["options"][key]["text"]
    if math.isnan(value):
        color = PANEL
    ax.set_facecolor(color or PANEL)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)
    ax.text(0.5, 0.42, text, transform=ax.transAxes, ha="center", va="center", fontsize=16, color="white",
            fontweight="bold")


def draw(scrapes: Sequence[Tuple[float, List[Sample]]], png: str, dashboard_path: str = DASHBOARD,
         subtitle: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    with open(dashboard_path) as f:
        dash = json.load(f)
    s = Series(scrapes)
    if len(s.times) < 2:
        raise ValueError("fewer than two scrapes: nothing to draw")
    ann = next(a for a in dash["annotations"]["list"] if a.get("expr"))
    kills = []
    for v in evaluate(ann["expr"], s).values():
        kills += [float(t) for t, x in zip(s.times, v) if not math.isnan(x)]
    rows_h = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    unit_in, width_in, head_in = 0.34, 16.0, 0.55
    height_in = rows_h * unit_in + head_in
    fig = plt.figure(figsize=(width_in, height_in), facecolor=BG)
    fig.text(0.01, 1 - 0.22 / height_in, dash["title"], color=TEXT, fontsize=13, fontweight="bold", va="center")
    if subtitle:
        fig.text(0.09, 1 - 0.22 / height_in, subtitle, color=MUTED, fontsize=8.5, va="center")
    pad_x, pad_top, pad_bottom, left_in = 0.006, 0.32, 0.52, 0.62      # inches: title, ticks and legend, y labels
    for p in dash["panels"]:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        top_in = head_in + g["y"] * unit_in
        if p["type"] == "row":
            fig.text(x0 + 0.004, 1 - (top_in + unit_in * 0.55) / height_in, p["title"], color=TEXT, fontsize=10,
                     fontweight="bold", va="center")
            continue
        h_in = g["h"] * unit_in
        box = fig.add_axes([x0 + pad_x / 2, 1 - (top_in + h_in) / height_in + 0.004, w - pad_x,
                            h_in / height_in - 0.008])
        box.set_facecolor(PANEL)
        box.set_xticks([])
        box.set_yticks([])
        for sp in box.spines.values():
            sp.set_color(GRID)
        box.text(0.01, 1 - 0.16 / h_in, p["title"], transform=box.transAxes, color=TEXT, fontsize=8.5,
                 fontweight="bold", va="center")
        if p["type"] == "stat":
            ax = fig.add_axes([x0 + pad_x, 1 - (top_in + h_in - 0.08) / height_in, w - 2 * pad_x,
                               (h_in - 0.4) / height_in])
            _draw_stat(ax, p, s)
            continue
        bottom = 1 - (top_in + h_in - pad_bottom) / height_in
        inner = [x0 + left_in / width_in, bottom, w - (left_in + 0.15) / width_in,
                 (h_in - pad_top - pad_bottom) / height_in]
        ax = fig.add_axes(inner)
        _style(ax)
        if p["type"] == "heatmap":
            _draw_heatmap(ax, p, s)
        else:
            shown = _draw_timeseries(ax, p, s, kills)
            if shown:
                fig.legend([h for h, _ in shown], [n for _, n in shown], loc="upper left", frameon=False,
                           bbox_to_anchor=(inner[0], bottom - 0.17 / height_in), fontsize=6.5, labelcolor=TEXT,
                           ncol=min(4 if g["w"] > 8 else 2, len(shown)), handlelength=1.5, borderaxespad=0, columnspacing=1.2)
        ax.set_xlim(s.times[0], s.times[-1])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f} s"))
    fig.savefig(png, dpi=80, facecolor=BG)
    plt.close(fig)


# -- the demo: a real run in an arena --------------------------------------------
def demo(png: str, seconds: float, keep: str | None) -> int:
    """The daemon on a 256 MiB arena with its endpoint on, hogs that grow
    until killed, a scrape every 0.5 s; then the picture."""
    if os.geteuid() != 0:
        print("demo: needs root (it makes cgroups and runs the daemon with BPF)", file=sys.stderr)
        return 2
    from oomkiller_bench.arena import Arena
    tmp = tempfile.mkdtemp(prefix="oomk-dash-")          # 0700: fit for the sockets
    address = os.path.join(tmp, "metrics.sock")
    daemon = None
    rec = None
    started = time.monotonic()
    with Arena(f"oomk-dash-{uuid.uuid4().hex[:8]}", 256 << 20) as arena:
        try:
            svc = arena.job("svc")
            arena.spawn_idle(svc, 48 << 20)
            err = open(os.path.join(tmp, "daemon.err"), "w")
            daemon = subprocess.Popen([sys.executable, "-m", "oomkiller", "run", "--domain", arena.path,
                                       "--protect", "svc", "--control", os.path.join(tmp, "control.sock"),
                                       "--json-log", os.path.join(tmp, "decisions.jsonl")],
                                      cwd=CHECKOUT, env={**os.environ, "OOMKILLER_METRICS": address},
                                      stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + 30
            while not os.path.exists(address):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    err.flush()
                    print(f"demo: the daemon did not open its endpoint:\n{open(err.name).read()[-2000:]}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.05)
            rec = Recorder(address).start()
            # Hogs that grow until killed, one at a time and two at once:
            # (start second, [(chunk bytes, pause s, a memory limit of the
            # job's own), ...]). The fast ones (4 MiB chunks, no pause) race
            # the kernel, which the armed kill is for; the one with a limit
            # of its own is left to the kernel's OOM killer (README: The
            # pre-armed kill), which the daemon counts as not prevented.
            plan = [(3, [(2 << 20, 0.01, 0)]), (10, [(4 << 20, 0.0, 0)]), (17, [(1 << 20, 0.004, 0)]),
                    (24, [(2 << 20, 0.02, 0), (2 << 20, 0.02, 0)]), (32, [(4 << 20, 0.0, 0)]),
                    (39, [(1 << 20, 0.002, 48 << 20)]), (44, [(4 << 20, 0.0, 0)]),
                    (51, [(4 << 20, 0.002, 0), (1 << 20, 0.004, 0)])]
            n = 0
            t0 = time.monotonic()
            for at, hogs in plan:
                if at >= seconds - 3:
                    break
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                procs = []
                for chunk, pause, limit in hogs:
                    n += 1
                    job = arena.job(f"hog{n}")
                    if limit:
                        name = "memory.limit_in_bytes" if arena.layout.memory_v1 else "memory.max"
                        with open(os.path.join(job.path, name), "w") as f:
                            f.write(str(limit))
                    procs.append(arena.spawn_hog(job, chunk, pause))
                for p in procs:
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        print(f"demo: hog {p.pid} still alive after 15 s", file=sys.stderr)
                        p.kill()
                        p.wait()
            time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        finally:
            if rec is not None:
                rec.stop()
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
    results: Dict[str, int] = {}
    try:
        with open(os.path.join(tmp, "decisions.jsonl")) as f:
            for line in f:
                r = json.loads(line).get("result")
                results[str(r)] = results.get(str(r), 0) + 1
    except (OSError, ValueError) as e:
        print(f"demo: the decision records: {e}", file=sys.stderr)
    if keep:
        save(rec.scrapes, keep)
        with open(keep + ".prom", "w") as f:
            f.write(rec.last_text)
    print(f"demo: {len(rec.scrapes)} scrapes ({rec.failed} failed) over {time.monotonic() - started:.0f} s, "
          f"decision results {results}; work files in {tmp}")
    draw(rec.scrapes, png, subtitle=f"a 256 MiB arena, {n} hogs that grow until killed, scraped every "
                                    f"{INTERVAL_S:g} s; rate windows {RATE_WINDOW_S:g} s")
    print(f"demo: wrote {png} ({os.path.getsize(png) // 1024} KiB)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="a real run in a 256 MiB arena, then the picture (root)")
    d.add_argument("png")
    d.add_argument("--seconds", type=float, default=60.0)
    d.add_argument("--keep", metavar="SERIES.jsonl", help="keep the scrapes (and the last page, .prom)")
    sc = sub.add_parser("scrape", help="record an endpoint every 0.5 s until Ctrl-C or --seconds")
    sc.add_argument("address")
    sc.add_argument("series")
    sc.add_argument("--seconds", type=float, default=0.0)
    dr = sub.add_parser("draw", help="draw a recording")
    dr.add_argument("series")
    dr.add_argument("png")
    tb = sub.add_parser("table", help="the README's table of the metrics, from an endpoint or a file of its page")
    tb.add_argument("source")
    a = p.parse_args(argv)
    try:
        if a.cmd == "demo":
            return demo(a.png, a.seconds, a.keep)
        if a.cmd == "scrape":
            rec = Recorder(a.address).start()
            end = time.monotonic() + a.seconds
            try:
                while not a.seconds or time.monotonic() < end:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            rec.stop()
            save(rec.scrapes, a.series)
            print(f"{len(rec.scrapes)} scrapes, {rec.failed} failed"
                  + (f" (the last: {rec.last_error})" if rec.failed else ""))
            return 0 if rec.scrapes else 1
        if a.cmd == "draw":
            draw(load(a.series), a.png)
            return 0
        if os.path.isfile(a.source):
            with open(a.source) as f:
                text = f.read()
        else:
            text = scrape(a.source)
        try:
            print(metric_table(text))
        except (ValueError, IndexError) as e:
            raise ValueError(f"{a.source}: not a metrics page ({e})") from None
        return 0
    except (OSError, ValueError) as e:
        print(f"{a.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
