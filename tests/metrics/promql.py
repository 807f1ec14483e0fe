"""Reading the chart's Grafana dashboards: their PromQL, with Grafana's variables substituted, and the metric
names each expression references; and the metric names an exporter's /metrics text exposes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from prometheus_client.parser import text_string_to_metric_families

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "modelfleet" / "dashboards"
VLLM_DASHBOARDS = Path(__file__).resolve().parent / "vllm_dashboards"  # vLLM's own, see each file's "source"

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
            "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",), "untyped": ("",)}


@dataclass(frozen=True)
class Query:
    dashboard: str
    title: str
    expr: str  # as written, with Grafana variables


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, labels, keywords and numbers excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in KEYWORDS}


def substitute(expr: str, rate_interval: str = "1m", values: dict[str, str] | None = None) -> str:
    """Grafana variables -> values PromQL accepts: intervals become durations, ``values`` what they say, other
    selections match everything."""
    known = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": "1h", **(values or {})}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return known.get(name, ".*")

    return _VARIABLE.sub(value, expr)


def dashboards(directory: Path = DASHBOARDS) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def panel_queries(name: str, board: dict) -> Iterator[Query]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield Query(name, panel["title"], target["expr"])


def variable_queries(name: str, board: dict) -> Iterator[Query]:
    """The PromQL inside `label_values(<series>, <label>)` variable queries."""
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query.strip())
        assert match, f"{name}: variable {variable['name']} has an unsupported query {query!r}"
        if match.group(1):
            yield Query(name, f"variable {variable['name']}", match.group(1))


def all_queries(name: str, board: dict) -> list[Query]:
    return [*panel_queries(name, board), *variable_queries(name, board)]


def exported_names(metrics_text: str) -> set[str]:
    """Every series name an exporter's /metrics can produce, including families that have no samples yet
    (a labelled counter nobody incremented shows only its HELP and TYPE lines)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
