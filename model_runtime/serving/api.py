"""The FastAPI application: OpenAI-compatible routes, probes, metrics, and admission control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_runtime.serving import completions
from model_runtime.serving.async_engine import EngineDeadError
from model_runtime.serving.auth import APIKeyAuth
from model_runtime.serving.config import ServeConfig
from model_runtime.serving.completions import Generation
from model_runtime.serving.engine import RequestOutput
from model_runtime.serving.errors import APIError, install_error_handlers
from model_runtime.serving.faults import Faults
from model_runtime.serving.protocol import (
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, DetokenizeRequest,
    DetokenizeResponse, ErrorResponse, Lenient, ModelCard, ModelList, PredictRequest, PredictResponse,
    TokenizeRequest, TokenizeResponse,
)
from model_runtime.serving.runtime import Runtime, ServerState, build_runtime, warm_up

log = logging.getLogger(__name__)

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/predict"})
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 503)}
# vLLM's http_* metrics leave out the probe and metrics routes.
HTTP_METRICS_EXCLUDED = ["/metrics", "/health", "/ready", "/load", "/ping", "/version", "/server_info"]
_TICKET = "modelfleet.sequences"  # scope key: the sequences a request was admitted with, released when it ends


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server's limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else as soon as the count passes it."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await APIError(413, BodyTooLarge(self.limit).detail).asgi(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # FastAPI re-raises HTTP exceptions from body reading
            return message

        await self.app(scope, counted, send)


class AdmissionMiddleware:
    """Before a generation request is even parsed: 503 while not ready or draining (and an injected 500 when the
    test-only fault switch says so).

    Counts requests in flight for the drain on SIGTERM (a streaming response counts until its last byte) and
    releases the sequences the handler admitted (``admit``) when the request ends. ``http_requests_total`` comes
    from prometheus-fastapi-instrumentator, added after this middleware so it wraps it and counts these 503s and
    500s too."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState, faults: Faults) -> None:
        self.app, self.state, self.faults = app, state, faults

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        state = self.state
        if state.draining or not state.ready:
            reason = "the server is shutting down" if state.draining else "the model is not ready"
            return await APIError(503, reason).asgi(scope, receive, send)
        if self.faults.next_fails():
            return await APIError(500, "injected fault (MODELFLEET_FAULT_ERROR_RATE, for testing)").asgi(
                scope, receive, send)
        ticket = scope[_TICKET] = [0]
        state.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            state.leave()
            state.seqs_in_flight -= ticket[0]


