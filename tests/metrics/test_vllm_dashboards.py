"""vLLM's own Grafana dashboards against the real runtime, through a real Prometheus: after load (the openai client,
streaming, n=2, a shared prefix, a 404), every query of every panel has data, and every series and label they select
exists with the served model's name and vLLM's ``engine`` label.

The queries are vLLM's, copied verbatim into vllm_dashboards/ (each file names the repository path and commit)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import openai
import pytest
import yaml

from tests.helpers import wait_for
from tests.metrics.conftest import MODEL_NAME, Exporter
from tests.metrics.exporters import Prometheus
from tests.metrics.promql import VLLM_DASHBOARDS, Query, all_queries, dashboards, metric_names, substitute

BOARDS = dashboards(VLLM_DASHBOARDS)
RATE_WINDOW = "30s"
# Grafana's values: the dashboards' own defaults for the SLO thresholds, and the model this runtime serves (the
# classic dashboard matches model_name exactly).
VALUES = {"model_name": MODEL_NAME, "ttft_slo": "1.0", "tpot_slo": "0.1"}
# Hit rates of caches this runtime does not have (a KV connector's, a multimodal one): their counters exist and stay
# at zero, so the ratio is 0/0, which these queries leave empty, as on a vLLM without them.
ZERO_QUERIES = {"vllm:external_prefix_cache_queries_total", "vllm:mm_cache_queries_total"}
LABEL_VALUES = {("vllm:request_success_total", "finished_reason"): {"stop", "length", "abort", "error", "repetition"},
                ("vllm:prompt_tokens_by_source_total", "source"): {"local_compute", "local_cache_hit",
                                                                   "external_kv_transfer"},
                ("vllm:num_requests_waiting_by_reason", "reason"): {"capacity", "deferred"},
                ("http_requests_total", "status"): {"2xx", "4xx"}}


def queries() -> list[Query]:
    return [q for name, board in BOARDS.items() for q in all_queries(name, board)]


def zero_over_zero(query: Query) -> bool:
    return bool(metric_names(query.expr) & ZERO_QUERIES)


def test_the_two_vllm_dashboards_are_there_with_their_source() -> None:
    assert set(BOARDS) == {"vllm_overview", "grafana"}
    assert len(BOARDS["vllm_overview"]["panels"]) == 42
    for board in BOARDS.values():
        assert board["source"]["repository"] == "vllm-project/vllm" and len(board["source"]["commit"]) == 40


def test_every_vllm_query_parses(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "vllm", "rules": [
        {"record": f"vllm_dashboard:expr{i}", "expr": substitute(q.expr, values=VALUES)}
        for i, q in enumerate(queries())]}]}
    path = tmp_path / "vllm.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(runtime: Exporter, tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path, {"vllm": (urlparse(runtime.url).netloc, {})})
    prom.start()
    try:
        wait_for(prom.targets_up, timeout=30, what="the runtime target up")
        yield prom
    finally:
        prom.stop()


def load(runtime: Exporter) -> None:
    client = openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", timeout=60)
    shared = "A long shared system prompt that fills a few KV blocks of the prefix cache. " * 2
    for i in range(4):
        client.completions.create(model=MODEL_NAME, prompt=shared + str(i), max_tokens=8, temperature=0)
    client.completions.create(model=MODEL_NAME, prompt="two choices", max_tokens=6, n=2)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True)
    assert sum(1 for _ in stream) > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def empty_queries(prometheus: Prometheus) -> list[str]:
    return [f"{q.dashboard} / {q.title}: {q.expr}" for q in queries()
            if not zero_over_zero(q) and not prometheus.query(substitute(q.expr, RATE_WINDOW, VALUES))]


@pytest.fixture
def live_traffic(runtime: Exporter) -> Iterator[None]:
    """The load, once, then again and again while the test reads the dashboards: rates over a 30 s window need
    traffic inside the window, however slow a loaded machine makes the checks."""
    load(runtime)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                load(runtime)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(120)
    assert not errors, errors


def test_every_vllm_panel_has_data_from_the_runtime(prometheus: Prometheus, runtime: Exporter,
                                                    live_traffic: None) -> None:
    try:
        wait_for(lambda: not empty_queries(prometheus), timeout=90, what="data in every vLLM dashboard query")
    except AssertionError:
        raise AssertionError(f"vLLM dashboard queries without data: {empty_queries(prometheus)}") from None

    names = {name for q in queries() for name in metric_names(q.expr)} - {"up"}
    for name in sorted(names):
        series = prometheus.query(f"{name}")
        assert series, f"{name} has no series"
        if name.startswith("vllm:"):
            assert {(s["metric"]["model_name"], s["metric"]["engine"]) for s in series} == {(MODEL_NAME, "0")}, name
    for (name, label), expected in LABEL_VALUES.items():
        wait_for(lambda: expected <= {s["metric"][label] for s in prometheus.query(name)}, timeout=10,
                 what=f"{name} with every {label} of {sorted(expected)}")
    for name in ZERO_QUERIES:
        assert [float(s["value"][1]) for s in prometheus.query(name)] == [0.0], name
    # Requests the dashboards count, from the HTTP side and the engine side.
    handlers = {s["metric"]["handler"] for s in prometheus.query("http_requests_total")}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models/{model_id:path}"} <= handlers
    assert not {"/metrics", "/health", "/ready"} & handlers
    cached = prometheus.query('vllm:prompt_tokens_by_source_total{source="local_cache_hit"}')
    assert float(cached[0]["value"][1]) > 0  # the shared prefix came from the cache
