"""Structured output: JSON schemas, regexes, choices and Lark grammars, enforced as per-token masks.

The grammar library is llguidance (pinned in pyproject.toml; vLLM's ``guidance`` backend): one self-contained
wheel with no dependencies, where xgrammar needs transformers and triton at run time. A request's constraint
is compiled on the tokenizer threads; each of its sequences gets its own matcher (``Guide``). Each step the
engine computes masks for the guided rows only (``token_bitmasks``) and the sampler applies them to those rows,
so unconstrained sequences in the same batch pay nothing; the engine then advances each guide by the token it
sampled and stops the sequence when the grammar is complete.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import llguidance
import torch
from tokenizers import Tokenizer

from model_runtime.serving.errors import APIError
from model_runtime.serving.protocol import ChatCompletionRequest, CompletionRequest

# Compact, deterministic JSON (json.dumps' separators): no free whitespace, so a weak model cannot loop on it.
JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ",
                                               "key_separator": ": "}


@dataclass(frozen=True)
class GrammarSpec:
    kind: str  # json, regex, choice, lark
    value: Any
    param: str  # the request field it came from, for error messages


def spec_from_request(body: CompletionRequest | ChatCompletionRequest) -> GrammarSpec | None:
    """The constraint named by ``response_format`` or vLLM's guided_*/structured_outputs fields (at most one)."""
    found: list[GrammarSpec] = []
    rf = body.response_format
    if rf is not None and rf.type == "json_object":
        found.append(GrammarSpec("json", {"type": "object"}, "response_format"))
    elif rf is not None and rf.type == "json_schema":
        found.append(GrammarSpec("json", rf.json_schema.schema_, "response_format"))
    for kind, param, value in (("json", "guided_json", body.guided_json), ("regex", "guided_regex", body.guided_regex),
                               ("choice", "guided_choice", body.guided_choice),
                               ("lark", "guided_grammar", body.guided_grammar)):
        if value is not None:
            found.append(GrammarSpec(kind, value, param))
    so = body.structured_outputs
    if so is not None:
        for kind, value in (("json", so.json_), ("regex", so.regex), ("choice", so.choice), ("lark", so.grammar),
                            ("json", {"type": "object"} if so.json_object else None)):
            if value is not None:
                found.append(GrammarSpec(kind, value, "structured_outputs"))
    if len(found) > 1:
        raise APIError(400, f"give one structured-output constraint, not {len(found)} "
                            f"({', '.join(s.param for s in found)})", param=found[1].param)
    return found[0] if found else None


def grammar_text(spec: GrammarSpec) -> str:
    """llguidance's grammar for the spec (not yet checked)."""
    if spec.kind == "json":
        schema = json.loads(spec.value) if isinstance(spec.value, str) else spec.value
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.value)
    if spec.kind == "choice":
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.value))
    return llguidance.LLMatcher.grammar_from_lark(spec.value)


class Guide:
    """One sequence's matcher: the tokens it allows next, and whether the grammar is complete."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """Nothing more can follow (also after an error, which a masked draw cannot cause)."""
        return self.matcher.is_stopped()


_executor: llguidance.LLExecutor | None = None


def token_bitmasks(guides: list[Guide], vocab_size: int) -> torch.Tensor:
    """The guides' next-token masks, [len(guides), ceil(vocab / 32)] int32, computed in parallel by llguidance."""
    global _executor
    bitmask = torch.empty((len(guides), (vocab_size + 31) // 32), dtype=torch.int32)
    row_bytes = bitmask.shape[1] * bitmask.element_size()
    if len(guides) == 1:
        guides[0].matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), row_bytes)
    else:
        _executor = _executor or llguidance.LLExecutor()
        _executor.unsafe_compute_mask_ptr([(g.matcher, i) for i, g in enumerate(guides)], bitmask.data_ptr(),
                                          row_bytes, len(guides))
    return bitmask


class GrammarCompiler:
    """Compiles request constraints against the model's tokenizer (built once, on first use)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._tokenizer, self._vocab_size, self._eos = tokenizer, vocab_size, eos_token_ids
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _tokenizer_for_grammars(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = llguidance.LLTokenizer(self._tokenizer.to_str(), n_vocab=self._vocab_size,
                                                           eos_token=self._eos or None)
            return self._lltokenizer

    def guides(self, spec: GrammarSpec, n: int) -> list[Guide]:
        """``n`` independent guides; an invalid schema, regex or grammar is a 400 naming the field."""
        try:
            grammar = grammar_text(spec)
        except Exception as exc:  # llguidance's compile errors for whatever a client sends are the client's
            raise APIError(400, f"{spec.param}: {exc}", param=spec.param) from None
        try:
            tokenizer = self._tokenizer_for_grammars()
        except Exception as exc:  # a tokenizer.json that llguidance cannot read: a limit of this model, not a crash
            raise APIError(400, f"{spec.param}: structured output is not available with this model's tokenizer "
                                f"({exc})", param=spec.param) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise APIError(400, f"{spec.param}: {messages[0]}", param=spec.param)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise APIError(400, f"{spec.param}: {matcher.get_error()}", param=spec.param)
        return [Guide(matcher)] + [Guide(matcher.deep_copy()) for _ in range(n - 1)]
