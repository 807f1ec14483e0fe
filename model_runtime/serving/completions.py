"""Turns OpenAI requests into engine requests, and engine outputs into OpenAI responses and SSE chunks.

A request becomes a ``Generation``: one engine request per prompt (a batched /v1/completions request has
several), each with ``n`` choices; choice ``prompt * n + i`` is choice ``i`` of prompt ``prompt``. Preparing one
(template rendering, tokenization, grammar compilation) blocks, so api.py runs it on the tokenizer threads.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from model_runtime.serving.async_engine import EngineDeadError
from model_runtime.serving.chat import ChatTemplateError, render_chat
from model_runtime.serving.engine import ChoiceDelta, EngineRequest, InvalidRequest, RequestOutput
from model_runtime.serving.errors import APIError
from model_runtime.serving.protocol import (
    AssistantMessage, ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, ChatMessage,
    ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
    DetokenizeRequest, DetokenizeResponse, Tool, TokenizeRequest, TokenizeResponse, TopLogprob, Usage, error_body,
)
from model_runtime.serving.runtime import Runtime
from model_runtime.serving.sampling import SamplingParams, TokenLogprobs
from model_runtime.serving.structured import spec_from_request
from model_runtime.serving.tools import ToolDeltas, ToolMode, template_messages


@dataclass
class Generation:
    requests: list[EngineRequest]
    n: int
    chat: bool
    response_id: str
    echo: list[str] | None = None  # completions with echo: each prompt's text
    tools: ToolMode | None = None  # chat

    @property
    def num_choices(self) -> int:
        return len(self.requests) * self.n


def encode(runtime: Runtime, text: str, param: str, add_special_tokens: bool) -> list[int]:
    runtime.check_prompt_chars(text, param)
    try:
        return runtime.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    except Exception as exc:  # e.g. lone surrogates that are valid JSON but not valid text
        raise APIError(400, f"{param} could not be tokenized: {exc}", param=param) from None


def _sampling(runtime: Runtime, make: Callable[[], SamplingParams], prompt_ids: list[int], param: str) -> SamplingParams:
    try:
        params = make()
        runtime.engine.check_request(prompt_ids, params, param)
    except InvalidRequest as exc:
        raise APIError(400, str(exc), param=exc.param, code="context_length_exceeded"
                       if exc.param in ("max_tokens", param) and "context" in str(exc) else None) from None
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    return params


def check_model(runtime: Runtime, name: str | None) -> None:
    if name is not None and name != runtime.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {runtime.model_name!r}",
                       param="model", code="model_not_found")


def prepare_completion(runtime: Runtime, body: CompletionRequest) -> Generation:
    check_model(runtime, body.model)
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo together with logprobs (prompt logprobs) is not supported", param="echo")
    prompts = body.prompts()
    spec = spec_from_request(body)
    guides = runtime.grammars.guides(spec, body.n * len(prompts)) if spec else None
    rid = f"cmpl-{uuid.uuid4().hex}"
    requests = []
    for k, prompt in enumerate(prompts):
        ids = encode(runtime, prompt, "prompt", True) if isinstance(prompt, str) else list(prompt)
        params = _sampling(runtime, lambda: body.sampling_params(body.max_tokens, body.logprobs), ids, "prompt")
        requests.append(EngineRequest(f"{rid}-{k}", ids, params, runtime.cfg.request_timeout,
                                      guides=guides[k * body.n:(k + 1) * body.n] if guides else None))
    echo = [p if isinstance(p, str) else runtime.tokenizer.decode(p, skip_special_tokens=False) for p in prompts] \
        if body.echo else None
    return Generation(requests, body.n, False, rid, echo)


def render_messages(runtime: Runtime, messages: list[ChatMessage], tools: list[Tool] | None,
                    add_generation_prompt: bool, template_kwargs: dict | None) -> str:
    tool_defs = [t.model_dump(exclude_none=True) for t in tools] if tools else None
    try:
        return render_chat(runtime.chat_template, template_messages(messages), runtime.special_tokens,
                           add_generation_prompt, tool_defs, template_kwargs)
    except ChatTemplateError as exc:
        raise APIError(400, str(exc), param="messages") from None


def prepare_chat(runtime: Runtime, body: ChatCompletionRequest) -> Generation:
    check_model(runtime, body.model)
    tools = ToolMode.from_request(body)
    spec, forced = spec_from_request(body), tools.grammar()
    if spec is not None and forced is not None:
        raise APIError(400, f"{spec.param} cannot be combined with a required or named tool_choice", param=spec.param)
    spec = spec or forced
    text = render_messages(runtime, body.messages, body.tools, body.add_generation_prompt, body.chat_template_kwargs)
    ids = encode(runtime, text, "messages", False)
    if not ids:
        raise APIError(400, "the rendered conversation is empty", param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or max(1, runtime.max_model_len - len(ids))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling(runtime, lambda: body.sampling_params(max_tokens, logprobs), ids, "messages")
    guides = runtime.grammars.guides(spec, body.n) if spec else None
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    return Generation([EngineRequest(rid, ids, params, runtime.cfg.request_timeout, guides=guides)], body.n, True,
                      rid, tools=tools)


def tokenize(runtime: Runtime, body: TokenizeRequest) -> TokenizeResponse:
    check_model(runtime, body.model)
    if body.prompt is not None:
        ids = encode(runtime, body.prompt, "prompt", body.add_special_tokens is not False)
    else:
        text = render_messages(runtime, body.messages, body.tools, body.add_generation_prompt,
                               body.chat_template_kwargs)
        ids = encode(runtime, text, "messages", bool(body.add_special_tokens))
    strs = [runtime.token_string(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=runtime.max_model_len, tokens=ids, token_strs=strs)


def detokenize(runtime: Runtime, body: DetokenizeRequest) -> DetokenizeResponse:
    check_model(runtime, body.model)
    vocab = runtime.engine.vocab_size
    if any(t >= vocab for t in body.tokens):
        raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
    return DetokenizeResponse(prompt=runtime.tokenizer.decode(body.tokens, skip_special_tokens=False))


async def outputs(runtime: Runtime, gen: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) of all the generation's engine requests, as they come."""
    if runtime.cfg.fault_latency_ms:  # testing only (faults.py): after arrival, so it shows in TTFT
        await asyncio.sleep(runtime.cfg.fault_latency_ms / 1000)
    if len(gen.requests) == 1:
        async for out in runtime.engine.generate(gen.requests[0]):
            yield 0, out
        return
    streams = [runtime.engine.generate(r) for r in gen.requests]
    pending = {asyncio.ensure_future(anext(s)): k for k, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                k = pending.pop(task)
                try:
                    out = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(streams[k]))] = k
                yield k, out
    finally:  # leaving early aborts the unfinished requests (closing a stream aborts its request)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for s in streams:
            await s.aclose()


