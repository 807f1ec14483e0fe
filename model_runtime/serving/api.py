"""The FastAPI application: OpenAI-compatible routes, probes, metrics, and admission control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_runtime.serving import completions
from model_runtime.serving.async_engine import EngineDeadError
from model_runtime.serving.auth import APIKeyAuth
from model_runtime.serving.config import ServeConfig
from model_runtime.serving.engine import EngineRequest, RequestOutput
from model_runtime.serving.errors import APIError, install_error_handlers
from model_runtime.serving.protocol import (
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ErrorResponse, ModelCard,
    ModelList, PredictRequest, PredictResponse,
)
from model_runtime.serving.runtime import Runtime, ServerState, build_runtime, warm_up

log = logging.getLogger(__name__)

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/predict"})
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 429, 503)}


class AdmissionMiddleware:
    """Before a generation request is even parsed: 503 while not ready or draining, 429 when the queue is full.

    Counts requests in flight for the drain on SIGTERM; a streaming response counts until its last byte."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState, limit: int) -> None:
        self.app, self.state, self.limit = app, state, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        state = self.state
        if state.draining or not state.ready:
            reason = "the server is shutting down" if state.draining else "the model is not ready"
            return await APIError(503, reason).asgi(scope, receive, send)
        if state.in_flight >= self.limit:
            return await APIError(429, "too many requests are queued; retry later",
                                  headers={"Retry-After": "1"}).asgi(scope, receive, send)
        state.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            state.leave()


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

    app = FastAPI(title="modelfleet inference runtime", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible completions and chat over a continuous-batching engine.")
    app.state.server = state
    app.add_middleware(AdmissionMiddleware, state=state, limit=cfg.max_num_seqs + cfg.max_waiting_requests)
    install_error_handlers(app)

    def rt(request: Request) -> Runtime:
        return request.app.state.runtime

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
        return Response(generate_latest(rt(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    api = APIRouter(dependencies=[Depends(APIKeyAuth(cfg.api_keys))], responses=_ERRORS)

    @api.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        r = rt(request)
        return ModelList(data=[ModelCard(id=r.model_name, created=r.created, root=str(cfg.model),
                                         max_model_len=r.max_model_len)])

    @api.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def create_completion(body: CompletionRequest, request: Request):
        r = rt(request)
        req = completions.completion_request(r, body)
        if body.stream:
            return _sse(completions.stream_events(r, req, False, bool(body.stream_options and
                                                                    body.stream_options.include_usage)))
        return completions.completion_response(r, req, await _run(r, request, req))

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def create_chat_completion(body: ChatCompletionRequest, request: Request):
        r = rt(request)
        req = completions.chat_request(r, body)
        if body.stream:
            return _sse(completions.stream_events(r, req, True, bool(body.stream_options and
                                                                   body.stream_options.include_usage)))
        return completions.chat_response(r, req, await _run(r, request, req))

    @api.post("/predict", response_model=PredictResponse, summary="Plain text in, greedy continuation out")
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        r = rt(request)
        completion = CompletionRequest(prompt=body.text, max_tokens=body.max_tokens, temperature=0)
        req = completions.completion_request(r, completion)
        outputs = await _run(r, request, req)
        return PredictResponse(result="".join(d.text for out in outputs for d in out.choices))

    app.include_router(api)
    return app


async def _run(runtime: Runtime, request: Request, req: EngineRequest) -> list[RequestOutput]:
    try:
        return await completions.run_to_end(runtime, request, req)
    except EngineDeadError as exc:
        raise APIError(503, str(exc)) from None


def _sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
