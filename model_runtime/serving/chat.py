"""Chat messages -> prompt text, with the model's Jinja chat template, rendered as transformers renders it.

The environment is transformers' (``apply_chat_template``): a sandbox with ``trim_blocks``/``lstrip_blocks``,
the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``), the ``{% generation %}`` block tag,
``raise_exception``, ``strftime_now``, and a ``tojson`` that keeps key order and non-ASCII text. Templates
get ``messages``, ``tools``, ``add_generation_prompt``, the special tokens, and any ``chat_template_kwargs``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; it renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller) -> str:
        return caller()


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, Any]], special_tokens: dict[str, str],
                add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None,
                extra: dict[str, Any] | None = None) -> str:
    """Render; a template that rejects the conversation (raise_exception, bad fields) raises ChatTemplateError."""
    variables = {**special_tokens, **(extra or {}), "messages": messages, "tools": tools,
                 "add_generation_prompt": add_generation_prompt}
    try:
        return _compile(template).render(variables)
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ChatTemplateError(f"the chat template could not render these messages: {exc}") from exc
