"""Runs the engine on one dedicated thread and connects it to asyncio.

Requests and aborts go in through a thread-safe queue; each step's outputs come back to the event loop in
one ``call_soon_threadsafe`` call and are routed to per-request asyncio queues. The thread blocks on the
queue while there is no work, so an idle server uses no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

import torch

from model_runtime.serving.engine import EngineRequest, LLMEngine, RequestOutput
from model_runtime.serving.sampling import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    def check_request(self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "prompt") -> None:
        """The engine's own validation, run by the API before admitting a request (it only reads fixed limits)."""
        self.engine.check_request(prompt_ids, params, prompt_param)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._inbox.put(("stop",))
            self._thread.join(timeout)

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs; leaving early (cancellation, disconnect) aborts it in the engine."""
        if not self.alive:
            raise EngineDeadError("the engine loop is not running")
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request.request_id] = stream
        self._inbox.put(("add", request))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._inbox.put(("abort", request.request_id))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        engine = self.engine
        try:
            while True:
                messages = [self._inbox.get()] if not engine.has_work() else []
                while True:
                    try:
                        messages.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                outputs: list[RequestOutput | tuple[str, BaseException]] = []
                for message in messages:
                    if message[0] == "stop":
                        return
                    if message[0] == "add":
                        request = message[1]
                        try:
                            engine.add_request(request)
                        except Exception as exc:  # validated by the API already; never let one request stop the loop
                            engine.fail_request(request)
                            outputs.append((request.request_id, exc))
                    else:
                        aborted = engine.abort_request(message[1])
                        if aborted is not None:
                            outputs.append(aborted)
                if engine.has_work():
                    outputs.extend(engine.step())
                if outputs:
                    self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except BaseException as exc:
            log.exception("engine loop died")
            self.error = exc
            try:
                engine.fail_all()
            except Exception:  # the metrics are best effort once the engine is broken
                log.exception("could not count the failed requests")
            self._loop.call_soon_threadsafe(self._fail_all, EngineDeadError(f"the engine loop died: {exc!r}"))

    def _dispatch(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, tuple):
                request_id, item = out
            else:
                request_id, item = out.request_id, out
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(item)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)
