"""Tool calling: ``tool_choice`` modes, the grammar that forces a call, and tool calls parsed from model output.

- ``none``: plain text. ``auto`` (the default with tools): the model decides; calls written in the Hermes format
  (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, what Qwen2.5, Hermes and many other templates
  teach, and vLLM's ``hermes`` parser reads) become ``tool_calls``.
- named (``{"type": "function", "function": {"name": ...}}``): the output is constrained to that function's
  ``parameters`` schema and is its arguments (as vLLM does).
- ``required``: the output is constrained to a JSON array of ``{"name", "parameters"}`` objects, one per call
  (vLLM's format); one call unless ``parallel_tool_calls`` is true.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from model_runtime.serving.errors import APIError
from model_runtime.serving.protocol import ChatCompletionRequest, ChatMessage, FunctionCallOut, ToolCallOut
from model_runtime.serving.structured import GrammarSpec

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)
_ANY_OBJECT = {"type": "object"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them; a tool call's JSON ``arguments`` become a dict (as vLLM does,
    since templates write them out with ``tojson``)."""
    result = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            entry["name"] = m.name
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            entry["tool_calls"] = [{"id": c.id or new_call_id(), "type": "function",
                                    "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                   for c in m.tool_calls]
        result.append(entry)
    return result


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


@dataclass
class ToolMode:
    choice: str  # none, auto, required, named
    name: str | None = None  # the function of a named choice
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # function name -> its parameters schema
    parallel: bool = False

    @classmethod
    def from_request(cls, body: ChatCompletionRequest) -> "ToolMode":
        tools = body.tools or []
        parameters = {t.function.name: t.function.parameters or _ANY_OBJECT for t in tools}
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
        if choice != "none" and choice != "auto" and not tools:
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        if isinstance(choice, str):
            return cls(choice, None, parameters, bool(body.parallel_tool_calls))
        if choice.function.name not in parameters:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                           param="tool_choice")
        return cls("named", choice.function.name, parameters)

    def grammar(self) -> GrammarSpec | None:
        """The constraint that forces a call (named, required), else None."""
        if self.choice == "named":
            return GrammarSpec("json", self.parameters[self.name], "tool_choice")
        if self.choice != "required":
            return None
        calls = {"anyOf": [{"type": "object", "properties": {"name": {"type": "string", "enum": [name]},
                                                              "parameters": schema},
                            "required": ["name", "parameters"], "additionalProperties": False}
                           for name, schema in self.parameters.items()]}
        array: dict[str, Any] = {"type": "array", "items": calls, "minItems": 1}
        if not self.parallel:
            array["maxItems"] = 1
        return GrammarSpec("json", array, "tool_choice")

    def parse(self, text: str) -> tuple[str | None, list[ToolCallOut]]:
        """(content, tool calls) of a finished output; text that holds no valid call stays content."""
        if self.choice == "named":
            return None, [_call(self.name, text)]
        if self.choice == "required":
            try:
                calls = [_call(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in json.loads(text)]
            except (ValueError, TypeError, KeyError):
                return text, []
            return None, calls
        if self.choice == "auto" and TOOL_CALL_OPEN in text:
            return parse_hermes(text)
        return text, []


def _call(name: str, arguments: str) -> ToolCallOut:
    return ToolCallOut(id=new_call_id(), function=FunctionCallOut(name=name, arguments=arguments))


def parse_hermes(text: str) -> tuple[str | None, list[ToolCallOut]]:
    """Hermes-format calls; if any block is not ``{"name": str, "arguments": object}`` JSON, all is content."""
    calls = []
    for match in _HERMES.finditer(text):
        try:
            value = json.loads((match.group(1) or match.group(2) or "").strip())
            name, arguments = value["name"], value.get("arguments", {})
            if not isinstance(name, str):
                raise TypeError(name)
        except (ValueError, TypeError, KeyError, AttributeError):
            return text, []
        calls.append(_call(name, arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                                         ensure_ascii=False)))
    content = text[:text.index(TOOL_CALL_OPEN)]
    return (content if content.strip() else None), calls


class ToolDeltas:
    """Turns one choice's streamed text into OpenAI delta objects (``content`` or ``tool_calls``).

    Named calls stream their arguments as they come; ``required`` and ``auto`` calls are sent whole once the
    choice finishes (in auto mode, text before the first ``<tool_call>`` streams as content)."""

    def __init__(self, mode: ToolMode) -> None:
        self.mode = mode
        self.buffer = ""  # text not yet sent
        self.sent_call_head = False
        self.in_calls = False  # auto: a <tool_call> was seen
        self.has_calls = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        mode = self.mode.choice
        if not text:
            return []
        if mode == "named":
            self.has_calls = True
            if not self.sent_call_head:
                self.sent_call_head = True
                head = {"index": 0, "id": new_call_id(), "type": "function",
                        "function": {"name": self.mode.name, "arguments": text}}
                return [{"tool_calls": [head]}]
            return [{"tool_calls": [{"index": 0, "function": {"arguments": text}}]}]
        if mode == "required" or self.in_calls:
            self.buffer += text
            return []
        if mode != "auto":
            return [{"content": text}]
        self.buffer += text
        if TOOL_CALL_OPEN in self.buffer:
            self.in_calls = True
            cut = self.buffer.index(TOOL_CALL_OPEN)
            content, self.buffer = self.buffer[:cut], self.buffer[cut:]
        else:  # hold back a tail that may be the start of "<tool_call>"
            keep = next((k for k in range(min(len(TOOL_CALL_OPEN) - 1, len(self.buffer)), 0, -1)
                         if TOOL_CALL_OPEN.startswith(self.buffer[-k:])), 0)
            content, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return [{"content": content}] if content else []

    def finish(self) -> list[dict[str, Any]]:
        """The rest, at the end of the choice."""
        text, self.buffer = self.buffer, ""
        if not text:
            return []
        content, calls = self.mode.parse(text) if self.mode.choice in ("required", "auto") else (text, [])
        if not calls:
            return [{"content": content}] if content else []
        self.has_calls = True
        return [{"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": c.function.model_dump()}]}
                for i, c in enumerate(calls)]
