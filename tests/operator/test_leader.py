"""Leader election (operator/leader.py) against the real API server, with short timings: one leader at a time, a
standby takes an expired Lease, a released Lease at once, and a leader that cannot renew gives up before its Lease
can expire."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from modelfleet_operator import metrics
from modelfleet_operator.kube import Kube
from modelfleet_operator.leader import LeaderElector, LeaseConfig, LostLeadership

pytestmark = pytest.mark.cluster

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.25


def run(cluster: Any, scenario: Callable[[Kube, Callable[[str], LeaderElector]], Awaitable[None]]) -> None:
    lease = f"test-leader-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        kube = await Kube.from_environment(cluster.kubeconfig)
        try:
            await scenario(kube, lambda who: LeaderElector(kube, LeaseConfig("default", lease, who, LEASE_S, RENEW_S,
                                                                             RETRY_S)))
        finally:
            await kube.delete("Lease", "default", lease)
            await kube.close()

    asyncio.run(main())


def test_a_standby_takes_over_only_once_the_lease_has_expired(cluster: Any) -> None:
    async def scenario(kube: Kube, elector: Callable[[str], LeaderElector]) -> None:
        first, second = elector("first"), elector("second")
        await first.acquire()
        holding = asyncio.create_task(first.hold())
        standby = asyncio.create_task(second.acquire())
        await asyncio.sleep(LEASE_S + 1)  # longer than a lease: the renewals keep it
        assert not standby.done() and not second.is_leader
        holding.cancel()  # the leader dies without releasing (SIGKILL)
        died = time.monotonic()
        await asyncio.wait_for(standby, LEASE_S + 3 * RETRY_S + 2)
        waited = time.monotonic() - died
        assert second.is_leader
        assert LEASE_S - 2 * RETRY_S <= waited, f"took over after {waited:.1f}s, before the lease could expire"
        lease = await kube.get("Lease", "default", first.config.name)
        assert lease["spec"]["holderIdentity"] == "second"
        assert lease["spec"]["leaseTransitions"] == 1

    run(cluster, scenario)


def test_a_released_lease_is_taken_at_once(cluster: Any) -> None:
    async def scenario(kube: Kube, elector: Callable[[str], LeaderElector]) -> None:
        first, second = elector("first"), elector("second")
        await first.acquire()
        standby = asyncio.create_task(second.acquire())
        await asyncio.sleep(2 * RETRY_S)
        await first.release()
        released = time.monotonic()
        await asyncio.wait_for(standby, LEASE_S)
        assert time.monotonic() - released < 3 * RETRY_S + 1
        assert not first.is_leader and second.is_leader

    run(cluster, scenario)


def test_a_leader_that_cannot_renew_gives_up_before_the_lease_expires(cluster: Any) -> None:
    async def scenario(kube: Kube, elector: Callable[[str], LeaderElector]) -> None:
        leader = elector("leader")
        await leader.acquire()
        assert metrics.LEADER._value.get() == 1
        holding = asyncio.create_task(leader.hold())
        # Another replica's write wins the Lease (as after a partition): every renewal now fails.
        lease = await kube.get("Lease", "default", leader.config.name)
        lease["spec"]["holderIdentity"] = "intruder"
        await kube.replace(lease)
        with pytest.raises(LostLeadership):
            await asyncio.wait_for(holding, RENEW_S + 3 * RETRY_S + 2)
        assert time.monotonic() - leader.renewed_at < LEASE_S, \
            "the leader kept going past the point a standby may take its Lease over"
        assert not leader.is_leader and metrics.LEADER._value.get() == 0

    run(cluster, scenario)
