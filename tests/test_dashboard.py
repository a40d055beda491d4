"""The Grafana dashboard (deploy/grafana/oomkiller.json) and the README's
table of the metrics cannot drift from what the endpoint exports: every
query names only metrics and labels of the registry, every metric is on
the dashboard, and the README's table is the one the registry makes."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re

import pytest

from trees import killing_walk, short_arena, short_config

pytest.importorskip("prometheus_client", reason="the optional metrics extra is not installed")
promql_parser = pytest.importorskip("promql_parser", reason="promql-parser (the test extra) is not installed")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from oomkiller import metrics  # noqa: E402

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(CHECKOUT, "deploy", "grafana", "oomkiller.json")
README = os.path.join(CHECKOUT, "README.md")
MiB = 1 << 20
# Labels Prometheus puts on every scraped series itself.
TARGET_LABELS = {"instance", "job"}


def _render():
    spec = importlib.util.spec_from_file_location("render", os.path.join(CHECKOUT, "deploy", "grafana", "render.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _EbpfSource:
    """Stands for the eBPF source: its name and the counters publish reads."""
    name = "ebpf"
    lost_perf, rate_limited, outside_domain = 3, 5, 7

    def stats(self):
        return {}


class _PreArm:
    armed = 0

    def arm(self, path, cg_id):
        self.armed = cg_id

    def disarm(self):
        self.armed = 0


def _exposition(proc_tree, v2_tree, monkeypatch) -> str:
    """The page the daemon's registry serves (built as metrics.py builds
    it) after a kill by a daemon on fixtures with the eBPF source and
    prearm, so that every family is there."""
    from oomkiller.daemon import Daemon
    from oomkiller.model import PressureEvent
    short_arena(proc_tree, v2_tree, (("hog", "hog", 4101, 150),))
    from oomkiller.hooks import Hooks
    hooks = Hooks("", "/bin/true")      # a daemon with a hook exports its runs
    d = Daemon(short_config(proc_tree, v2_tree), json_out=io.StringIO(), clock=lambda: 5_000_000_000,
               sources=[_EbpfSource()], arm=_PreArm(), hooks=hooks)

    # the domain's use falls by 100 MiB once it is killed
    monkeypatch.setattr(d.killer, "walk", killing_walk(v2_tree, 150 * MiB))
    d.wake([PressureEvent("timer", "tick", timestamp_usec=4_990_000)])
    d.publish()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Collector(lambda: d.published))
    hooks.close()
    return generate_latest(registry).decode()


@pytest.fixture
def exposition(proc_tree, v2_tree, monkeypatch) -> str:
    return _exposition(proc_tree, v2_tree, monkeypatch)


def _exported(text: str) -> dict[str, set[str]]:
    """Each sample name a query can select, with its labels."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def _family_of(sample: str, families: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total", ""):
        if sample.endswith(suffix) and sample[: len(sample) - len(suffix)] in families:
            return sample[: len(sample) - len(suffix)]
    raise AssertionError(sample)


def _exprs(node, where="") -> list[tuple[str, str]]:
    """Every PromQL query in the dashboard: targets, annotations, and the
    variables' label_values() queries."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{where}/{node.get('title') or node.get('name') or k}"
            if k == "expr" and isinstance(v, str):
                out.append((where, v))
            elif k == "definition" and isinstance(v, str):
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v)
                assert m, f"{where}: a variable query this test does not read: {v!r}"
                out.append((where, m.group(1)))
            else:
                out += _exprs(v, here)
    elif isinstance(node, list):
        for v in node:
            out += _exprs(v, where)
    return out


def _selectors_and_groupings(expr: str):
    """The metric selectors (name, label names matched) and the label names
    grouped or matched on, of a query with Grafana's variables filled in."""
    ast = promql_parser.parse(_render().substitute(expr))
    selectors, grouped = [], set()

    def visit(n):
        if isinstance(n, promql_parser.VectorSelector):
            assert n.name, f"{expr!r}: a selector without a metric name"
            assert not n.matchers.or_matchers, f"{expr!r}: or-matchers"
            selectors.append((n.name, {m.name for m in n.matchers.matchers}))
        elif isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            grouped.update(n.modifier.labels)
        elif isinstance(n, promql_parser.BinaryExpr) and n.modifier is not None and n.modifier.matching is not None:
            grouped.update(n.modifier.matching.labels)
    promql_parser.walk(ast, visit)
    return selectors, grouped


