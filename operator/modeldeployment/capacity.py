"""GPU-aware rollout: is there room for a surge pod, and which rolling-update strategy follows from that.

A rolling update with maxSurge > 0 first creates a new pod; when every GPU is taken that pod stays Pending and,
with maxUnavailable 0, the rollout hangs forever. So before rendering we look for a schedulable node with enough
free GPUs (allocatable minus the requests of the pods bound to it) and, when there is none, roll one pod at a
time instead: maxSurge 0, maxUnavailable 1.

Approximations (documented): required node affinity and pod (anti-)affinity are not evaluated; nodeSelector,
taints/tolerations, cordoned and NotReady nodes are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.modeldeployment.spec import GPU, Rollout

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Strategy:
    max_surge: int | str
    max_unavailable: int | str
    without_surge: bool = False
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        return {"maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable,
                "withoutSurge": self.without_surge, "message": self.message}


def pod_gpus(pod: dict[str, Any]) -> int:
    """GPUs a pod holds: the sum over its containers (requests, else limits), or the largest init container's."""
    spec = pod.get("spec") or {}

    def gpus(container: dict[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(GPU, (resources.get("limits") or {}).get(GPU, 0))
        return int(str(value))

    main = sum(gpus(c) for c in spec.get("containers") or [])
    init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def free_gpus(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Free GPUs per node name: allocatable minus what the non-terminal pods bound to the node hold."""
    free = {
        node["metadata"]["name"]: int(str(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0)))
        for node in nodes
    }
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node in free and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            free[node] -= pod_gpus(pod)
    return free


def schedulable(node: dict[str, Any], node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    """Could a pod with this nodeSelector and these tolerations be placed on the node (GPUs aside)?"""
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


def surge_fits(gpus: int, nodes: list[dict[str, Any]], pods: list[dict[str, Any]],
               node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    """True when some schedulable node has `gpus` free GPUs for one more pod."""
    free = free_gpus(nodes, pods)
    return any(free[n["metadata"]["name"]] >= gpus for n in nodes if schedulable(n, node_selector, tolerations))


def needs_capacity_check(rollout: Rollout, gpus_per_pod: int) -> bool:
    """Only a GPU-aware rollout that would surge pods asking for GPUs depends on free capacity."""
    return rollout.gpu_aware and rollout.surges and gpus_per_pod > 0


def choose_strategy(rollout: Rollout, gpus_per_pod: int, room_for_surge: bool) -> Strategy:
    """The Deployment's rolling-update parameters (`room_for_surge` matters only when a capacity check is needed)."""
    if not needs_capacity_check(rollout, gpus_per_pod) or room_for_surge:
        return Strategy(rollout.max_surge, rollout.max_unavailable)
    unavailable = rollout.max_unavailable if str(rollout.max_unavailable) not in ("0", "0%") else 1
    return Strategy(
        0, unavailable, without_surge=True,
        message=(f"no schedulable node has {gpus_per_pod} free {GPU} for a surge pod: "
                 f"rolling with maxSurge 0 and maxUnavailable {unavailable}"),
    )


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
