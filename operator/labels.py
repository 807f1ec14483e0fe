"""Labels and annotations that the operator puts on every child object (see docs/design)."""

from __future__ import annotations

NAME = "app.kubernetes.io/name"
MANAGED_BY = "app.kubernetes.io/managed-by"
TRAININGJOB = "modelfleet.dev/trainingjob"
MODELDEPLOYMENT = "modelfleet.dev/modeldeployment"
ROLE = "modelfleet.dev/role"
NODE_RANK = "modelfleet.dev/node-rank"

MANAGER = "modelfleet"


def trainer_labels(job: str) -> dict[str, str]:
    return {NAME: "modelfleet-trainer", MANAGED_BY: MANAGER, TRAININGJOB: job, ROLE: "trainer"}


def runtime_labels(deployment: str) -> dict[str, str]:
    return {NAME: "modelfleet-runtime", MANAGED_BY: MANAGER, MODELDEPLOYMENT: deployment, ROLE: "runtime"}


def selector(labels: dict[str, str]) -> str:
    """A label selector string, for list calls."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
