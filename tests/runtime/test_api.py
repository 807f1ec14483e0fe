"""The HTTP API through real clients (the openai package, httpx) against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL_NAME, client, greedy_text, running_server, wait_until


def test_openai_client_completions_stream_and_not(server, reference_model) -> None:
    api = client(server)
    expected = greedy_text(reference_model, "Once upon", 20)
    done = api.completions.create(model=MODEL_NAME, prompt="Once upon", max_tokens=20, temperature=0)
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (9, 20, 29)
    chunks = list(api.completions.create(model=MODEL_NAME, prompt="Once upon", max_tokens=20, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20


def test_openai_client_chat_stream_and_not(server, reference_model) -> None:
    api = client(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"  # the default chat template
    expected = greedy_text(reference_model, prompt, 12)
    done = api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=3)
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert done.usage.prompt_tokens == len(prompt.encode()) and done.usage.completion_tokens == 12
    assert len(choice.logprobs.content) == 12 and all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    assert all(t.logprob >= t.top_logprobs[0].logprob - 1e-6 or t.logprob <= 0 for t in choice.logprobs.content)
    stream = api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0,
                                         stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_seed_stop_and_logprobs(server) -> None:
    api = client(server)
    sampled = dict(model=MODEL_NAME, prompt="abc", max_tokens=10, n=3, seed=11, temperature=1.0,
                   extra_body={"ignore_eos": True})
    a = api.completions.create(**sampled)
    b = api.completions.create(**sampled)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and a.usage.completion_tokens == 30
    full = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=16, temperature=0).choices[0].text
    stop = next(full[i:i + 2] for i in range(3, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    for stream in (False, True):
        result = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=16, temperature=0, stop=[stop],
                                        stream=stream)
        chunks = list(result) if stream else [result]
        assert "".join(c.choices[0].text for c in chunks) == full[:full.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"
    with_lp = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=4, temperature=0, logprobs=2)
    lp = with_lp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4


def test_models_predict_and_probes(server) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    result = httpx.post(f"{server.url}/predict", json={"text": "Hello", "max_tokens": 5})
    assert result.status_code == 200 and isinstance(result.json()["result"], str)
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert "/v1/chat/completions" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


@pytest.mark.parametrize("body,param", [
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "n": 1000}, "n"),
    ({"prompt": "hi", "max_tokens": 600}, "max_tokens"),  # prompt + max_tokens beyond the 512-token context
    ({"prompt": [1, 2, 999]}, "prompt"),  # a token id outside the vocabulary
    ({"prompt": ""}, "prompt"),
    ('{"prompt": "\\ud800"}', "prompt"),  # valid JSON, but a lone surrogate is not encodable text
    ({"prompt": "hi", "best_of": 2}, "best_of"),  # unsupported options are named, not ignored
    ({}, "prompt"),
])
def test_invalid_completions_get_openai_400(server, body, param) -> None:
    if isinstance(body, str):
        response = httpx.post(f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_invalid_chat_and_bad_json_and_unknown_model(server) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    response = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client(server).completions.create(model=MODEL_NAME, prompt="hi", max_tokens=10_000)
    assert exc.value.body["code"] == "context_length_exceeded"


async def _stream_text(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[str, str | None, bool]:
    text, finish, done = [], None, False
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                choice = json.loads(line[6:])["choices"][0]
                text.append(choice["text"])
                finish = choice["finish_reason"] or finish
    return "".join(text), finish, done


def test_64_concurrent_streams_get_complete_correct_answers(server, reference_model) -> None:
    prompts = [f"request {i}: " + "ab" * (i % 7) for i in range(64)]
    expected = [greedy_text(reference_model, p, 24) for p in prompts]

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(_stream_text(http, p, 24) for p in prompts))

    results = asyncio.run(main())
    for i, (text, finish, done) in enumerate(results):
        assert (text, finish, done) == (expected[i], "length", True), f"stream {i}"


def test_disconnect_aborts_and_frees_blocks(server) -> None:
    idle = server.metric("vllm:kv_cache_usage_perc")
    assert idle == 0.0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        body = {"prompt": "long " * 20, "max_tokens": 400, "stream": True, "ignore_eos": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert server.metric("vllm:kv_cache_usage_perc") > 0
        # leaving the block closes the connection mid-stream
    wait_until(lambda: server.metric("vllm:kv_cache_usage_perc") == idle and not server.engine.requests,
               message="the aborted stream's blocks to be freed")
    assert server.metric("vllm:request_success_total", 'finished_reason="abort"') >= 1
    # A non-streaming client that gives up is aborted too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 480, "ignore_eos": True},
                   timeout=0.3)
    wait_until(lambda: server.metric("vllm:kv_cache_usage_perc") == idle and not server.engine.requests,
               message="the abandoned request's blocks to be freed")


def test_metrics_use_vllm_names(server) -> None:
    httpx.post(f"{server.url}/v1/completions", json={"prompt": "names", "max_tokens": 3}).raise_for_status()
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_cached_total",
                 "vllm:time_per_output_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:request_queue_time_seconds_bucket", "vllm:request_prefill_time_seconds_bucket",
                 "vllm:request_decode_time_seconds_bucket", "vllm:request_inference_time_seconds_bucket",
                 "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
                 "vllm:request_time_per_output_token_seconds_bucket", "vllm:iteration_tokens_total_bucket",
                 "vllm:request_max_num_generation_tokens_bucket", "vllm:request_params_n_bucket",
                 "vllm:request_params_max_tokens_bucket"):
        assert f'{name}{{' in text, name
    assert f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="2560.0",model_name="{MODEL_NAME}"}}' in text
    assert f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="0.075",model_name="{MODEL_NAME}"}}' in text
    labelled = {("vllm:request_success_total", "finished_reason"): {"stop", "length", "abort", "error", "repetition",
                                                                     "timeout"},
                ("vllm:prompt_tokens_by_source_total", "source"): {"local_compute", "local_cache_hit",
                                                                   "external_kv_transfer"},
                ("vllm:num_requests_waiting_by_reason", "reason"): {"capacity", "deferred"}}
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    for (name, label), expected in labelled.items():
        found = {s.labels[label] for s in samples if s.name == name and s.labels["engine"] == "0"
                 and s.labels["model_name"] == MODEL_NAME}
        assert found == expected, name
    assert server.metric("vllm:generation_tokens_total") > 0
    # The http_* metrics of prometheus-fastapi-instrumentator, as vLLM serves them (probes left out).
    assert server.metric("http_requests_total", 'handler="/v1/completions",method="POST",status="2xx"') >= 1
    assert server.metric("http_request_duration_seconds_count", 'handler="/v1/completions"') >= 1
    assert 'handler="/metrics"' not in text and 'handler="/health"' not in text


def test_overload_gets_429_and_never_5xx(model_dir) -> None:
    with running_server(model_dir, max_num_seqs=2, max_waiting_requests=2) as srv:
        async def one(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post("/v1/completions", json={"prompt": "load", "max_tokens": 64, "ignore_eos": True})

        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                return await asyncio.gather(*(one(http) for _ in range(24)))

        statuses = [r.status_code for r in asyncio.run(main())]
        rejected = [r for r in statuses if r == 429]
        assert rejected and statuses.count(200) >= 4 and set(statuses) <= {200, 429}
        response = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "after", "max_tokens": 2})
        assert response.status_code == 200  # the queue drained


def test_429_carries_retry_after(model_dir) -> None:
    with running_server(model_dir, max_num_seqs=1, max_waiting_requests=1) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            body = {"prompt": "x", "max_tokens": 400, "stream": True, "ignore_eos": True}
            with http.stream("POST", "/v1/completions", json=body) as first, \
                    http.stream("POST", "/v1/completions", json=body) as second:
                assert first.status_code == second.status_code == 200
                third = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x"})
                assert third.status_code == 429 and third.headers["retry-after"] == "1"
                assert third.json()["error"]["type"] == "rate_limit_error"


def test_request_timeout(model_dir) -> None:
    with running_server(model_dir, request_timeout=0.2) as srv:
        body = {"prompt": "slow", "max_tokens": 500, "ignore_eos": True}
        response = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
        streamed = httpx.post(f"{srv.url}/v1/completions", json={**body, "stream": True}, timeout=30).text
        assert '"request_timeout"' in streamed and streamed.endswith("data: [DONE]\n\n")
        wait_until(lambda: srv.metric("vllm:kv_cache_usage_perc") == 0.0, message="blocks freed after timeouts")


def test_api_keys(model_dir) -> None:
    with running_server(model_dir, api_keys=["key-one", "key-two"]) as srv:
        response = httpx.get(f"{srv.url}/v1/models")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(srv, api_key="wrong").completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
        assert client(srv, api_key="key-two").completions.create(model=MODEL_NAME, prompt="x", max_tokens=2).choices
        assert httpx.post(f"{srv.url}/predict", json={"text": "x"}).status_code == 401
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{srv.url}{path}").status_code == 200, path


def test_engine_loop_death_turns_health_503(model_dir) -> None:
    with running_server(model_dir) as srv:
        def broken_step():
            raise RuntimeError("simulated device failure")

        srv.engine.step = broken_step
        response = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert response.status_code == 503 and "engine loop died" in response.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health").status_code == 503
        assert httpx.get(f"{srv.url}/ready").status_code == 503
        response = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert response.status_code == 503
