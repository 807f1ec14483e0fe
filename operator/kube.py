"""The operator's one Kubernetes client: asynchronous, over plain dicts.

Built on kubernetes_asyncio (aiohttp, the HTTP stack kopf already uses) for what a client library must get right:
kubeconfig and in-cluster credentials, token refresh, TLS. Its typed models are skipped: bodies go in and come out
as the JSON the API server speaks, which is what the pure render/status functions work on, and which avoids the
models' slow (de)serialization. Both controllers and the leader election share one instance (kopf's memo).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator import API_VERSION

FIELD_MANAGER = "modelfleet-operator"
TIMEOUT_SECONDS = 30.0
LOG_TIMEOUT_SECONDS = 3.0
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
CONFLICT = 409
NOT_FOUND = 404

Obj = dict[str, Any]

# kind -> (API path prefix, plural): every kind the operator reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Node": ("/api/v1", "nodes"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects"),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors"),
    "ModelDeployment": (f"/apis/{API_VERSION}", "modeldeployments"),
    "TrainingJob": (f"/apis/{API_VERSION}", "trainingjobs"),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),
    "ResourceFlavor": ("/apis/kueue.x-k8s.io/v1beta2", "resourceflavors"),
}


class Conflict(Exception):
    """The object changed since it was read (optimistic concurrency): read it again and retry."""


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == NOT_FOUND


def namespace_terminating(error: BaseException) -> bool:
    """A refusal to create anything in a namespace that is being deleted."""
    return isinstance(error, ApiException) and error.status == 403 and "NamespaceTerminating" in str(error.body or "")


def error_message(error: ApiException) -> str:
    """The API server's own message (e.g. a Pod Security violation), not the whole HTTP dump."""
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    parts = [prefix] + (["namespaces", namespace] if namespace else []) + [plural] + ([name] if name else [])
    return "/".join(parts) + (f"/{sub}" if sub else "")


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    @classmethod
    async def from_environment(cls, kubeconfig: str | None = None, pool_size: int = 64) -> Kube:
        """In-cluster credentials inside a pod, else the kubeconfig (`kubeconfig`, KUBECONFIG or ~/.kube/config)."""
        configuration = client.Configuration()
        try:
            if kubeconfig:
                raise config.ConfigException("a kubeconfig was named")
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    async def _send(self, method: str, url: str, body: Any, query: Mapping[str, Any] | None, content_type: str,
                    timeout: float | None, accept: str) -> Any:
        headers = {"Accept": accept, "Content-Type": content_type}
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        await self.api.update_params_for_auth(headers, params, ["BearerToken"])
        return await self.api.rest_client.request(method, self.api.configuration.host + url, query_params=params,
                                                  headers=headers, body=body, _preload_content=True,
                                                  _request_timeout=timeout)

    async def request(self, method: str, url: str, body: Any = None, query: Mapping[str, Any] | None = None,
                      content_type: str = "application/json", timeout: float = TIMEOUT_SECONDS,
                      accept: str = "application/json") -> Any:
        """One API call: the decoded JSON (text for non-JSON answers); raises ApiException on a non-2xx answer."""
        try:
            response = await self._send(method, url, body, query, content_type, timeout, accept)
        except ApiException as error:
            if isinstance(error.body, bytes):
                error.body = error.body.decode(errors="replace")
            raise
        if not response.data:
            return None
        return json.loads(response.data) if accept == "application/json" else response.data.decode(errors="replace")

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self.request("GET", path(kind, namespace, name))
        except ApiException as error:
            if is_not_found(error):
                return None
            raise

    async def list_objects(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                           field_selector: str | None = None) -> list[Obj]:
        result = await self.request("GET", path(kind, namespace),
                                    query={"labelSelector": label_selector, "fieldSelector": field_selector})
        return result.get("items") or []

    async def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Server-side apply: creates or updates, and drops fields this manager set before but no longer sets."""
        meta = obj["metadata"]
        return await self.request("PATCH", path(obj["kind"], meta.get("namespace"), meta["name"]), body=obj,
                                  query={"fieldManager": FIELD_MANAGER, "force": "true"}, content_type=APPLY_PATCH)

    async def create(self, obj: Mapping[str, Any]) -> Obj:
        return await self.request("POST", path(obj["kind"], obj["metadata"].get("namespace")), body=obj,
                                  query={"fieldManager": FIELD_MANAGER})

    async def create_if_absent(self, obj: Mapping[str, Any]) -> bool:
        """True if created, False if an object of its name exists (expected after an operator restart)."""
        try:
            await self.create(obj)
            return True
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            raise

    async def replace(self, obj: Mapping[str, Any]) -> Obj:
        """PUT: succeeds only if `metadata.resourceVersion` is still current (else Conflict)."""
        meta = obj["metadata"]
        try:
            return await self.request("PUT", path(obj["kind"], meta.get("namespace"), meta["name"]), body=obj,
                                      query={"fieldManager": FIELD_MANAGER})
        except ApiException as error:
            if error.status == CONFLICT:
                raise Conflict(error_message(error)) from None
            raise

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete (only the object with `uid`, when given); False when it was already gone."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path(kind, namespace, name), body=body)
            return True
        except ApiException as error:
            if is_not_found(error):
                return False
            raise

    async def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        """A JSON merge patch of the object (for the one field the operator changes outside server-side apply)."""
        return await self.request("PATCH", path(kind, namespace, name), body=body, content_type=MERGE_PATCH)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any],
                           resource_version: str | None = None) -> Obj | None:
        """Merge-patch status; with resource_version, only if the object is unchanged since (else Conflict).
        None when the object is gone."""
        body: Obj = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return await self.request("PATCH", path(kind, namespace, name, "status"), body=body,
                                      content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == CONFLICT:
                raise Conflict(error_message(error)) from None
            if is_not_found(error):
                return None
            raise

    async def crd_established(self, name: str) -> bool:
        """Is the CustomResourceDefinition `name` installed, established and not being deleted?"""
        crd = await self.get("CustomResourceDefinition", None, name)
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            return False
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int, previous: bool = False) -> list[str]:
        """The container's last log lines; [] when they cannot be read quickly (no kubelet, node gone, ...)."""
        try:
            text = await self.request("GET", path("Pod", namespace, pod, "log"), accept="*/*",
                                      timeout=LOG_TIMEOUT_SECONDS, query={
                                          "container": container, "tailLines": lines,
                                          "previous": "true" if previous else None})
        except Exception:  # noqa: BLE001 - logs are a nicety: never let them fail a reconcile
            return []
        return [line[:500] for line in str(text or "").splitlines()[-lines:]]
