"""Entry point: `modelfleet operator` (or `python -m modelfleet_operator.main`).

Serves /metrics and /healthz at once, waits to be elected leader (a coordination.k8s.io Lease, renewed on a thread
of its own; see leader.py),
then runs kopf with both controllers. Standby replicas run no handler and write nothing but their bids for the
Lease. A leader that cannot renew its Lease exits at once (its pod restarts and stands by), so two replicas never
write at the same time; a leader that is stopped (SIGTERM) releases the Lease, so a standby takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import sys
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from modelfleet_operator.config import OperatorConfig, bind_address
from modelfleet_operator.controller import Controller
from modelfleet_operator.kube import Kube
from modelfleet_operator.labels import MANAGED_BY, MANAGER, MODELDEPLOYMENT, TRAININGJOB
from modelfleet_operator.leader import BackgroundElection, LeaseConfig
# Importing the controllers' handlers registers them with kopf.
from modelfleet_operator.modeldeployment import reconcile as mdreconcile
from modelfleet_operator.modeldeployment.handlers import PHASES as MD_PHASES, Index
from modelfleet_operator.trainingjob import kueue, reconcile as tjreconcile
from modelfleet_operator.trainingjob.handlers import PHASES as TJ_PHASES

log = logging.getLogger("modelfleet_operator")

FINALIZER = "modelfleet.dev/finalizer"
TRAININGJOB_CONCURRENCY = 64
MODELDEPLOYMENT_CONCURRENCY = 16
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# Server-side label selectors for every watch of children: the API server sends the operator only its own
# children, so its memory and latency do not grow with the other objects in the cluster (kopf's `labels=` filters
# on the handlers are applied client-side, after every object has been received).
CHILD_SELECTORS = {
    ("v1", "pods"): f"{MANAGED_BY}={MANAGER}",
    ("v1", "configmaps"): f"{MANAGED_BY}={MANAGER},{TRAININGJOB}",
    ("apps", "deployments"): f"{MANAGED_BY}={MANAGER},{MODELDEPLOYMENT}",
    ("autoscaling", "horizontalpodautoscalers"): f"{MANAGED_BY}={MANAGER},{MODELDEPLOYMENT}",
    (kueue.GROUP, kueue.PLURAL): f"{MANAGED_BY}={MANAGER},{TRAININGJOB}",
}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelfleet.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelfleet.dev", key="last-handled-configuration"
    )
    settings.posting.enabled = False  # one Events path for both kinds: operator/events.py
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    settings.queueing.worker_limit = 64
    for resource, selector in CHILD_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector


def memo_for(kube: Kube, config: OperatorConfig) -> kopf.Memo:
    """Everything the handlers share, built once per (elected) run: the client, the settings, both controllers."""
    tj = tjreconcile.Context(kube, config)
    return kopf.Memo(
        kube=kube,
        config=config,
        trainingjob_context=tj,
        trainingjobs=Controller(tjreconcile.KIND, TJ_PHASES, lambda ns, name: tjreconcile.reconcile(tj, ns, name),
                                TRAININGJOB_CONCURRENCY),
        modeldeployment_index=Index(),
        modeldeployments=Controller(mdreconcile.KIND, MD_PHASES,
                                    lambda ns, name: mdreconcile.reconcile(kube, ns, name, config),
                                    MODELDEPLOYMENT_CONCURRENCY),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelfleet operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--metrics-port", type=int, help="port for Prometheus /metrics (env MODELFLEET_METRICS_PORT)")
    parser.add_argument("--health-port", type=int, help="port for the /healthz liveness probe (env MODELFLEET_HEALTH_PORT)")
    parser.add_argument("--metrics-address", help="IP address /metrics listens on (env MODELFLEET_METRICS_ADDRESS, "
                                                  "default 0.0.0.0)")
    parser.add_argument("--health-address", help="IP address /healthz listens on (env MODELFLEET_HEALTH_ADDRESS, "
                                                 "default 0.0.0.0)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def with_flags(config: OperatorConfig, args: argparse.Namespace) -> OperatorConfig:
    """The environment's configuration, with the endpoint flags given on the command line taking precedence."""
    return dataclasses.replace(
        config, metrics_port=args.metrics_port or config.metrics_port, health_port=args.health_port or config.health_port,
        metrics_address=bind_address("--metrics-address", args.metrics_address or config.metrics_address),
        health_address=bind_address("--health-address", args.health_address or config.health_address))


def lease_config(config: OperatorConfig) -> LeaseConfig:
    namespace = config.leader_election_namespace
    if not namespace:
        try:
            with open(SA_NAMESPACE_FILE) as file:
                namespace = file.read().strip()
        except OSError:
            namespace = "default"
    identity = config.leader_election_identity or f"{socket.gethostname()}-{os.getpid()}"
    return LeaseConfig(namespace, config.leader_election_lease, identity)


async def serve_health(address: str, port: int, elector: BackgroundElection | None) -> web.AppRunner:
    """/healthz answers 200 while the process runs, leader or standby (the body says which)."""
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok: " + ("leader" if elector is None or elector.is_leader else "standby"))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner


async def run(args: argparse.Namespace, config: OperatorConfig) -> int:
    election = BackgroundElection(lease_config(config)) if config.leader_election else None
    health = await serve_health(config.health_address, config.health_port, election)
    kube = await Kube.from_environment()
    try:
        if election:
            await election.acquire()
        await kopf.operator(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace,
                            memo=memo_for(kube, config))
        # kopf has stopped (SIGTERM/SIGINT): hand the Lease over at once rather than let it expire.
        if election:
            await election.release()
        return 0
    finally:
        await health.cleanup()
        await kube.close()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = with_flags(OperatorConfig.from_env(), args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handled pod/ConfigMap event at INFO: too much during bursts
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    start_http_server(config.metrics_port, addr=config.metrics_address)
    return asyncio.run(run(args, config))