def test_every_query_names_only_what_the_registry_exports(exposition):
    exported = _exported(exposition)
    with open(DASHBOARD) as f:
        exprs = _exprs(json.load(f))
    assert len(exprs) > 20
    for where, expr in exprs:
        selectors, grouped = _selectors_and_groupings(expr)
        assert selectors, f"{where}: {expr!r} selects no metric"
        labels = set(TARGET_LABELS)
        for name, matched in selectors:
            assert name in exported, f"{where}: {expr!r} names {name}, which the daemon does not export"
            assert matched <= exported[name] | TARGET_LABELS, f"{where}: {expr!r} matches {matched} on {name}"
            labels |= exported[name]
        assert grouped <= labels, f"{where}: {expr!r} groups by {grouped - labels}, which its metrics lack"


def test_every_exported_metric_is_on_the_dashboard(exposition):
    families = {f.name for f in text_string_to_metric_families(exposition)}
    with open(DASHBOARD) as f:
        exprs = _exprs(json.load(f))
    shown = {_family_of(name, families) for _w, e in exprs for name, _m in _selectors_and_groupings(e)[0]}
    assert shown == families, f"not on the dashboard: {sorted(families - shown)}"


def test_a_selector_the_daemon_does_not_export_is_caught(exposition):
    exported = _exported(exposition)
    (name, _m), = _selectors_and_groupings('rate(oomkiller_kills_totl{instance=~"$instance"}[$__rate_interval])')[0]
    assert name not in exported
    assert _selectors_and_groupings('sum by (instance, result) (oomkiller_kills_total)')[1] == {"instance", "result"}
    with pytest.raises(ValueError):
        promql_parser.parse(_render().substitute("sum by (le (rate(oomkiller_freed_bytes_total[$__range]))"))


def test_the_dashboard_is_an_importable_one():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["schemaVersion"] >= 36 and dash["uid"] == "oomkiller" and dash["id"] is None
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    (var,) = dash["templating"]["list"]
    assert var["name"] == "instance" and var["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        here = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not here & cells, f"{p['title']} overlaps another panel"
        cells |= here
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: {t['expr']!r} ignores $instance"
    assert {p["type"] for p in panels} == {"row", "stat", "timeseries", "heatmap"}


def test_the_renderer_draws_every_panel_from_its_own_query(exposition, tmp_path):
    """render.py evaluates each panel's query on scrapes (here two pages of
    the fixture registry, one second apart) and draws them all."""
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")
    render = _render()
    page = render.samples(exposition)
    later = [(n, lab, v * 2 if n.endswith(("_total", "_bucket", "_count", "_sum")) else v) for n, lab, v in page]
    scrapes = [(0.0, page), (1.0, later)]
    s = render.Series(scrapes)
    freed = render.evaluate('sum by (instance) (increase(oomkiller_freed_bytes_total{instance=~"$instance"}'
                            '[$__rate_interval]))', s)
    (values,) = freed.values()
    assert list(values) == [0.0, 100 * MiB]
    p99 = render.evaluate('histogram_quantile(0.99, sum by (le) (rate(oomkiller_signal_to_empty_seconds_bucket'
                          '{instance=~"$instance"}[$__rate_interval])))', s)
    (values,) = p99.values()
    assert 0.0025 < values[1] <= 0.005           # the one kill emptied in 3 ms: its bucket is (2.5, 5] ms
    with open(DASHBOARD) as f:
        for where, expr in _exprs(json.load(f)):
            assert render.evaluate(expr, s), f"{where}: {expr!r} gives nothing on the fixture's scrapes"
    png = tmp_path / "d.png"
    render.draw(scrapes, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = tmp_path / "s.jsonl"
    render.save(scrapes, str(series))
    assert render.load(str(series)) == scrapes
    series.write_text('{"t": 0, "samples": 5}\n')
    assert render.main(["draw", str(series), str(png)]) == 1


def test_the_readme_table_is_the_registrys(exposition):
    table = _render().metric_table(exposition)
    with open(README) as f:
        readme = f.read()
    head = table.splitlines()[0]
    assert readme.count(head) == 1, "the README has no table of the metrics (or two)"
    start = readme.index(head)
    lines = []
    for line in readme[start:].splitlines():
        if not line.strip().startswith("|"):
            break
        lines.append(line.strip())
    assert "\n".join(lines) == table, ("the README's table of the metrics is not the registry's: "
                                       "python deploy/grafana/render.py table ADDRESS prints it")
    names = {re.match(r"\| `(\w+)`", line).group(1) for line in lines[2:]}
    families = {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(exposition)}
    assert names == families
