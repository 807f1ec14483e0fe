"""Room for a surge pod, and the rolling-update strategy that follows from `spec.rollout.whenNoRoom`.

A rolling update with maxSurge > 0 first creates a new pod. When no node has room for it (its GPUs, CPU or memory
requests are taken) that pod stays Pending and, with maxUnavailable 0, the old pods keep serving until room appears:
`whenNoRoom: Wait` (the default) keeps exactly that, and the status says the rollout waits for room. `Replace`
trades availability for progress: when no schedulable node has room for one more pod (allocatable minus the
requests of the pods bound to it, for every resource the pod requests), it renders maxSurge 0 and maxUnavailable 1,
so old pods are stopped before their replacements start: with one replica that is downtime for a model load.

The decision is made while the Deployment is settled (no rollout in flight): during a rollout the surge pod itself
takes the room, and re-deciding then would flip a surging rollout into a replacing one.

Approximations (documented): required node affinity and pod (anti-)affinity are not evaluated; nodeSelector,
taints/tolerations, cordoned and NotReady nodes are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from modelfleet_operator.modeldeployment.spec import GPU, Rollout

TERMINAL_PHASES = ("Succeeded", "Failed")
WAIT, REPLACE = "Wait", "Replace"

Requests = dict[str, Decimal]


@dataclass(frozen=True)
class Strategy:
    max_surge: int | str
    max_unavailable: int | str
    without_surge: bool = False
    message: str = ""
    when_no_room: str = WAIT

    def to_status(self) -> dict[str, Any]:
        return {"maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable,
                "withoutSurge": self.without_surge, "whenNoRoom": self.when_no_room, "message": self.message}


def container_requests(resources: Mapping[str, Any]) -> Requests:
    """What the scheduler counts for a container: its requests, where a resource only has a limit, the limit."""
    limits = resources.get("limits") or {}
    requests = {**limits, **(resources.get("requests") or {})}
    return {name: parse_quantity(value) for name, value in requests.items()}


def pod_requests(pod: dict[str, Any]) -> Requests:
    """A pod's requests: the sum over its containers, or per resource the largest init container's if larger."""
    spec = pod.get("spec") or {}
    total: Requests = {}
    for container in spec.get("containers") or []:
        for name, value in container_requests(container.get("resources") or {}).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for name, value in container_requests(container.get("resources") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    return total


def pod_gpus(pod: dict[str, Any]) -> int:
    """GPUs a pod holds."""
    return int(pod_requests(pod).get(GPU, 0))


def free_resources(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> dict[str, Requests]:
    """Free resources per node name: allocatable minus what the non-terminal pods bound to the node request."""
    free = {
        node["metadata"]["name"]: {name: parse_quantity(value) for name, value in
                                   (((node.get("status") or {}).get("allocatable")) or {}).items()}
        for node in nodes
    }
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node in free and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            for name, value in pod_requests(pod).items():
                free[node][name] = free[node].get(name, Decimal(0)) - value
    return free


def free_gpus(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Free GPUs per node name."""
    return {name: int(free.get(GPU, 0)) for name, free in free_resources(nodes, pods).items()}


def schedulable(node: dict[str, Any], node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    """Could a pod with this nodeSelector and these tolerations be placed on the node (resources aside)?"""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(key) != value for key, value in node_selector.items()):
        return False
    return all(
        _tolerated(taint, tolerations)
        for taint in (node.get("spec") or {}).get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def surge_fits(requests: Requests, nodes: list[dict[str, Any]], pods: list[dict[str, Any]],
               node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    """True when some schedulable node has room for every resource of one more pod with `requests`."""
    free = free_resources(nodes, pods)
    return any(
        all(free[n["metadata"]["name"]].get(name, Decimal(0)) >= value for name, value in requests.items() if value)
        for n in nodes if schedulable(n, node_selector, tolerations)
    )


def needs_capacity_check(rollout: Rollout, requests: Requests) -> bool:
    """Only a Replace policy on a rollout that would surge pods requesting resources depends on free room."""
    return rollout.when_no_room == REPLACE and rollout.surges and any(requests.values())


def choose_strategy(rollout: Rollout, requests: Requests, room_for_surge: bool) -> Strategy:
    """The Deployment's rolling-update parameters (`room_for_surge` matters only when a capacity check is needed)."""
    if not needs_capacity_check(rollout, requests) or room_for_surge:
        return Strategy(rollout.max_surge, rollout.max_unavailable, when_no_room=rollout.when_no_room)
    unavailable = rollout.max_unavailable if str(rollout.max_unavailable) not in ("0", "0%") else 1
    wanted = ", ".join(f"{name} {_text(value)}" for name, value in sorted(requests.items()) if value)
    return Strategy(
        0, unavailable, without_surge=True, when_no_room=REPLACE,
        message=(f"no schedulable node has room for a surge pod ({wanted}): spec.rollout.whenNoRoom is Replace, "
                 f"so pods are replaced in place with maxSurge 0 and maxUnavailable {unavailable} "
                 "(fewer replicas serve until the new ones are ready)"),
    )


def keep_decision(rollout: Rollout, old: Mapping[str, Any] | None) -> Strategy | None:
    """The strategy decided before, while a rollout is in flight (None: nothing decided before, or a policy change)."""
    if not old or old.get("whenNoRoom", WAIT) != rollout.when_no_room:
        return None
    if old.get("withoutSurge"):
        return Strategy(0, old["maxUnavailable"], True, old.get("message", ""), rollout.when_no_room)
    return Strategy(rollout.max_surge, rollout.max_unavailable, when_no_room=rollout.when_no_room)


def _text(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else f"{int(value * 1000)}m"


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False
