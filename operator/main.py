"""Entry point: `modelfleet operator` (or `python -m modelfleet_operator.main`).

Registers the TrainingJob and ModelDeployment handlers, serves /metrics and a liveness endpoint,
and runs kopf against the kubeconfig in use (in-cluster config inside a pod).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelfleet_operator.config import OperatorConfig, bind_address

# Importing the controllers registers their handlers with kopf.
from modelfleet_operator import modeldeployment, trainingjob  # noqa: F401  (imported for registration)

FINALIZER = "modelfleet.dev/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelfleet.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelfleet.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    settings.batching.worker_limit = 64


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


def liveness_endpoint(config: OperatorConfig) -> str:
    host = config.health_address
    host = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    return f"http://{host}:{config.health_port}/healthz"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = with_flags(OperatorConfig.from_env(), args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handled pod/ConfigMap event at INFO: too much during bursts
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    start_http_server(config.metrics_port, addr=config.metrics_address)
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness_endpoint(config),
    ))
    return 0
