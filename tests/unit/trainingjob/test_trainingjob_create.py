"""Creating a job's children: which API server answers are a failure to report in status (pure of the cluster)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator.trainingjob.reconcile import _create_all


class Refusing:
    """create_if_absent answers with one error per object name (True, a new object, otherwise)."""

    def __init__(self, errors: dict[str, ApiException]) -> None:
        self.errors = errors

    async def create_if_absent(self, obj: dict[str, Any]) -> bool:
        if obj["metadata"]["name"] in self.errors:
            raise self.errors[obj["metadata"]["name"]]
        return True


def refusal(status: int, message: str, causes: list[dict[str, str]] | None = None) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = json.dumps({"kind": "Status", "message": message, "reason": "Forbidden", "code": status,
                             "details": {"causes": causes or []}})
    return error


def pod(name: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "team"}}


def test_a_namespace_being_deleted_is_no_failure_but_a_pod_security_refusal_is() -> None:
    terminating = refusal(403, "unable to create new content in namespace team because it is being terminated",
                          [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}])
    made, failure = asyncio.run(_create_all(Refusing({"a": terminating}), [pod("a"), pod("b")]))
    assert made == [False, True] and failure is None

    security = refusal(403, 'pods "a" is forbidden: violates PodSecurity "restricted:latest"')
    made, failure = asyncio.run(_create_all(Refusing({"a": security}), [pod("a"), pod("b")]))
    assert failure is not None and not failure.invalid and "violates PodSecurity" in failure.message
