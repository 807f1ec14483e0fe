"""Chat templates render as transformers' apply_chat_template renders them (real templates, served from
chat_template.jinja, compared token for token through /tokenize)."""

from __future__ import annotations

import json

import httpx
import pytest

from model_runtime.artifact import save_model_dir
from model_runtime.tokenizer import BOS_TOKEN, EOS_TOKEN

from chat_data import HISTORY, LLAMA3, QWEN2, TOOLS
from conftest import MODEL_NAME, TOKENIZER, running_server, tiny_model

transformers = pytest.importorskip("transformers")

CONVERSATIONS = {
    "plain": (HISTORY[:2] + [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}], None),
    "tools": (HISTORY, TOOLS),
    "break": ([{"role": "user", "content": "Hi"}, {"role": "user", "content": ""},
               {"role": "user", "content": "never rendered by LLAMA3"}], None),
}


def hf_messages(messages: list[dict]) -> list[dict]:
    """What a transformers user passes: tool call arguments as dicts."""
    result = []
    for m in messages:
        m = {**m, "content": m["content"] or ""}
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        result.append(m)
    return result


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def template_server(request, tmp_path_factory):
    template = {"qwen2": QWEN2, "llama3": LLAMA3}[request.param]
    target = tmp_path_factory.mktemp(request.param) / MODEL_NAME
    save_model_dir(tiny_model(max_position_embeddings=2048), TOKENIZER, target)
    (target / "chat_template.jinja").write_text(template)  # wins over tokenizer_config.json's template
    with running_server(target, max_model_len=2048, num_kv_blocks=512) as srv:
        yield srv, template


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_transformers(template_server, name, add_generation_prompt) -> None:
    srv, template = template_server
    messages, tools = CONVERSATIONS[name]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=TOKENIZER, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN)
    expected = hf.apply_chat_template(hf_messages(messages), tools=tools, chat_template=template, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
    body = {"messages": messages, "add_generation_prompt": add_generation_prompt, **({"tools": tools} if tools else {})}
    response = httpx.post(f"{srv.url}/tokenize", json=body)
    assert response.status_code == 200, response.text
    tokens = response.json()["tokens"]
    assert TOKENIZER.decode(tokens, skip_special_tokens=False) == expected
    assert tokens == TOKENIZER.encode(expected, add_special_tokens=False).ids
