"""The operator's own asynchronous client (modelfleet_operator.kube), for synchronous tests: each call runs on
an event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Callable

from modelfleet_operator.kube import Kube

CALL_TIMEOUT_SECONDS = 60


class SyncKube:
    def __init__(self, kubeconfig: str) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="sync-kube", daemon=True).start()
        self._kube: Kube = self._run(Kube.from_environment(kubeconfig))

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_SECONDS)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._kube, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))
