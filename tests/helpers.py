"""Small helpers shared by the test suite."""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy and return that; fail with the last value on timeout.
    Exceptions raised by `fn` count as "not yet" until the deadline, then propagate."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


# Scheduling that puts a pod on one of kwok's fake nodes (which run nothing: kwok fakes the pod's status) rather
# than on the real node: for tests of scheduling and of the controllers' reactions to pod states.
ON_FAKE_NODES: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def restricted_pod(name: str, limits: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A minimal pod that passes Pod Security "restricted", for kwok's fake nodes."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            **ON_FAKE_NODES,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": limits or {}}, "securityContext": RESTRICTED_CONTAINER_SECURITY}],
        },
    }