def create_app(cfg: ServeConfig, runtime: Runtime | None = None) -> FastAPI:
    """The app; the model is loaded (unless ``runtime`` is given) and warmed up during startup."""
    state = ServerState()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt = runtime or await asyncio.to_thread(build_runtime, cfg)
        app.state.runtime = rt
        rt.engine.start()
        try:
            await warm_up(rt)
            state.ready = True
            log.info("ready: serving %r", rt.model_name)
            yield
        finally:
            state.ready = False
            rt.engine.shutdown()
            rt.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="modelfleet inference runtime", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible completions and chat over a continuous-batching engine.")
    app.state.server = state
    app.add_middleware(AdmissionMiddleware, state=state, faults=Faults(cfg.fault_latency_ms, cfg.fault_error_rate))
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_request_bytes)
    install_error_handlers(app)
    # The http_* request metrics as vLLM exposes them: the same library, its default metrics, grouped status codes.
    http_registry = CollectorRegistry()
    Instrumentator(excluded_handlers=HTTP_METRICS_EXCLUDED, registry=http_registry).instrument(app)
    seq_limit = cfg.max_num_seqs + cfg.max_waiting_requests

    def rt(request: Request) -> Runtime:
        return request.app.state.runtime

    def admit(request: Request, seqs: int) -> None:
        """Count the request's sequences (n per prompt) against the queue; 429 when they do not fit."""
        if seqs > seq_limit:
            raise APIError(400, f"the request asks for {seqs} sequences (n x prompts); this server takes at most "
                                f"{seq_limit}", param="n")
        if state.seqs_in_flight + seqs > seq_limit:
            raise APIError(429, "too many sequences are queued; retry later", headers={"Retry-After": "1"})
        state.seqs_in_flight += seqs
        request.scope[_TICKET][0] += seqs

    @app.get("/health", summary="Liveness: 200 while the engine loop runs")
    async def health(request: Request) -> JSONResponse:
        runtime_ = getattr(request.app.state, "runtime", None)
        alive = runtime_ is not None and runtime_.engine.alive
        return JSONResponse({"status": "ok" if alive else "engine loop died"}, 200 if alive else 503)

    @app.get("/ready", summary="Readiness: 200 once loaded and warmed up, 503 while draining")
    async def ready(request: Request) -> JSONResponse:
        runtime_ = getattr(request.app.state, "runtime", None)
        ok = state.ready and not state.draining and runtime_ is not None and runtime_.engine.alive
        return JSONResponse({"status": "ready" if ok else "not ready"}, 200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics (vLLM names)", response_class=Response)
    async def metrics(request: Request) -> Response:
        text = generate_latest(rt(request).metrics.registry) + generate_latest(http_registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    api = APIRouter(dependencies=[Depends(APIKeyAuth(cfg.api_keys))], responses=_ERRORS)

    def card(r: Runtime) -> ModelCard:
        # root is the served name, as vLLM's with --served-model-name: responses never show filesystem paths.
        return ModelCard(id=r.model_name, created=r.created, root=r.model_name, max_model_len=r.max_model_len)

    @api.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        return ModelList(data=[card(rt(request))])

    @api.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str, request: Request) -> ModelCard:
        r = rt(request)
        completions.check_model(r, model_id)
        return card(r)

    @api.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def create_completion(body: CompletionRequest, request: Request):
        r = rt(request)
        note_ignored(request, body)
        admit(request, body.n * len(body.prompts()))
        gen = await r.offload(completions.prepare_completion, r, body)
        if body.stream:
            return _sse(completions.stream_events(r, gen, _include_usage(body)))
        return completions.completion_response(r, gen, await _run(r, request, gen))

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def create_chat_completion(body: ChatCompletionRequest, request: Request):
        r = rt(request)
        note_ignored(request, body)
        admit(request, body.n)
        gen = await r.offload(completions.prepare_chat, r, body)
        if body.stream:
            return _sse(completions.stream_events(r, gen, _include_usage(body)))
        return completions.chat_response(r, gen, await _run(r, request, gen))

    @api.post("/tokenize", response_model=TokenizeResponse, summary="Text or chat messages -> token ids (vLLM's)")
    async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
        r = rt(request)
        note_ignored(request, body)
        return await r.offload(completions.tokenize, r, body)

    @api.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids -> text (vLLM's)")
    async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
        r = rt(request)
        note_ignored(request, body)
        return await r.offload(completions.detokenize, r, body)

    @api.post("/predict", response_model=PredictResponse, summary="Plain text in, greedy continuation out")
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        r = rt(request)
        admit(request, 1)
        completion = CompletionRequest(prompt=body.text, max_tokens=body.max_tokens, temperature=0)
        gen = await r.offload(completions.prepare_completion, r, completion)
        per_prompt = await _run(r, request, gen)
        return PredictResponse(result="".join(d.text for out in per_prompt[0] for d in out.choices))

    app.include_router(api)
    return app


def note_ignored(request: Request, body: Lenient) -> None:
    """Unknown fields are accepted and ignored, as vLLM does; the log says which."""
    ignored = body.ignored_fields()
    if ignored:
        log.info("%s: ignoring unsupported fields %s", request.url.path, ", ".join(ignored))


def _include_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _run(runtime: Runtime, request: Request, gen: Generation) -> list[list[RequestOutput]]:
    try:
        return await completions.run_to_end(runtime, request, gen)
    except EngineDeadError as exc:
        raise APIError(503, str(exc)) from None


def _sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
