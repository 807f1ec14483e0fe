"""Structured output through the openai client: the tiny model is random, so only the grammar makes it valid."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Literal

import httpx
import jsonschema
import pytest
import torch
from pydantic import BaseModel, Field

from model_runtime.serving.sampling import SampleRow, SamplingParams, sample

from conftest import MODEL_NAME, client, greedy_text, wait_until

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "member"],
    "additionalProperties": False,
}


def test_json_schema_response_validates(server) -> None:
    done = client(server).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Describe a person."}], n=4, seed=1,
        temperature=1.0, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    for choice in done.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    greedy = client(server).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], temperature=0, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    jsonschema.validate(json.loads(greedy.choices[0].message.content), PERSON)


class Person(BaseModel):
    name: Annotated[str, Field(max_length=12)]
    color: Literal["red", "green"]
    age: Annotated[int, Field(ge=0, le=120)]


def test_openai_sdk_parse_with_a_pydantic_model(server) -> None:
    """The SDK's parse() sends a strict json_schema built from the model and parses the reply into it."""
    done = client(server).chat.completions.parse(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                                 response_format=Person, max_tokens=100, seed=1, n=2)
    assert all(isinstance(c.message.parsed, Person) for c in done.choices)


def test_streamed_json_schema_validates(server) -> None:
    chunks = client(server).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], seed=2, temperature=1.0, max_tokens=200,
        stream=True, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema.validate(json.loads(text), PERSON)


def test_vllm_guided_fields(server) -> None:
    api = client(server)
    choices = ["yes", "no", 'it "depends"']
    for body in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        done = api.completions.create(model=MODEL_NAME, prompt="Answer:", max_tokens=20, temperature=1.0, seed=4,
                                      n=3, extra_body=body)
        assert all(c.text in choices and c.finish_reason == "stop" for c in done.choices), done
    done = api.completions.create(model=MODEL_NAME, prompt="Code:", max_tokens=20, temperature=1.0, seed=4, n=3,
                                  extra_body={"guided_regex": r"[A-Z]{3}-\d{2,4}"})
    assert all(re.fullmatch(r"[A-Z]{3}-\d{2,4}", c.text) for c in done.choices), done
    for body in ({"guided_json": PERSON}, {"guided_json": json.dumps(PERSON)}, {"structured_outputs": {"json": PERSON}}):
        done = api.completions.create(model=MODEL_NAME, prompt="{", max_tokens=200, temperature=1.0, seed=6,
                                      extra_body=body)
        jsonschema.validate(json.loads(done.choices[0].text), PERSON)
    grammar = 'start: "(" num "+" num ")"\nnum: /[0-9]{1,3}/'
    done = api.completions.create(model=MODEL_NAME, prompt="sum:", max_tokens=40, temperature=1.0, seed=1,
                                  extra_body={"guided_grammar": grammar})
    assert re.fullmatch(r"\(\d{1,3}\+\d{1,3}\)", done.choices[0].text), done
    obj = api.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=30,
                                      temperature=0, response_format={"type": "json_object"})
    assert obj.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"guided_regex": "("}, "guided_regex"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
])
def test_invalid_constraints_get_400(server, body, param) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "x"}], **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_constrained_and_free_sequences_share_a_batch(server, reference_model) -> None:
    """A guided request does not change the output of an unconstrained one running in the same steps."""
    expected = greedy_text(reference_model, "free text", 40)

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            free = http.post("/v1/completions", json={"prompt": "free text", "max_tokens": 40, "temperature": 0,
                                                      "ignore_eos": True})
            guided = [http.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 200, "temperature": 1.0,
                                                         "seed": i, "guided_json": PERSON}) for i in range(4)]
            return await asyncio.gather(free, *guided)

    free, *guided = asyncio.run(main())
    assert free.json()["choices"][0]["text"] == expected
    for response in guided:
        jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), PERSON)
    wait_until(lambda: not server.engine.guided_requests, message="finished guided requests to be forgotten")


def test_sampler_masks_only_guided_rows() -> None:
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0], [5.0, 1.0, 0.0, -1.0]])
    rows = [SampleRow(SamplingParams(temperature=0), [0], 1, None) for _ in range(2)]
    only_token_3 = torch.tensor([[1 << 3]], dtype=torch.int32)
    tokens, _ = sample(logits, rows, ([0], only_token_3))
    assert tokens == [3, 0]
