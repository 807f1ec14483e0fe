"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics (leaderelection.LeaderElector).

- A candidate takes the Lease when it is free, released, or expired: its record has not changed for
  `leaseDurationSeconds` as measured on the candidate's own monotonic clock since it last saw it change (so the
  machines' clocks need not agree).
- The leader renews every `retry_period`; a leader that has not renewed for `renew_deadline` (< lease duration)
  has lost: the caller must stop writing at once (main.py exits the process), before any standby can consider
  the Lease expired.
- A leader that stops cleanly releases the Lease, so a standby takes over within one retry period.
- BackgroundElection runs it on a thread, event loop and connections of its own (main.py uses it), so that the
  controllers' work cannot delay the renewals.
Writes use the Lease's resourceVersion, so two candidates can never both win the same term.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator import metrics
from modelfleet_operator.kube import CONFLICT, Conflict, Kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError("leader election: need lease duration > renew deadline > retry period > 0")


class LostLeadership(Exception):
    """The Lease could not be renewed within the renew deadline."""


def _micro_time(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        self._observed: tuple[str, float] | None = None  # (resourceVersion seen, monotonic time first seen)
        self._renewed_at = 0.0
        self._leader: str | None = None
        self.is_leader = False

    @property
    def renewed_at(self) -> float:
        """time.monotonic() of the last successful acquire or renewal."""
        return self._renewed_at

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        while True:
            try:
                if await self._try_acquire_or_renew():
                    break
            except Exception as error:  # noqa: BLE001 - an API hiccup (or a missing grant, logged) is retried
                log.warning("could not bid for the leader lease %s/%s: %s", self.config.namespace, self.config.name,
                            error)
            await asyncio.sleep(self.config.retry_period)
        self._set_leader(True)

    async def hold(self) -> None:
        """Renew until it fails for `renew_deadline`; then raise LostLeadership (never returns otherwise)."""
        while True:
            await asyncio.sleep(self.config.retry_period)
            # As client-go: one attempt may take whatever is left of the renew deadline (a loaded API server).
            left = self.config.renew_deadline - (time.monotonic() - self._renewed_at)
            try:
                renewed = await asyncio.wait_for(self._try_acquire_or_renew(), max(left, self.config.retry_period))
            except Exception as error:  # noqa: BLE001 - any failure to renew counts against the deadline
                log.warning("could not renew the leader lease: %r", error)
                renewed = False
            if not renewed and time.monotonic() - self._renewed_at > self.config.renew_deadline:
                self._set_leader(False)
                raise LostLeadership(f"lease {self.config.namespace}/{self.config.name} not renewed for "
                                     f"{self.config.renew_deadline:.0f}s")

    async def release(self) -> None:
        """Give the Lease up (a clean shutdown), so a standby need not wait for it to expire."""
        if not self.is_leader:
            return
        self._set_leader(False)
        lease = await self.kube.get("Lease", self.config.namespace, self.config.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.config.identity:
            return
        lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                         "renewTime": _micro_time()}
        try:
            await self.kube.replace(lease)
        except (Conflict, ApiException) as error:
            log.warning("could not release the leader lease: %s", error)

    async def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now_mono, now = time.monotonic(), dt.datetime.now(dt.timezone.utc)
        lease = await self.kube.get("Lease", cfg.namespace, cfg.name)
        mine = {"holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": _micro_time(now), "renewTime": _micro_time(now), "leaseTransitions": 0}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": mine}
            try:
                await self.kube.create(body)
            except ApiException as error:
                if error.status == CONFLICT:
                    return False  # someone else created it first
                raise
            return self._won()
        spec: dict[str, Any] = lease.get("spec") or {}
        version = lease["metadata"]["resourceVersion"]
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now_mono)
        holder = spec.get("holderIdentity") or ""
        self._note_leader(holder)
        expires = self._observed[1] + float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and now_mono < expires:
            return False
        if holder == cfg.identity:
            mine["acquireTime"] = spec.get("acquireTime") or mine["acquireTime"]
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
        else:
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = {**spec, **mine}
        try:
            await self.kube.replace(lease)
        except Conflict:
            return False  # another candidate wrote it first
        return self._won()

    def _won(self) -> bool:
        self._renewed_at = time.monotonic()
        self._note_leader(self.config.identity)
        return True

    def _note_leader(self, holder: str) -> None:
        if holder != self._leader:
            self._leader = holder
            if holder and holder != self.config.identity:
                log.info("standing by: %s holds lease %s/%s", holder, self.config.namespace, self.config.name)

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        metrics.LEADER.set(1 if leader else 0)
        if leader:
            log.info("became leader: %s holds lease %s/%s", self.config.identity, self.config.namespace,
                     self.config.name)


class BackgroundElection:
    """A LeaderElector on a thread and event loop of its own, with its own connections (as client-go runs it in a
    goroutine): a burst of controller work that keeps the main event loop busy must not delay the renewals. Losing
    the Lease ends the process at once, from this thread, so that it stops writing before a standby takes over."""

    def __init__(self, config: LeaseConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._elector: LeaderElector | None = None
        self._kube: Kube | None = None
        self._holding: asyncio.Task[None] | None = None
        threading.Thread(target=self._loop.run_forever, name="leader-election", daemon=True).start()

    @property
    def is_leader(self) -> bool:
        return self._elector is not None and self._elector.is_leader

    async def acquire(self) -> None:
        """Return once this process holds the Lease; it is renewed in the background from then on."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._acquire(), self._loop))

    async def release(self) -> None:
        """Stop renewing and give the Lease up (a clean shutdown)."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._release(), self._loop))

    async def _acquire(self) -> None:
        self._kube = await Kube.from_environment(pool_size=2)
        self._elector = LeaderElector(self._kube, self.config)
        await self._elector.acquire()
        self._holding = asyncio.create_task(self._hold(self._elector))

    @staticmethod
    async def _hold(elector: LeaderElector) -> None:
        try:
            await elector.hold()
        except LostLeadership as error:
            log.error("lost leadership (%s); exiting so that only one replica writes", error)
            logging.shutdown()
            os._exit(1)

    async def _release(self) -> None:
        if self._holding is not None:
            self._holding.cancel()
            await asyncio.gather(self._holding, return_exceptions=True)
        if self._elector is not None:
            await self._elector.release()
        if self._kube is not None:
            await self._kube.close()