async def _listen_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_to_end(runtime: Runtime, request: Request, gen: Generation) -> list[list[RequestOutput]]:
    """All outputs of a non-streaming request, per prompt; a client that disconnects first aborts it."""

    async def collect() -> list[list[RequestOutput]]:
        per_prompt: list[list[RequestOutput]] = [[] for _ in gen.requests]
        async for k, out in outputs(runtime, gen):
            per_prompt[k].append(out)
        return per_prompt

    work = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_listen_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()  # closing the generators aborts the requests in the engine
    if work.cancelled():
        raise APIError(499, "client disconnected")
    per_prompt = work.result()
    if any(_timed_out(outs[-1]) for outs in per_prompt if outs):
        raise APIError(408, f"the request did not finish within {runtime.cfg.request_timeout:g} s",
                       code="request_timeout")
    return per_prompt


def _timed_out(out: RequestOutput) -> bool:
    return any(c.finish_reason == "timeout" for c in out.choices)


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


def _merge(gen: Generation, per_prompt: list[list[RequestOutput]]) -> list[_Choice]:
    choices = [_Choice() for _ in range(gen.num_choices)]
    for k, outs in enumerate(per_prompt):
        for out in outs:
            for delta in out.choices:
                choices[k * gen.n + delta.index].add(delta)
    return choices


def usage(lasts: list[RequestOutput]) -> Usage:
    """Totals over the prompts, from each one's latest output."""
    prompt = sum(o.prompt_tokens for o in lasts)
    completion = sum(o.completion_tokens for o in lasts)
    cached = sum(o.cached_tokens for o in lasts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details={"cached_tokens": cached} if cached else None)


def completion_logprobs(runtime: Runtime, entries: list[tuple[int, TokenLogprobs]], offset: int = 0) \
        -> CompletionLogprobs:
    result = CompletionLogprobs()
    for token, lp in entries:
        text = runtime.token_string(token)
        result.tokens.append(text)
        result.token_logprobs.append(lp.logprob)
        result.top_logprobs.append({runtime.token_string(t): v for t, v in lp.top})
        result.text_offset.append(offset)
        offset += len(text)
    return result


def chat_logprobs(runtime: Runtime, entries: list[tuple[int, TokenLogprobs]]) -> ChatLogprobs:
    def top(token: int, value: float) -> TopLogprob:
        text = runtime.token_string(token)
        return TopLogprob(token=text, logprob=value, bytes=list(text.encode("utf-8", "replace")))

    return ChatLogprobs(content=[
        ChatTokenLogprob(**top(token, lp.logprob).model_dump(), top_logprobs=[top(t, v) for t, v in lp.top])
        for token, lp in entries
    ])


