"""Turns OpenAI requests into engine requests, and engine outputs into OpenAI responses and SSE chunks."""

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
    AssistantMessage, ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, ChatTokenLogprob,
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, TopLogprob, Usage, error_body,
)
from model_runtime.serving.runtime import Runtime
from model_runtime.serving.sampling import SamplingParams, TokenLogprobs


def _encode(runtime: Runtime, text: str, param: str, add_special_tokens: bool) -> list[int]:
    try:
        return runtime.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    except Exception as exc:  # e.g. lone surrogates that are valid JSON but not valid text
        raise APIError(400, f"{param} could not be tokenized: {exc}", param=param) from None


def _sampling(runtime: Runtime, make: Callable[[], SamplingParams], prompt_ids: list[int], param: str) -> SamplingParams:
    try:
        params = make()
        runtime.engine.engine.check_request(prompt_ids, params, param)
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


def completion_request(runtime: Runtime, body: CompletionRequest) -> EngineRequest:
    check_model(runtime, body.model)
    prompt = body.prompt[0] if isinstance(body.prompt, list) and isinstance(body.prompt[0], (list, str)) \
        else body.prompt
    ids = _encode(runtime, prompt, "prompt", True) if isinstance(prompt, str) else list(prompt)
    params = _sampling(runtime, lambda: body.sampling_params(body.max_tokens, body.logprobs), ids, "prompt")
    return EngineRequest(f"cmpl-{uuid.uuid4().hex}", ids, params, runtime.cfg.request_timeout)


def chat_request(runtime: Runtime, body: ChatCompletionRequest) -> EngineRequest:
    check_model(runtime, body.model)
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in body.messages]
    try:
        text = render_chat(runtime.chat_template, messages, runtime.special_tokens, body.add_generation_prompt)
    except ChatTemplateError as exc:
        raise APIError(400, str(exc), param="messages") from None
    ids = _encode(runtime, text, "messages", False)
    if not ids:
        raise APIError(400, "the rendered conversation is empty", param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or max(1, runtime.max_model_len - len(ids))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling(runtime, lambda: body.sampling_params(max_tokens, logprobs), ids, "messages")
    return EngineRequest(f"chatcmpl-{uuid.uuid4().hex}", ids, params, runtime.cfg.request_timeout)


async def _listen_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_to_end(runtime: Runtime, request: Request, engine_request: EngineRequest) -> list[RequestOutput]:
    """All outputs of a non-streaming request; a client that disconnects first aborts it."""

    async def collect() -> list[RequestOutput]:
        return [out async for out in runtime.engine.generate(engine_request)]

    work = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_listen_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()  # closing the generator aborts the request in the engine
    if work.cancelled():
        raise APIError(499, "client disconnected")
    outputs = work.result()
    if outputs and any(c.finish_reason == "timeout" for c in outputs[-1].choices):
        raise APIError(408, f"the request did not finish within {runtime.cfg.request_timeout:g} s",
                       code="request_timeout")
    return outputs


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


def _merge(outputs: list[RequestOutput], n: int) -> list[_Choice]:
    choices = [_Choice() for _ in range(n)]
    for out in outputs:
        for delta in out.choices:
            choices[delta.index].add(delta)
    return choices


def usage(out: RequestOutput) -> Usage:
    details = {"cached_tokens": out.cached_tokens} if out.cached_tokens else None
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens, prompt_tokens_details=details)


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


def completion_response(runtime: Runtime, req: EngineRequest, outputs: list[RequestOutput]) -> CompletionResponse:
    choices = _merge(outputs, req.params.n)
    return CompletionResponse(id=req.request_id, model=runtime.model_name, usage=usage(outputs[-1]), choices=[
        CompletionChoice(index=i, text="".join(c.text), finish_reason=c.finish_reason,
                         logprobs=completion_logprobs(runtime, c.logprobs) if req.params.logprobs is not None else None)
        for i, c in enumerate(choices)])


def chat_response(runtime: Runtime, req: EngineRequest, outputs: list[RequestOutput]) -> ChatCompletionResponse:
    choices = _merge(outputs, req.params.n)
    return ChatCompletionResponse(id=req.request_id, model=runtime.model_name, usage=usage(outputs[-1]), choices=[
        ChatChoice(index=i, message=AssistantMessage(content="".join(c.text)), finish_reason=c.finish_reason,
                   logprobs=chat_logprobs(runtime, c.logprobs) if req.params.logprobs is not None else None)
        for i, c in enumerate(choices)])


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_events(runtime: Runtime, req: EngineRequest, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    created = int(time.time())
    head = {"id": req.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": runtime.model_name}
    offsets = [0] * req.params.n
    if chat:
        yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None} for i in range(req.params.n)]})
    last: RequestOutput | None = None
    try:
        async for out in runtime.engine.generate(req):
            last = out
            for event in _chunk_events(runtime, out, chat, head, offsets):
                yield event
            if any(c.finish_reason == "timeout" for c in out.choices):
                break
    except EngineDeadError as exc:
        yield _sse(error_body(str(exc), "service_unavailable_error"))
    if include_usage and last is not None:
        yield _sse({**head, "choices": [], "usage": usage(last).model_dump(exclude_none=True)})
    yield "data: [DONE]\n\n"


def _chunk_events(runtime: Runtime, out: RequestOutput, chat: bool, head: dict,
                  offsets: list[int]) -> list[str]:
    """The SSE events for one engine output (none when all new text is held back for stop strings)."""
    if any(c.finish_reason == "timeout" for c in out.choices):
        return [_sse(error_body(f"the request did not finish within {runtime.cfg.request_timeout:g} s",
                                "timeout_error", code="request_timeout"))]
    choices = []
    for delta in out.choices:
        if not (delta.text or delta.finish_reason or delta.logprobs):
            continue
        if chat:
            logprobs = chat_logprobs(runtime, delta.logprobs).model_dump() if delta.logprobs else None
            content = {"content": delta.text} if delta.text else {}
            choices.append({"index": delta.index, "delta": content, "logprobs": logprobs,
                            "finish_reason": delta.finish_reason})
        else:
            logprobs = completion_logprobs(runtime, delta.logprobs, offsets[delta.index]).model_dump() \
                if delta.logprobs else None
            offsets[delta.index] += len(delta.text)
            choices.append({"index": delta.index, "text": delta.text, "logprobs": logprobs,
                            "finish_reason": delta.finish_reason})
    return [_sse({**head, "choices": choices})] if choices else []
