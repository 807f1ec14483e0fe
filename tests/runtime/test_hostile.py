"""Hostile input: huge prompts, oversized bodies, floods of sequences, and what responses may reveal."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from conftest import MODEL_NAME, running_server, wait_until

ERROR_KEYS = {"message", "type", "param", "code"}


def test_a_10_mb_prompt_never_stalls_health(server) -> None:
    """While 10 MB prompts (completions and chat) are in flight, /health answers within a second each time.

    The big bodies are encoded beforehand and sent from their own threads, so the polling loop measures the server."""
    big = "x" * (10 * 1024 * 1024)
    bodies = {"/v1/completions": {"prompt": big, "max_tokens": 4},
              "/v1/chat/completions": {"messages": [{"role": "user", "content": big}]}}
    encoded = {path: json.dumps(body).encode() for path, body in bodies.items()}
    responses: dict[str, httpx.Response] = {}

    def send(path: str) -> None:
        responses[path] = httpx.post(f"{server.url}{path}", content=encoded[path], timeout=120,
                                     headers={"content-type": "application/json"})

    senders = [threading.Thread(target=send, args=(path,)) for path in encoded]
    for sender in senders:
        sender.start()
    latencies = []
    with httpx.Client(base_url=server.url, timeout=5) as http:
        while any(s.is_alive() for s in senders) or len(latencies) < 5:
            started = time.monotonic()
            assert http.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    for sender in senders:
        sender.join()
    assert max(latencies) < 1.0, latencies
    for path, response in responses.items():
        assert response.status_code == 400, response.text[:200]
        error = response.json()["error"]
        assert set(error) == ERROR_KEYS and error["code"] == "context_length_exceeded"
        assert error["param"] == ("prompt" if path == "/v1/completions" else "messages")


def test_body_over_the_limit_gets_413(model_dir) -> None:
    with running_server(model_dir, max_request_bytes=1 << 20) as srv:
        body = json.dumps({"prompt": "y" * (2 << 20)}).encode()
        declared = httpx.post(f"{srv.url}/v1/completions", content=body, headers={"content-type": "application/json"})

        def chunks():  # no Content-Length: the server has to count
            for i in range(0, len(body), 64 << 10):
                yield body[i:i + (64 << 10)]

        chunked = httpx.post(f"{srv.url}/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        for response in (declared, chunked):
            assert response.status_code == 413, response.text[:200]
            error = response.json()["error"]
            assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error"
            assert str(1 << 20) in error["message"]
        small = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "z", "max_tokens": 2})
        assert small.status_code == 200
        with pytest.raises(openai.APIStatusError) as exc:
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0).completions.create(
                model=MODEL_NAME, prompt="y" * (2 << 20))
        assert exc.value.status_code == 413


def test_admission_counts_sequences_not_requests(model_dir) -> None:
    """max_num_seqs 2 + 2 waiting = 4 sequences: one request with n=3 leaves room for n=1, not for n=2."""
    with running_server(model_dir, max_num_seqs=2, max_waiting_requests=2) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        body = {"prompt": "x", "max_tokens": 400, "stream": True, "ignore_eos": True, "n": 3}
        with http.stream("POST", "/v1/completions", json=body) as first:
            assert first.status_code == 200
            second = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2})
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            assert second.json()["error"]["type"] == "rate_limit_error"
            batched = http.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 2})
            assert batched.status_code == 429  # two prompts are two sequences
            third = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 1})
            assert third.status_code == 200
        wait_until(lambda: srv.state.seqs_in_flight == 0, message="the closed stream's sequences to be released")
        assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 4}).status_code == 200
        too_many = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 5})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"


def test_no_filesystem_paths_in_responses(server, model_dir) -> None:
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    listed = httpx.get(f"{server.url}/v1/models")
    assert str(model_dir) not in listed.text and str(model_dir.parent) not in listed.text
    assert listed.json()["data"][0]["root"] == MODEL_NAME
    retrieved = api.models.retrieve(MODEL_NAME)
    assert retrieved.id == MODEL_NAME and retrieved.model_extra["max_model_len"] == 512
    with pytest.raises(openai.NotFoundError) as exc:
        api.models.retrieve("gpt-4")
    assert exc.value.body["code"] == "model_not_found"
    assert str(model_dir) not in httpx.get(f"{server.url}/v1/models/gpt-4").text