def completion_response(runtime: Runtime, gen: Generation, per_prompt: list[list[RequestOutput]]) \
        -> CompletionResponse:
    want_logprobs = gen.requests[0].params.logprobs is not None
    choices = []
    for i, c in enumerate(_merge(gen, per_prompt)):
        prefix = gen.echo[i // gen.n] if gen.echo else ""
        choices.append(CompletionChoice(index=i, text=prefix + "".join(c.text), finish_reason=c.finish_reason,
                                        logprobs=completion_logprobs(runtime, c.logprobs) if want_logprobs else None))
    return CompletionResponse(id=gen.response_id, model=runtime.model_name, choices=choices,
                              usage=usage([outs[-1] for outs in per_prompt]))


def chat_response(runtime: Runtime, gen: Generation, per_prompt: list[list[RequestOutput]]) -> ChatCompletionResponse:
    want_logprobs = gen.requests[0].params.logprobs is not None
    choices = []
    for i, c in enumerate(_merge(gen, per_prompt)):
        content, calls = gen.tools.parse("".join(c.text))
        finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
        choices.append(ChatChoice(index=i, message=AssistantMessage(content=content, tool_calls=calls or None),
                                  finish_reason=finish,
                                  logprobs=chat_logprobs(runtime, c.logprobs) if want_logprobs else None))
    return ChatCompletionResponse(id=gen.response_id, model=runtime.model_name, choices=choices,
                                  usage=usage([outs[-1] for outs in per_prompt]))


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def stream_events(runtime: Runtime, gen: Generation, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, one choice per chunk, ending with ``data: [DONE]``."""
    head = {"id": gen.response_id, "object": "chat.completion.chunk" if gen.chat else "text_completion",
            "created": int(time.time()), "model": runtime.model_name}
    chunks = _ChatChunks(runtime, gen) if gen.chat else _CompletionChunks(runtime, gen)
    for choice in chunks.opening():
        yield _sse({**head, "choices": [choice]})
    lasts: dict[int, RequestOutput] = {}
    try:
        async for k, out in outputs(runtime, gen):
            lasts[k] = out
            if _timed_out(out):
                yield _sse(error_body(f"the request did not finish within {runtime.cfg.request_timeout:g} s",
                                      "timeout_error", code="request_timeout"))
                break
            for delta in out.choices:
                for choice in chunks.choices(k * gen.n + delta.index, delta):
                    yield _sse({**head, "choices": [choice]})
    except EngineDeadError as exc:
        yield _sse(error_body(str(exc), "service_unavailable_error"))
    if include_usage and lasts:
        yield _sse({**head, "choices": [], "usage": usage(list(lasts.values())).model_dump(exclude_none=True)})
    yield "data: [DONE]\n\n"


class _CompletionChunks:
    def __init__(self, runtime: Runtime, gen: Generation) -> None:
        self.runtime, self.gen = runtime, gen
        self.offsets = [0] * gen.num_choices

    def opening(self) -> list[dict]:
        if not self.gen.echo:
            return []
        for i in range(self.gen.num_choices):
            self.offsets[i] = len(self.gen.echo[i // self.gen.n])
        return [{"index": i, "text": self.gen.echo[i // self.gen.n], "logprobs": None, "finish_reason": None}
                for i in range(self.gen.num_choices)]

    def choices(self, index: int, delta: ChoiceDelta) -> list[dict]:
        if not (delta.text or delta.finish_reason or delta.logprobs):
            return []  # all new text is held back for stop strings
        logprobs = completion_logprobs(self.runtime, delta.logprobs, self.offsets[index]).model_dump() \
            if delta.logprobs else None
        self.offsets[index] += len(delta.text)
        return [{"index": index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason}]


class _ChatChunks:
    def __init__(self, runtime: Runtime, gen: Generation) -> None:
        self.runtime = runtime
        self.deltas = [ToolDeltas(gen.tools) for _ in range(gen.num_choices)]

    def opening(self) -> list[dict]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(len(self.deltas))]

    def choices(self, index: int, delta: ChoiceDelta) -> list[dict]:
        tool_deltas = self.deltas[index]
        messages = tool_deltas.feed(delta.text)
        finish = delta.finish_reason
        if finish:
            messages += tool_deltas.finish()
            if finish == "stop" and tool_deltas.has_calls:
                finish = "tool_calls"
        logprobs = chat_logprobs(self.runtime, delta.logprobs).model_dump() if delta.logprobs else None
        if not messages and (finish or logprobs):
            messages = [{}]
        result = [{"index": index, "delta": m, "logprobs": None, "finish_reason": None} for m in messages]
        if result:
            result[0]["logprobs"] = logprobs
            result[-1]["finish_reason"] = finish
        return result
