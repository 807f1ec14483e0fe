"""The rest of the OpenAI API people use, and vLLM's extras, through the openai client and httpx."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from conftest import MODEL_NAME, TOKENIZER, client, greedy_text


def test_tokenize_and_detokenize(server) -> None:
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "héllo", "return_token_strs": True}).json()
    assert tokens["tokens"] == TOKENIZER.encode("héllo").ids and tokens["count"] == 6
    assert tokens["max_model_len"] == 512 and len(tokens["token_strs"]) == 6
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["tokens"] == TOKENIZER.encode("<|user|>\nHi\n<|assistant|>\n").ids
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "héllo"}
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [1, 5000]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    both = httpx.post(f"{server.url}/tokenize", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert both.status_code == 400


def test_batched_prompts(server, reference_model) -> None:
    api = client(server)
    prompts = ["Once upon", "abc"]
    done = api.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=8, temperature=0, n=2)
    expected = [greedy_text(reference_model, p, 8) for p in prompts]
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert [c.text for c in done.choices] == [expected[0], expected[0], expected[1], expected[1]]
    assert done.usage.prompt_tokens == 9 + 3 and done.usage.completion_tokens == 32
    ids = [TOKENIZER.encode(p).ids for p in prompts]
    by_ids = api.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=8, temperature=0)
    assert [c.text for c in by_ids.choices] == expected
    texts: dict[int, str] = {}
    for chunk in api.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=8, temperature=0, stream=True):
        assert len(chunk.choices) == 1
        texts[chunk.choices[0].index] = texts.get(chunk.choices[0].index, "") + chunk.choices[0].text
    assert texts == {0: expected[0], 1: expected[1]}


def test_n_2_streams_carry_one_choice_per_chunk(server) -> None:
    api = client(server)
    common = dict(model=MODEL_NAME, max_tokens=10, n=2, seed=3, temperature=1.0)
    messages = [{"role": "user", "content": "Hi"}]
    whole = api.chat.completions.create(messages=messages, **common)
    content: dict[int, str] = {}
    finishes: dict[int, str] = {}
    chunks = list(api.chat.completions.create(messages=messages, stream=True, **common))
    for chunk in chunks:
        assert len(chunk.choices) == 1, chunk
        choice = chunk.choices[0]
        content[choice.index] = content.get(choice.index, "") + (choice.delta.content or "")
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert content == {c.index: c.message.content for c in whole.choices}
    assert set(finishes) == {0, 1}
    assert {c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"} == {0, 1}
    texts: dict[int, str] = {}
    for chunk in api.completions.create(prompt="abc", stream=True, **common):
        assert len(chunk.choices) == 1
        texts[chunk.choices[0].index] = texts.get(chunk.choices[0].index, "") + chunk.choices[0].text
    assert texts == {c.index: c.text for c in api.completions.create(prompt="abc", **common).choices}


def test_min_p_logit_bias_and_echo(server, reference_model) -> None:
    api = client(server)
    greedy = greedy_text(reference_model, "xyz", 6)
    # min_p=1 keeps only the most likely token: sampling at temperature 1 becomes greedy.
    only_best = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=6, temperature=1.0, seed=5,
                                       extra_body={"min_p": 1.0})
    assert only_best.choices[0].text == greedy
    biased = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=6, temperature=0,
                                    logit_bias={str(ord("A")): 100})
    assert biased.choices[0].text == "AAAAAA"
    first = TOKENIZER.encode(greedy).ids[0]
    banned = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=1, temperature=0,
                                    logit_bias={str(first): -100})
    assert TOKENIZER.encode(banned.choices[0].text).ids != [first]
    for bias, param in (({"abc": 1}, "logit_bias"), ({"4000": 1}, "logit_bias"), ({"5": 101}, "logit_bias")):
        response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "logit_bias": bias})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    echoed = api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "xyz" + greedy
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model=MODEL_NAME, prompt="xyz", max_tokens=6, temperature=0, echo=True, stream=True))
    assert streamed == "xyz" + greedy
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL_NAME, prompt="xyz", max_tokens=2, echo=True, logprobs=1)
    assert exc.value.body["param"] == "echo"


def test_unknown_openai_fields_are_ignored_and_logged(server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="model_runtime.serving.api")
    done = client(server).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, metadata={"team": "a"},
        store=False, service_tier="auto", parallel_tool_calls=False, user="u-1",
        extra_body={"something_new": {"x": 1}})
    assert done.choices[0].finish_reason in ("length", "stop")
    assert "something_new" in caplog.text and "service_tier" in caplog.text
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2, "metadata": {}})
    assert response.status_code == 200
