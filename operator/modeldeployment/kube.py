"""A small synchronous Kubernetes client over plain dicts: server-side apply, get, list, delete, status patches,
API discovery and pod logs. Built on the official client's ApiClient (auth, TLS), minus its typed models, so the
pure render/status functions work on exactly the JSON the API server speaks.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "modelfleet-operator"
TIMEOUT_SECONDS = 30

# kind -> (API path prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "Event": ("/api/v1", "events"),
    "Node": ("/api/v1", "nodes"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects"),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors"),
    "ModelDeployment": ("/apis/modelfleet.dev/v1alpha1", "modeldeployments"),
    "TrainingJob": ("/apis/modelfleet.dev/v1alpha1", "trainingjobs"),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions"),
}


def is_not_found(error: Exception) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def namespace_terminating(error: Exception) -> bool:
    """A refusal to create anything in a namespace that is being deleted."""
    return isinstance(error, ApiException) and error.status == 403 and "NamespaceTerminating" in str(error.body or "")


def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    parts = [prefix] + (["namespaces", namespace] if namespace else []) + [plural] + ([name] if name else [])
    return "/".join(parts) + (f"/{sub}" if sub else "")


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    def request(self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = TIMEOUT_SECONDS,
                accept: str = "application/json") -> Any:
        """One API call; returns the decoded JSON (or text for non-JSON answers); raises ApiException otherwise."""
        serialized = self.api.param_serialize(
            method=method, resource_path=url, query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params={"Accept": accept, "Content-Type": content_type}, body=body, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized, _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        if not data:
            return None
        return json.loads(data) if accept == "application/json" else data.decode(errors="replace")

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path(kind, namespace, name))
        except ApiException as error:
            if is_not_found(error):
                return None
            raise

    def list_objects(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        result = self.request("GET", path(kind, namespace),
                              query={"labelSelector": label_selector, "fieldSelector": field_selector})
        return result.get("items") or []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates or updates, and drops fields this manager set before but no longer sets."""
        meta = obj["metadata"]
        return self.request("PATCH", path(obj["kind"], meta.get("namespace"), meta["name"]), body=obj,
                            query={"fieldManager": FIELD_MANAGER, "force": "true"},
                            content_type="application/apply-patch+yaml")

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete (only the object with `uid`, when given); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path(kind, namespace, name), body=body)
            return True
        except ApiException as error:
            if is_not_found(error):
                return False
            raise

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path(kind, namespace, name, "status"), body={"status": status},
                            content_type="application/merge-patch+json")

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the object (for the one field the operator changes outside server-side apply)."""
        return self.request("PATCH", path(kind, namespace, name), body=body,
                            content_type="application/merge-patch+json")

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path(obj["kind"], obj["metadata"].get("namespace")), body=obj)

    def crd_established(self, name: str) -> bool:
        """Is the CustomResourceDefinition `name` installed, established and not being deleted?"""
        crd = self.get("CustomResourceDefinition", None, name)
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            return False
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    def log_tail(self, namespace: str, pod: str, container: str, lines: int, previous: bool) -> list[str]:
        """The container's last log lines; [] when they cannot be read quickly (no kubelet, node gone, ...)."""
        try:
            text = self.request("GET", path("Pod", namespace, pod, "log"), accept="*/*", timeout=3, query={
                "container": container, "tailLines": lines, "previous": "true" if previous else None})
        except Exception:  # logs are a nicety: never let them fail a reconcile
            return []
        return str(text or "").splitlines()[-lines:]


_lock = threading.Lock()
_kube: Kube | None = None


def shared() -> Kube:
    """The process-wide client: in-cluster credentials inside a pod, else the kubeconfig (KUBECONFIG)."""
    global _kube
    with _lock:
        if _kube is None:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
            _kube = Kube(client.ApiClient(configuration))
        return _kube
