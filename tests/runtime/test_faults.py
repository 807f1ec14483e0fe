"""The test-only fault switch: injected latency shows in time-to-first-token, injected errors are 500s counted
in http_requests_total{status="5xx"}, exactly the share asked for; off by default."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from model_runtime.serving.cli import parse_config
from model_runtime.serving.faults import Faults
from tests.runtime.conftest import MODEL_NAME, client, running_server


def ttft_sum(server) -> float:
    return server.metric("vllm:time_to_first_token_seconds_sum")


def test_latency_fault_delays_requests_and_shows_in_ttft(model_dir) -> None:
    with running_server(model_dir, fault_latency_ms=300) as server:
        api = client(server)
        started = time.monotonic()
        api.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=2)
        assert time.monotonic() - started >= 0.3
        assert ttft_sum(server) >= 0.3  # the warm-up bypasses the fault; this one request carries it
        assert server.metric("http_requests_total", 'handler="/v1/completions",method="POST",status="2xx"') == 1


def test_error_fault_fails_the_share_asked_for_with_500s(model_dir) -> None:
    with running_server(model_dir, fault_error_rate=0.25) as server:
        api = client(server)
        failed = 0
        for i in range(8):
            try:
                api.completions.create(model=MODEL_NAME, prompt=f"hi {i}", max_tokens=2)
            except openai.InternalServerError as error:
                assert "injected fault" in str(error)
                failed += 1
        assert failed == 2
        labels = 'handler="/v1/completions",method="POST",status="{}"'
        assert server.metric("http_requests_total", labels.format("5xx")) == 2
        assert server.metric("http_requests_total", labels.format("2xx")) == 6
        with pytest.raises(KeyError):  # no chat request failed: the instrumentator has no series for it
            server.metric("http_requests_total", 'handler="/v1/chat/completions",method="POST",status="5xx"')
        assert httpx.get(f"{server.url}/ready").status_code == 200  # a faulty version is still "ready"


def test_faults_are_off_by_default_and_checked() -> None:
    cfg = parse_config(["--model", "/m"], {})
    assert (cfg.fault_latency_ms, cfg.fault_error_rate) == (0, 0)
    assert parse_config(["--model", "/m"], {"MODELFLEET_FAULT_ERROR_RATE": "0.5"}).fault_error_rate == 0.5
    with pytest.raises(SystemExit):
        parse_config(["--model", "/m", "--fault-error-rate", "1.5"], {})
    third, off = Faults(error_rate=0.5), Faults()
    assert [third.next_fails() for _ in range(4)] == [False, True, False, True]
    assert not any(off.next_fails() for _ in range(10))
