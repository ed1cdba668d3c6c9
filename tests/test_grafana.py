"""The Grafana dashboard (monitoring/grafana/tidings.json) queries metrics a hub exports.

A real hub is scraped on its API port's ``/metrics``; every metric name in every panel
query (and in the node variable) must be a series of that export. Names are taken from
the PromQL syntax tree (promql-parser), after Grafana's variables are substituted as
Grafana does before it sends a query.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from .conftest import HubFactory

DASHBOARD = Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "tidings.json"

# The series each metric type exports, by suffix of the family name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_series(text: str) -> set[str]:
    """Series names in a Prometheus text export, including those of labelled metrics that
    have no child yet (the export has only their HELP and TYPE)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panels(panel) if "panels" in panel else [])
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for each panel target and each query variable's selector."""
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(<selector>, <label>) is Grafana's, not PromQL: its selector is.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            found.append((f"variable {variable['name']!r}", match[1]))
    return found


def interpolate(query: str) -> str:
    """Grafana's substitution: intervals become durations, other variables regexes."""
    query = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__\w+\}", "1m", query)
    return re.sub(r"\$\{\w+(:\w+)?\}|\$\w+", ".*", query)


def metric_names(query: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(interpolate(query)), visit)
    return names


def unknown_metrics(dashboard: dict[str, Any], exported: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, query in queries(dashboard)
        for name in sorted(metric_names(query) - exported)
    ]


async def scrape(make_hub: HubFactory) -> str:
    hub = await make_hub()
    assert hub.api is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{hub.api.port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_every_dashboard_query_names_exported_metrics(make_hub: HubFactory) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series(await scrape(make_hub))
    assert len(queries(dashboard)) > 20
    assert unknown_metrics(dashboard, exported) == []


async def test_a_query_naming_a_metric_not_exported_is_reported(make_hub: HubFactory) -> None:
    exported = exported_series(await scrape(make_hub))
    target = {"refId": "A"}
    dashboard = {
        "panels": [{"title": "row", "panels": [{"title": "t", "targets": [target]}]}],
        "templating": {"list": []},
    }
    # A counter without _total, a histogram without _bucket, a typo: none is a series.
    for wrong in ("tidings_bytes_sent", "tidings_publish_duration_seconds", "tidings_conections"):
        target["expr"] = f'sum(rate({wrong}{{instance=~"$instance"}}[$__rate_interval]))'
        assert unknown_metrics(dashboard, exported) == [f"panel 't' A: {wrong}"]


def test_every_panel_uses_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
