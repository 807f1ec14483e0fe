"""Unit tests of the dashboard-reading helpers."""

from __future__ import annotations

import pytest

from tests.metrics.promql import exported_names, metric_names, substitute


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (model_name) (rate(vllm:prompt_tokens_total{model_name=~"$model_name"}[$__rate_interval]))',
     {"vllm:prompt_tokens_total"}),
    ("histogram_quantile(0.99, sum by (le, kind) (rate(a_seconds_bucket[5m])))", {"a_seconds_bucket"}),
    ("sum(rate(hits_total[1m])) / sum(rate(queries_total[1m]))", {"hits_total", "queries_total"}),
    ('process_cpu_seconds_total and on (job, instance) group by (job, instance) (x_total{result="error"})',
     {"process_cpu_seconds_total", "x_total"}),
    ('up offset 5m > bool 0 unless ignoring (pod) down', {"up", "down"}),
    ('rate(m{label="sum(rate(not_a_metric[1m]))"}[1m])', {"m"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_substitute_grafana_variables() -> None:
    expr = 'rate(x{a=~"$model_name", b=~"${namespace}"}[$__rate_interval])'
    assert substitute(expr) == 'rate(x{a=~".*", b=~".*"}[1m])'
    assert substitute(expr, rate_interval="30s").endswith("[30s])")


def test_exported_names_include_families_without_samples() -> None:
    text = """# HELP restarts Restarts.
# TYPE restarts counter
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="+Inf"} 1.0
latency_seconds_count 1.0
latency_seconds_sum 0.5
# HELP running Running.
# TYPE running gauge
running{model_name="m"} 2.0
"""
    names = exported_names(text)
    assert {"restarts_total", "latency_seconds_bucket", "latency_seconds_sum", "latency_seconds_count",
            "running"} <= names
    assert "latency_seconds" not in names and "restarts" not in names
