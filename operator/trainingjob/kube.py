"""The few Kubernetes API calls the TrainingJob controller makes, as coroutines.

The official client is synchronous; its calls run in a small thread pool so the event loop (and every
other job's reconcile) keeps going. Bodies go in and come out as plain dicts (``_preload_content=False``),
which skips the client's slow model (de)serialization.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import kubernetes
from kubernetes.client.exceptions import ApiException

from modelfleet_operator import GROUP, VERSION
from modelfleet_operator.trainingjob import kueue

PLURAL = "trainingjobs"
MERGE_PATCH = "application/merge-patch+json"
LOG_TIMEOUT_SECONDS = 3.0
LOG_LINES = 20
REQUEST_TIMEOUT_SECONDS = 30.0

Obj = dict[str, Any]


class Conflict(Exception):
    """The job changed since it was read (optimistic concurrency); reconcile again."""


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, workers: int = 64) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls, workers: int = 64) -> "Kube":
        """In-cluster credentials inside a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = workers
        return cls(kubernetes.client.ApiClient(configuration), workers)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_SECONDS)
        response = await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))
        return json.loads(response.data) if kwargs.get("_preload_content") is False and response.data else response

    # --- TrainingJobs ----------------------------------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                                    _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def patch_job_status(self, namespace: str, name: str, status: Mapping[str, Any],
                               resource_version: str | None = None) -> Obj | None:
        """Merge-patch status; with resource_version, only if the job is unchanged since (else Conflict)."""
        body: Obj = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return await self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL,
                                    name, body, _content_type=MERGE_PATCH, _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from None
            if error.status == 404:
                return None
            raise

    async def delete_job(self, namespace: str, name: str) -> None:
        await self._ignore(404, self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                           propagation_policy="Background", _preload_content=False)

    # --- children --------------------------------------------------------------------------------------------------

    async def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        result = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False)
        return list(result.get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Create a namespaced child; True if created, False if it already exists (409 is expected after a restart)."""
        creators = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        try:
            await self._call(creators[obj["kind"]], obj["metadata"]["namespace"], obj, _preload_content=False)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    async def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A child as stored, or None when there is none."""
        readers = {
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
        }
        try:
            return await self._call(readers[kind], name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._ignore(404, self.core.delete_namespaced_pod, name, namespace, _preload_content=False)

    async def pod_log_tail(self, namespace: str, name: str, container: str) -> list[str]:
        """The last lines of a container's log, or [] when they cannot be read (no kubelet, node gone...)."""
        try:
            text = await asyncio.wait_for(self._call(
                self.core.read_namespaced_pod_log, name, namespace, container=container, tail_lines=LOG_LINES,
                _request_timeout=LOG_TIMEOUT_SECONDS), LOG_TIMEOUT_SECONDS + 1)
        except Exception:  # noqa: BLE001 - logs are best effort by design
            return []
        return [line[:500] for line in str(text or "").splitlines()[-LOG_LINES:]]

    # --- Kueue (kueue.py) -------------------------------------------------------------------------------------------

    async def get_workload(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._call(self.custom.get_namespaced_custom_object, kueue.GROUP, kueue.VERSION, namespace,
                                    kueue.PLURAL, name, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def create_workload(self, workload: Mapping[str, Any]) -> Obj | None:
        """Create it; when it exists already (an earlier pass made it), return what is stored."""
        meta = workload["metadata"]
        try:
            return await self._call(self.custom.create_namespaced_custom_object, kueue.GROUP, kueue.VERSION,
                                    meta["namespace"], kueue.PLURAL, workload, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
        return await self.get_workload(meta["namespace"], meta["name"])

    async def patch_workload_status(self, workload: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch status (a conditions list replaces Kueue's, so only if unchanged since read: else Conflict)."""
        meta = workload["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": dict(status)}
        try:
            await self._call(self.custom.patch_namespaced_custom_object_status, kueue.GROUP, kueue.VERSION,
                             meta["namespace"], kueue.PLURAL, meta["name"], body, _content_type=MERGE_PATCH,
                             _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from None
            if error.status != 404:
                raise

    async def get_resource_flavor(self, name: str) -> Obj | None:
        try:
            return await self._call(self.custom.get_cluster_custom_object, kueue.GROUP, kueue.VERSION,
                                    "resourceflavors", name, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def _ignore(self, status: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            await self._call(fn, *args, **kwargs)
        except ApiException as error:
            if error.status != status:
                raise


def api_error_message(error: ApiException) -> str:
    """The API server's own message (e.g. a Pod Security violation), not the whole HTTP dump."""
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError):
        return str(error.reason)
