"""The chart's Grafana dashboards: well-formed, every PromQL expression parses (promtool), and every metric
they reference is one the real runtime, trainer and operator export (read from their live /metrics)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metrics.conftest import Exporter
from tests.metrics.exporters import http_get
from tests.metrics.promql import all_queries, dashboards, exported_names, metric_names, panel_queries, substitute
from tests.operator.conftest import OperatorProcess

BOARDS = dashboards()


def test_the_three_dashboards_exist() -> None:
    assert set(BOARDS) == {"serving", "training", "operator"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_is_well_formed(name: str) -> None:
    board = BOARDS[name]
    assert board["uid"] == f"modelfleet-{name}" and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        own = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not own & cells, f"{name}: panel {panel['title']!r} overlaps another"
        cells |= own
        if panel["type"] == "row":
            continue
        assert panel["description"] and panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"]["uid"] == "${datasource}"
            used = {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", target["expr"])}
            assert {v for v in used if not v.startswith("__")} <= set(variables), target["expr"]


def test_serving_panels_follow_the_model_name_variable() -> None:
    variables = {v["name"]: v for v in BOARDS["serving"]["templating"]["list"]}
    assert variables["model_name"]["query"]["query"] == "label_values(vllm:num_requests_running, model_name)"
    for query in panel_queries("serving", BOARDS["serving"]):
        assert 'model_name=~"$model_name"' in query.expr, query


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (Grafana's variables substituted)."""
    queries = [q for name, board in BOARDS.items() for q in all_queries(name, board)]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:{q.dashboard}:expr{i}", "expr": substitute(q.expr)} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def referenced(name: str) -> set[str]:
    return {metric for query in all_queries(name, BOARDS[name]) for metric in metric_names(query.expr)}


def test_serving_dashboard_metrics_are_exported_by_the_runtime(runtime: Exporter) -> None:
    missing = referenced("serving") - exported_names(runtime.metrics())
    assert not missing, f"the serving dashboard queries metrics modelfleet serve does not export: {missing}"


def test_training_dashboard_metrics_are_exported_by_the_trainer(trainer: Exporter) -> None:
    missing = referenced("training") - exported_names(trainer.metrics())
    assert not missing, f"the training dashboard queries metrics modelfleet train does not export: {missing}"


@pytest.mark.cluster
def test_operator_dashboard_metrics_are_exported_by_the_operator(operator: OperatorProcess) -> None:
    missing = referenced("operator") - exported_names(http_get(operator.metrics_url))
    assert not missing, f"the operator dashboard queries metrics the operator does not export: {missing}"
