"""The keyed work queue: one run per key at a time, coalesced triggers, retries with backoff, resyncs."""

from __future__ import annotations

import asyncio
import itertools

from modelfleet_operator.workqueue import WorkQueue


async def _until(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_triggers_during_a_run_collapse_into_one_rerun() -> None:
    async def main() -> None:
        runs: list[str] = []
        active: set[str] = set()
        release = asyncio.Event()

        async def work(key: str) -> None:
            assert key not in active, "a key ran twice at once"
            active.add(key)
            runs.append(key)
            await release.wait()
            active.discard(key)

        queue: WorkQueue[str] = WorkQueue(work)
        queue.add("a")
        queue.add("b")
        await _until(lambda: len(runs) == 2)
        for _ in range(5):
            queue.add("a")
        release.set()
        await _until(lambda: len(runs) == 3 and len(queue) == 0)
        assert sorted(runs) == ["a", "a", "b"]

    asyncio.run(main())


def test_failures_retry_with_backoff_and_resync_is_requested_by_the_work() -> None:
    async def main() -> None:
        calls: list[float] = []
        loop = asyncio.get_running_loop()

        async def work(key: str) -> float | None:
            calls.append(loop.time())
            if len(calls) <= 2:
                raise RuntimeError("API down")
            return 0.02 if len(calls) == 3 else None

        queue: WorkQueue[str] = WorkQueue(work, base_backoff=0.02)
        queue.add("k")
        await _until(lambda: len(calls) == 4)
        await asyncio.sleep(0.1)
        assert len(calls) == 4  # the last run asked for no resync
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps[0] >= 0.02 and gaps[1] >= 0.04  # exponential backoff
        assert gaps[2] >= 0.02

    asyncio.run(main())


def test_forget_cancels_a_pending_resync_and_the_earliest_delay_wins() -> None:
    async def main() -> None:
        calls: list[str] = []

        async def work(key: str) -> None:
            calls.append(key)

        queue: WorkQueue[str] = WorkQueue(work)
        queue.add("gone", 0.05)
        queue.forget("gone")
        queue.add("k", 5)
        queue.add("k", 0.02)
        await _until(lambda: calls == ["k"])
        await asyncio.sleep(0.08)
        assert calls == ["k"]

    asyncio.run(main())
