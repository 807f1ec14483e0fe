"""A real Prometheus (Debian's binary) scrapes the real runtime, trainer and operator every second; the
vLLM-style series carry the served model's name, and every dashboard panel returns data from it."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import openai
import pytest

from tests.helpers import wait_for
from tests.metrics.conftest import MODEL_NAME, Exporter
from tests.metrics.exporters import Prometheus
from tests.metrics.promql import dashboards, panel_queries, substitute
from tests.operator.conftest import OperatorProcess
from tests.operator.trainingjob.conftest import Jobs, job_manifest

RATE_WINDOW = "30s"  # long enough to span the requests below, at a 1s scrape interval
TEST_NAMESPACE = "metrics-test"  # what a PodMonitor's target labels would add
TRAININGJOB = "demo"


def host_port(url: str) -> str:
    return urlparse(url).netloc


def values(result: list[dict]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def panels_without_data(prometheus: Prometheus, board: str) -> list[str]:
    """The panel queries that return nothing (not even a zero or NaN series)."""
    return [f"{query.title}: {query.expr}" for query in panel_queries(board, dashboards()[board])
            if not prometheus.query(substitute(query.expr, RATE_WINDOW))]


def assert_every_panel_has_data(prometheus: Prometheus, board: str, timeout: float = 30) -> None:
    """Rates and increases need two scrapes of a series: poll until every panel has data."""
    try:
        wait_for(lambda: not panels_without_data(prometheus, board), timeout=timeout, what=f"data in every {board} panel")
    except AssertionError:
        raise AssertionError(f"{board} panels without data: {panels_without_data(prometheus, board)}") from None


@pytest.fixture
def prometheus_for_workloads(runtime: Exporter, trainer: Exporter, tmp_path: Path) -> Iterator[Prometheus]:
    prometheus = Prometheus(tmp_path, {
        "runtime": (host_port(runtime.url), {"namespace": TEST_NAMESPACE, "pod": "runtime-0"}),
        "trainer": (host_port(trainer.url), {"namespace": TEST_NAMESPACE, "trainingjob": TRAININGJOB}),
    })
    prometheus.start()
    try:
        wait_for(prometheus.targets_up, timeout=30, what="runtime and trainer targets up")
        yield prometheus
    finally:
        prometheus.stop()


def test_runtime_and_trainer_metrics_reach_prometheus_and_the_dashboards(
        prometheus_for_workloads: Prometheus, runtime: Exporter) -> None:
    prometheus = prometheus_for_workloads
    client = openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", timeout=60)
    completions = 4
    for i in range(completions):
        client.completions.create(model=MODEL_NAME, prompt=f"Once upon a time {i}", max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True)
    assert sum(1 for _ in stream) > 0
    requests = completions + 1

    def served() -> list[dict]:
        result = prometheus.query(f'sum by (model_name) (vllm:request_success_total{{model_name="{MODEL_NAME}"}})')
        return result if result and values(result)[0] >= requests else []

    wait_for(served, timeout=30, what="vllm:request_success_total counting the requests")
    tokens = wait_for(lambda: prometheus.query(f'vllm:generation_tokens_total{{model_name="{MODEL_NAME}"}}'),
                      timeout=10, what="vllm:generation_tokens_total")
    assert values(tokens)[0] >= requests  # at least one token each
    ttft = wait_for(
        lambda: [s for s in prometheus.query(
            f"histogram_quantile(0.5, rate(vllm:time_to_first_token_seconds_bucket[{RATE_WINDOW}]))")
            if math.isfinite(float(s["value"][1]))],
        timeout=15, what="a finite TTFT median")
    assert {s["metric"]["model_name"] for s in ttft} == {MODEL_NAME}
    assert all(0 < v < 10 for v in values(ttft))

    # What the dashboards show: every panel has data; the variables find the model and the job.
    assert_every_panel_has_data(prometheus, "serving")
    assert_every_panel_has_data(prometheus, "training")
    model_names = prometheus.query("group by (model_name) (vllm:num_requests_running)")
    assert [s["metric"]["model_name"] for s in model_names] == [MODEL_NAME]
    loss = prometheus.query('max by (namespace, trainingjob) (modelfleet_trainer_loss{trainingjob=~".*"})')
    assert [(s["metric"]["namespace"], s["metric"]["trainingjob"]) for s in loss] == [(TEST_NAMESPACE, TRAININGJOB)]
    assert 0 < values(loss)[0] < 10


# --- the operator ---------------------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_operator_metrics_reach_prometheus_and_the_dashboard(operator: OperatorProcess, jobs: Jobs,
                                                              tmp_path: Path) -> None:
    prometheus = Prometheus(tmp_path, {"operator": (host_port(operator.metrics_url), {"pod": "operator-0"})})
    prometheus.start()
    name = "metrics-demo"
    try:
        wait_for(prometheus.targets_up, timeout=30, what="operator target up")
        jobs.apply(job_manifest(name, runPolicy={"backoffLimit": 3}))
        first = jobs.wait_running_pods(name, 2, timeout=60)
        # A retryable failure: the operator restarts the whole gang, which the restarts counter records.
        jobs.end_pod(first[0]["metadata"]["name"], 1)
        jobs.wait_running_pods(name, 2, attempt=1, timeout=60)
        wait_for(lambda: prometheus.query("sum(modelfleet_operator_restarts_total)"), timeout=30,
                 what="the gang restart in modelfleet_operator_restarts_total")
        wait_for(lambda: [s for s in prometheus.query('modelfleet_operator_pods_created_total{kind="TrainingJob"}')
                          if float(s["value"][1]) >= 4],
                 timeout=30, what="4 pods created (2, then 2 after the restart)")
        running = wait_for(lambda: prometheus.query('modelfleet_operator_resources{kind="TrainingJob", phase="Running"} > 0'),
                           timeout=30, what="the job counted as Running")
        assert values(running) == [1.0]
        assert_every_panel_has_data(prometheus, "operator")
    finally:
        prometheus.stop()
        # The operator is shared by the module: leave no job reconciling behind.
        jobs.kubectl("delete", "trainingjob", name, "--wait=false", check=False)


def test_a_malformed_query_fails_rather_than_reading_as_no_data(prometheus_for_workloads: Prometheus) -> None:
    with pytest.raises(urllib.error.HTTPError, match="400"):
        prometheus_for_workloads.query("sum(rate(vllm:request_success_total[30s])")
