"""The skeleton both controllers share: a work queue of (namespace, name) keys feeding one level-triggered reconcile
function, with its metrics (reconciles by result, duration, resources by phase).

Watch handlers only add keys; the queue guarantees that one object's reconciles never overlap, that triggers
arriving during a reconcile collapse into one rerun, and that failures retry with exponential backoff. Nothing
here is state that matters: a restarted (or newly elected) operator lists every object and queues it again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelfleet_operator import metrics
from modelfleet_operator.kube import Conflict
from modelfleet_operator.workqueue import WorkQueue

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile found: the object's phase, and seconds until it wants to run again (None: only when a
    watch event says something changed)."""

    phase: str | None
    requeue_after: float | None


Reconcile = Callable[[str, str], Awaitable[Outcome | None]]  # (namespace, name) -> None when the object is gone


class Controller:
    def __init__(self, kind: str, phases: tuple[str, ...], reconcile: Reconcile, concurrency: int) -> None:
        self.kind = kind
        self.phases = phases
        self._reconcile = reconcile
        self._phase_of: dict[Key, str] = {}
        self.queue: WorkQueue[Key] = WorkQueue(self._work, concurrency=concurrency)

    def add(self, key: Key, delay: float = 0.0) -> None:
        self.queue.add(key, delay)

    def forget(self, key: Key) -> None:
        """The object was deleted: drop its pending retries and its phase."""
        self.queue.forget(key)
        self._record(key, None)

    async def _work(self, key: Key) -> float | None:
        started = time.perf_counter()
        try:
            outcome = await self._reconcile(*key)
        except Conflict:  # someone else wrote the object since we read it: an expected retry, at once
            self._count("retry", started)
            return 0.0
        except Exception:
            self._count("error", started)
            raise  # the queue retries with backoff
        self._count("success", started)
        self._record(key, outcome.phase if outcome else None)
        return outcome.requeue_after if outcome else None

    def _count(self, result: str, started: float) -> None:
        metrics.RECONCILES.labels(self.kind, result).inc()
        metrics.RECONCILE_DURATION.labels(self.kind).observe(time.perf_counter() - started)

    def _record(self, key: Key, phase: str | None) -> None:
        if phase:
            self._phase_of[key] = phase
        else:
            self._phase_of.pop(key, None)
        counts = Counter(self._phase_of.values())
        for name in self.phases:
            metrics.RESOURCES.labels(self.kind, name).set(counts.get(name, 0))
