"""prometheus-adapter (built from its Go module, hack/build-binaries.sh) as a host process serving the custom
metrics API (custom.metrics.k8s.io) from a Prometheus (prometheus.py), so that HorizontalPodAutoscalers scale
on the runtime's serving metrics.

The API server reaches it as an aggregated API: an APIService names a Service without selector whose
EndpointSlice points at the bridge's gateway address, where the adapter listens (the API server connects to
the endpoint directly: --enable-aggregator-routing). The API server calls it with the front proxy's client
certificate (pki.py) and the caller's name in request headers; the adapter checks both against the
`extension-apiserver-authentication` ConfigMap and asks the API server whether that caller may read the
metric (SubjectAccessReview). kube-controller-manager's HPA controller is such a caller.

The runtime's gauges that ModelDeployments scale on (vllm:num_requests_waiting, vllm:num_requests_running,
vllm:kv_cache_usage_perc), with `namespace` and `pod` labels, are exposed under their own names as pods metrics: `kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/vllm:num_requests_waiting`.
Needs the real node (the bridge).
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes.utils.quantity import parse_quantity

from modelfleet.localcluster import hostnet, processes
from modelfleet.localcluster.pki import sign_serving

if TYPE_CHECKING:
    from modelfleet.localcluster.cluster import LocalCluster
    from modelfleet.localcluster.prometheus import Prometheus

BINARY = "prometheus-adapter"
USER = "modelfleet-metrics-adapter"  # the CN of pki.CLIENTS["metrics-adapter"]
NAMESPACE = "kube-system"
SERVICE = "modelfleet-metrics-adapter"
GROUP = "custom.metrics.k8s.io"
VERSIONS = ("v1beta2", "v1beta1")
MANAGER = "modelfleet.dev-local-cluster"


def adapter_rules() -> dict[str, Any]:
    """The adapter's config: the runtime's gauges that ModelDeployments scale on (spec.METRICS), summed per pod,
    under their own names."""
    return {"rules": [{
        "seriesQuery": '{__name__=~"vllm:(num_requests_waiting|num_requests_running|kv_cache_usage_perc)",'
                       'namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^(.*)$", "as": "${1}"},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }]}


def api_objects(port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The Service + EndpointSlice for the host process and the APIServices that route the group to it."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {
            "name": f"{SERVICE}-host", "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE, "endpointslice.kubernetes.io/managed-by": MANAGER}},
         "addressType": "IPv4", "endpoints": [{"addresses": [hostnet.GATEWAY], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        *({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": f"{version}.{GROUP}"},
           "spec": {"group": GROUP, "version": version, "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                    "caBundle": base64.b64encode(ca_bundle).decode(), "groupPriorityMinimum": 100,
                    "versionPriority": 200 - index * 100}}
          for index, version in enumerate(VERSIONS)),
    ]


def rbac_objects() -> list[dict[str, Any]]:
    """Delegated authentication and authorization (TokenReviews, SubjectAccessReviews, the authentication
    ConfigMap) and reading the objects its metrics describe."""
    name = "modelfleet:metrics-adapter"
    subject = [{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}]
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["namespaces", "pods", "services"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}, "subjects": subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": f"{name}:auth-delegator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}:auth-reader", "namespace": "kube-system"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
         "subjects": subject},
    ]


class MetricsAdapter:
    """The adapter for `cluster` (up, with its real node) reading from `prometheus` (started)."""

    def __init__(self, cluster: LocalCluster, prometheus: Prometheus, directory: Path | None = None,
                 relist_interval: str = "5s") -> None:
        self.cluster = cluster
        self.prometheus = prometheus
        self.directory = Path(directory or cluster.directory / "metrics-adapter")
        self.relist_interval = relist_interval
        self.port = 0
        self._pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "adapter.log"

    def start(self, timeout: float = 90) -> None:
        cluster = self.cluster
        if not cluster.real_node:
            raise RuntimeError("the metrics adapter needs the real node: the API server reaches it on the pod bridge")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "rules.yaml"
        config.write_text(yaml.safe_dump(adapter_rules()))
        cert, key = cluster.pki.client(SERVICE)
        if not cert.exists():
            sign_serving(cluster.pki, SERVICE, [f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.cluster.local"])
        kubeconfig = str(cluster.directory / "metrics-adapter.kubeconfig")
        self.port = processes.free_port()
        self._apply(rbac_objects())
        proc = processes.start(
            [str(cluster.bin_dir / BINARY), f"--prometheus-url={self.prometheus.url}", f"--config={config}",
             f"--metrics-relist-interval={self.relist_interval}", "--metrics-max-age=1m",
             f"--bind-address={hostnet.GATEWAY}", f"--secure-port={self.port}",
             f"--tls-cert-file={cert}", f"--tls-private-key-file={key}", f"--cert-dir={self.directory / 'certs'}",
             f"--lister-kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
             f"--authorization-kubeconfig={kubeconfig}", "--v=1"], self.log_path)
        self._pid = proc.pid

        def exited() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus-adapter exited with {proc.returncode}: {self.log_path.read_text()[-2000:]}")

        deadline = time.monotonic() + timeout
        processes.poll_until(self._healthy, deadline, f"prometheus-adapter not healthy; log: {self.log_path}", exited)
        self._apply(api_objects(self.port, cluster.pki.ca_cert.read_bytes()))
        processes.poll_until(self._available, deadline,
                             f"APIService {VERSIONS[0]}.{GROUP} not Available; log: {self.log_path}", exited)

    def stop(self) -> None:
        """Unregister the API first (a registered but unreachable API breaks discovery for every client)."""
        self.cluster.kubectl("delete", "apiservice", *(f"{v}.{GROUP}" for v in VERSIONS), "--ignore-not-found", check=False)
        self.cluster.kubectl("delete", "-n", NAMESPACE, "service", SERVICE, "--ignore-not-found", check=False)
        self.cluster.kubectl("delete", "-n", NAMESPACE, "endpointslice", f"{SERVICE}-host", "--ignore-not-found", check=False)
        if self._pid is not None:
            processes.stop(self._pid, expected=BINARY)
            self._pid = None

    def __enter__(self) -> MetricsAdapter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pods_metric(self, namespace: str, metric: str, selector: str | None = None) -> dict[str, float]:
        """pod name -> value of a pods metric, read through the API server (as the HPA reads it)."""
        path = f"/apis/{GROUP}/{VERSIONS[0]}/namespaces/{namespace}/pods/*/{metric}"
        args = ["get", "--raw", path + (f"?labelSelector={selector}" if selector else "")]
        items = json.loads(self.cluster.kubectl(*args).stdout)["items"]
        return {item["describedObject"]["name"]: float(parse_quantity(item["value"])) for item in items}

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"https://{hostnet.GATEWAY}:{self.port}/healthz", timeout=2,
                                        context=ssl._create_unverified_context()) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _available(self) -> bool:
        result = self.cluster.kubectl("get", "apiservice", f"{VERSIONS[0]}.{GROUP}", "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

