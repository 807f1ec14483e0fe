"""The security contexts every pod the operator renders runs with: Pod Security "restricted", as the
image's own non-root user.

The uid is the one images/*.Dockerfile create (`USER 65532:65532`), so files a trainer pod writes to a
shared volume are owned by the same uid as the runtime pod that reads them, and a hostPath volume (to which
fsGroup does not apply) is writable by every pod.
"""

from __future__ import annotations

from typing import Any

WORKLOAD_UID = 65532


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID, "runAsGroup": WORKLOAD_UID, "fsGroup": WORKLOAD_UID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context(read_only_root: bool = False) -> dict[str, Any]:
    context: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                               "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if read_only_root:
        context["readOnlyRootFilesystem"] = True
    return context
