"""Tool calling through the openai client, with Qwen2.5's chat template in the model directory."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from model_runtime.artifact import save_model_dir
from model_runtime.serving.protocol import ChatCompletionRequest
from model_runtime.serving.tools import ToolDeltas, ToolMode, parse_hermes

from chat_data import HISTORY, QWEN2, SCHEMAS, TOOLS
from conftest import MODEL_NAME, TOKENIZER, client, running_server, tiny_model

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    """Qwen2.5's template in chat_template.jinja; its tool prompt needs more than 512 byte tokens."""
    target = tmp_path_factory.mktemp("qwen-template") / MODEL_NAME
    save_model_dir(tiny_model(max_position_embeddings=2048), TOKENIZER, target)
    (target / "chat_template.jinja").write_text(QWEN2)
    with running_server(target, max_model_len=2048, num_kv_blocks=1024) as srv:
        yield srv


def _valid_call(call) -> None:
    assert call.id.startswith("call_") and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_returns_valid_arguments(tool_server) -> None:
    done = client(tool_server).chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, n=3, seed=7, temperature=1.0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    for choice in done.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather"
        _valid_call(call)


def test_required_tool_choice_returns_a_valid_call(tool_server) -> None:
    done = client(tool_server).chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required", n=4, seed=3, temperature=1.0,
        max_tokens=200)
    for choice in done.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        _valid_call(call)


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "get_time"}}, "required"])
def test_streamed_tool_calls_have_openai_deltas(tool_server, tool_choice) -> None:
    chunks = list(client(tool_server).chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=tool_choice, seed=5, temperature=1.0,
        max_tokens=200, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        assert len(chunk.choices) == 1
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id:  # the first delta of a call carries its id, type and name
                assert delta.type == "function" and delta.function.name
                calls[delta.index] = {"name": delta.function.name, "arguments": ""}
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    if isinstance(tool_choice, dict):
        assert calls[0]["name"] == "get_time"
        assert sum(1 for c in chunks if c.choices[0].delta.tool_calls) > 2  # arguments stream as they come


def test_history_with_tool_calls_is_accepted_and_rendered(tool_server) -> None:
    done = client(tool_server).chat.completions.create(model=MODEL_NAME, messages=HISTORY, tools=TOOLS,
                                                       max_tokens=5, tool_choice="none")
    assert done.choices[0].message.tool_calls is None and isinstance(done.choices[0].message.content, str)
    tokens = httpx.post(f"{tool_server.url}/tokenize", json={"messages": HISTORY, "tools": TOOLS}).json()["tokens"]
    prompt = TOKENIZER.decode(tokens)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' \
        in prompt
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt
    assert json.dumps(TOOLS[1]) in prompt  # the template received the tools, in their order
    assert done.usage.prompt_tokens == len(tokens)


HERMES_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|Oslo)", "unit": "celsius"\}\}</tool_call>'


def test_auto_parses_hermes_tool_calls(tool_server) -> None:
    """auto: the model writes a Hermes call (forced here with a regex, since the model is random)."""
    api = client(tool_server)
    done = api.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=120, seed=1,
                                       extra_body={"guided_regex": HERMES_CALL})
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["unit"] == "celsius"
    chunks = list(api.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=120, seed=1,
                                              stream=True, extra_body={"guided_regex": HERMES_CALL}))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == ["get_weather"] and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert json.loads(deltas[0].function.arguments) == json.loads(call.function.arguments)
    assert not any(c.choices[0].delta.content for c in chunks)
    plain = api.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=8, temperature=0)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content


def test_bad_tool_choice_is_a_400(tool_server) -> None:
    api = client(tool_server)
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS,
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    assert exc.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=MODEL_NAME, messages=ASK, tool_choice="required")
    assert exc.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                    response_format={"type": "json_object"})
    assert exc.value.body["param"] == "response_format"


def test_hermes_parser() -> None:
    content, calls = parse_hermes('Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
                                  '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    assert content == "Let me check.\n" and [(c.function.name, c.function.arguments) for c in calls] == \
        [("a", '{"x": 1}'), ("b", "{}")]
    assert parse_hermes('<tool_call>{"name": "a", "arguments": {"x": [1, 2]}}')[1][0].function.arguments == \
        '{"x": [1, 2]}'  # an unclosed last call, as a model that hit a stop token writes it
    text = "<tool_call>{not json}</tool_call>"
    assert parse_hermes(text) == (text, [])


def test_auto_stream_holds_back_a_possible_tag() -> None:
    mode = ToolMode.from_request(ChatCompletionRequest(messages=ASK, tools=TOOLS))
    deltas = ToolDeltas(mode)
    assert deltas.feed("Sure <tool") == [{"content": "Sure "}]
    assert deltas.feed('_call>{"name": "get_time", "arguments": {"timezone": "UTC"}}') == []
    assert deltas.feed("</tool_call>") == []
    [final] = deltas.finish()
    call = final["tool_calls"][0]
    assert call["function"] == {"name": "get_time", "arguments": '{"timezone": "UTC"}'} and deltas.has_calls
    plain = ToolDeltas(mode)
    assert plain.feed("a <to") == [{"content": "a "}] and plain.feed("y>") == [{"content": "<toy>"}]
    assert plain.feed(" <b") == [{"content": " <b"}]  # not the start of a tag: sent at once
