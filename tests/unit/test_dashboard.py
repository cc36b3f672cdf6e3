"""The Grafana dashboard (deploy/grafana/embedserve.json): it parses, every panel queries the chosen data source, every
metric it names is one the server really exposes, and every metric the server defines has a panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from embedserve.metrics import Metrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "embedserve.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRIC_NAME = re.compile(r"embedserve_[a-z_]+")
RANGE = re.compile(r"\[([^\]]*)\]")
QUANTILE_GROUPING = re.compile(r"histogram_quantile\(\s*[0-9.]+\s*,\s*sum by \(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
UNITS = {"reqps", "s", "percentunit", "short"}

Panel = dict[str, Any]


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[Panel]) -> Iterator[Panel]:
    """Every panel, rows and the panels folded inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels() -> list[Panel]:
    """The panels that query something (rows only group them)."""
    return [p for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]


def exprs(panel: Panel) -> list[str]:
    return [str(t["expr"]) for t in panel.get("targets", [])]


def all_exprs() -> list[tuple[str, str]]:
    return [(p["title"], e) for p in query_panels() for e in exprs(p)]


def families() -> dict[str, set[str]]:
    """Each metric family the server defines, by its name, with the sample names the exposition gives it."""
    return {
        family.name: {family.name + suffix for suffix in SUFFIXES[family.type]}
        for family in Metrics().registry.collect()
    }


def labels_by_sample_name() -> dict[str, set[str]]:
    """The label names of every sample the server exposes (one child made for each labelled collector)."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*("x" for _ in collector._labelnames))
    return {
        sample.name: set(sample.labels) - {"le"} for family in metrics.registry.collect() for sample in family.samples
    }


def exposed() -> set[str]:
    return {name for names in families().values() for name in names}


def test_the_dashboard_parses_and_is_importable() -> None:
    board = dashboard()
    assert board["title"] == "embedserve"
    assert board["uid"] == "embedserve"
    assert board["schemaVersion"] >= 36
    assert query_panels()


def test_the_template_variables_are_a_prometheus_data_source_and_a_multi_select_model() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == DATASOURCE
    assert model["query"] == "label_values(embedserve_requests_total, model)"
    assert model["multi"] is True
    assert model["includeAll"] is True


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in query_panels():
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_metric_name_in_a_query_is_one_the_server_exposes() -> None:
    names = exposed()
    assert "embedserve_requests_total" in names
    assert "embedserve_batch_tokens_sum" in names
    for title, expr in all_exprs():
        used = METRIC_NAME.findall(expr)
        assert used, f"{title}: {expr}"
        unknown = set(used) - names
        assert not unknown, f"{title} queries {sorted(unknown)}, which the server does not expose"


def test_every_metric_the_server_defines_has_a_panel() -> None:
    used = {name for _, expr in all_exprs() for name in METRIC_NAME.findall(expr)}
    unused = sorted(family for family, names in families().items() if not names & used)
    assert not unused, f"no panel shows {unused}"


def test_rates_use_the_rate_interval() -> None:
    for title, expr in all_exprs():
        for window in RANGE.findall(expr):
            assert window == "$__rate_interval", f"{title}: {expr}"


def test_quantiles_are_taken_over_buckets_summed_by_le() -> None:
    quantiles = [(title, expr) for title, expr in all_exprs() if "histogram_quantile" in expr]
    assert quantiles
    for title, expr in quantiles:
        groupings = QUANTILE_GROUPING.findall(expr)
        assert groupings, f"{title}: {expr}"
        for grouping in groupings:
            assert "le" in {label.strip() for label in grouping.split(",")}, f"{title}: {expr}"
        assert all(name.endswith("_bucket") for name in METRIC_NAME.findall(expr)), f"{title}: {expr}"


def test_queries_of_per_model_metrics_follow_the_model_selector() -> None:
    labels = labels_by_sample_name()
    for title, expr in all_exprs():
        if all("model" in labels.get(name, set()) for name in METRIC_NAME.findall(expr)):
            assert 'model=~"$model"' in expr, f"{title}: {expr}"


def test_units_fit_what_the_panels_show() -> None:
    for panel in query_panels():
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if panel["type"] == "table":
            continue
        assert unit in UNITS, panel["title"]
        panel_exprs = exprs(panel)
        if all("_duration_seconds_bucket" in e for e in panel_exprs):
            assert unit == "s", panel["title"]
        if any("embedserve_requests_total" in e and "/" not in e for e in panel_exprs):
            assert unit == "reqps", panel["title"]
        if re.search(r"\bratio\b", panel["title"], re.IGNORECASE):
            assert unit == "percentunit", panel["title"]


def test_the_latency_panel_shows_p50_p90_and_p99_by_route() -> None:
    (panel,) = [p for p in query_panels() if any("embedserve_request_duration_seconds_bucket" in e for e in exprs(p))]
    quantiles = sorted(float(re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)[0]) for e in exprs(panel))
    assert quantiles == [0.5, 0.9, 0.99]
    assert all("sum by (le, route)" in e for e in exprs(panel))


def test_build_info_shows_the_version() -> None:
    (panel,) = [p for p in query_panels() if any("embedserve_build_info" in e for e in exprs(p))]
    assert all("version" in e for e in exprs(panel))
