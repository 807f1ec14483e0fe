"""Runs the app under uvicorn with a graceful drain.

On SIGTERM (or SIGINT): readiness turns 503 at once and new generation requests get 503, requests in flight
run to completion for up to ``drain_timeout`` seconds, then uvicorn stops and the process exits 0. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Generator

import uvicorn

from model_runtime.serving.runtime import ServerState

log = logging.getLogger(__name__)

_CLOSE_GRACE_S = 5.0  # for uvicorn to close idle keep-alive connections after the drain


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._drain_task: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Replace uvicorn's handlers (which stop accepting at once) with the drain."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_drain, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def begin_drain(self, sig: int = signal.SIGTERM) -> None:
        if self.state.draining:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        log.info("%s: draining %d request(s) in flight (up to %.0f s)", signal.Signals(sig).name,
                 self.state.in_flight, self.drain_timeout)
        self.state.draining = True
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        started = time.monotonic()
        if self.state.in_flight:
            try:
                await asyncio.wait_for(self.state.idle.wait(), self.drain_timeout)
            except TimeoutError:
                log.warning("drain timeout: %d request(s) still in flight are cut off", self.state.in_flight)
        log.info("drained in %.1f s; shutting down", time.monotonic() - started)
        self.should_exit = True


def make_server(app, host: str, port: int, drain_timeout: float) -> DrainingServer:
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=int(_CLOSE_GRACE_S), lifespan="on")
    return DrainingServer(config, app.state.server, drain_timeout)


def run(app, host: str, port: int, drain_timeout: float, sock: socket.socket | None = None) -> int:
    """Serve until drained; 0 after a clean shutdown, 1 if startup (model loading, warm-up) failed."""
    server = make_server(app, host, port, drain_timeout)
    server.run(sockets=[sock] if sock else None)
    return 0 if server.started else 1
