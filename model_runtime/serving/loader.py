"""Loads a model directory (ours or any Llama-family Hugging Face one) with its tokenizer, chat template and EOS ids."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model_runtime.llama import LlamaConfig, LlamaForCausalLM, load_pretrained, resolve_dtype
from model_runtime.tokenizer import DEFAULT_CHAT_TEMPLATE

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: Tokenizer
    chat_template: str
    eos_token_ids: list[int]
    special_tokens: dict[str, str]  # bos_token / eos_token strings, which chat templates refer to


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _token_string(value: Any) -> str:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value is not None else ""


def pick_chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str:
    """``chat_template.jinja`` (where current transformers saves it), else tokenizer_config.json's, else ours."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file() and jinja_file.read_text().strip():
        return jinja_file.read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template.strip():
        return template
    log.warning("%s has no chat template (chat_template.jinja or tokenizer_config.json's chat_template): chat "
                "uses the plain <|role|> template", directory)
    return DEFAULT_CHAT_TEMPLATE


def load_model_dir(path: str | Path, dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: config.json is missing")
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.json")
    config = LlamaConfig.from_file(directory / "config.json")
    target = resolve_dtype(dtype, default=resolve_dtype(config.torch_dtype))
    if target == torch.float16 and not str(device).startswith("cuda"):
        target = torch.float32  # half precision matmuls are slow or missing on many CPUs
    model = load_pretrained(directory, dtype=target, device=device)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok_config = _read_json(directory / "tokenizer_config.json")
    generation = _read_json(directory / "generation_config.json")
    eos = _ids(generation.get("eos_token_id")) or _ids(config.eos_token_id)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        chat_template=pick_chat_template(directory, tok_config),
        eos_token_ids=eos,
        special_tokens={"bos_token": _token_string(tok_config.get("bos_token")),
                        "eos_token": _token_string(tok_config.get("eos_token"))},
    )
