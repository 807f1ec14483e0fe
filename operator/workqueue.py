"""A keyed work queue for asyncio, in the manner of client-go's: a key is never worked on twice at once,
triggers that arrive while it is being worked on collapse into one rerun, failures retry with exponential
backoff, and the work may ask to be repeated after a delay (a periodic resync).

It only schedules; what to do lives in the work function. Losing the queue (a killed operator) loses nothing:
on restart the watch lists every object again and each is queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    def __init__(self, work: Callable[[K], Awaitable[float | None]], concurrency: int = 8,
                 base_backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        """`work(key)` returns seconds until it wants to run again, or None to wait for the next trigger."""
        self._work = work
        self._concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._running: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}

    def add(self, key: K, delay: float = 0.0) -> None:
        """Work on `key` now (or after `delay` seconds; an earlier pending time wins). Call from the event loop."""
        loop = asyncio.get_running_loop()
        if delay > 0:
            due = loop.time() + delay
            pending = self._timers.get(key)
            if pending and pending[0] <= due:
                return
            if pending:
                pending[1].cancel()
            self._timers[key] = (due, loop.call_later(delay, self._fire, key))
            return
        if key in self._running:
            self._dirty.add(key)
            return
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()
        self._running[key] = loop.create_task(self._run(key))

    def forget(self, key: K) -> None:
        """Drop pending retries and resyncs of `key` (its object is gone)."""
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()
        self._failures.pop(key, None)
        self._dirty.discard(key)

    def __len__(self) -> int:
        return len(self._running)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _run(self, key: K) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._concurrency)
        again: float | None = None
        try:
            async with self._semaphore:
                again = await self._work(key)
            self._failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            again = min(self._base_backoff * 2 ** (failures - 1), self._max_backoff)
            log.exception("reconcile of %s failed (attempt %d); retrying in %.0fs", key, failures, again)
        finally:
            del self._running[key]
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
        elif again is not None:
            self.add(key, again)
