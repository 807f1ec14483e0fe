"""A real Prometheus (Debian's `prometheus` binary) as a host process beside the local cluster.

It scrapes the pods annotated `prometheus.io/scrape: "true"` (the runtime pods are) at their pod IPs on the
real node's bridge, which the host reaches. Debian builds Prometheus without Kubernetes service discovery, so
the pods come to it through HTTP service discovery from `PodDiscovery`: a loopback endpoint in this process
that lists the pods through the API server (with a client certificate that may only list pods) on each
refresh and describes them with the labels Kubernetes discovery would give (`__meta_kubernetes_*`). The
relabelling is the usual one: each series gets `namespace` and `pod` labels and the pod's labels (sanitised:
`modelfleet.dev/modeldeployment` becomes `modelfleet_dev_modeldeployment`), so a query can select one
ModelDeployment's pods or one version of them. Everything listens on 127.0.0.1 only. Used by the metrics
adapter (metricsadapter.py) and by tests that analyse serving metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelfleet.localcluster import processes

if TYPE_CHECKING:
    from modelfleet.localcluster.cluster import LocalCluster

BINARY = "prometheus"
USER = "modelfleet-prometheus"  # the CN of pki.CLIENTS["prometheus"]


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def target_groups(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HTTP service discovery's answer for a pod list: each running pod with an IP, one target per pod (its
    `prometheus.io/port` annotation, else its first container port), labelled as Kubernetes discovery would."""
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        annotations = meta.get("annotations") or {}
        ports = [p["containerPort"] for c in spec.get("containers") or [] for p in c.get("ports") or []]
        port = annotations.get("prometheus.io/port") or (str(ports[0]) if ports else None)
        if status.get("phase") != "Running" or not status.get("podIP") or meta.get("deletionTimestamp") or not port:
            continue
        labels = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
                  "__meta_kubernetes_pod_ip": status["podIP"], "__meta_kubernetes_pod_phase": status["phase"],
                  "__meta_kubernetes_pod_node_name": spec.get("nodeName", "")}
        labels |= {f"__meta_kubernetes_pod_label_{_label_name(k)}": v for k, v in (meta.get("labels") or {}).items()}
        labels |= {f"__meta_kubernetes_pod_annotation_{_label_name(k)}": v for k, v in annotations.items()}
        groups.append({"targets": [f"{status['podIP']}:{port}"], "labels": labels})
    return groups


def scrape_config(discovery_url: str, scrape_interval: str) -> dict[str, Any]:
    """prometheus.yml: one job over every annotated pod in the cluster."""
    def label(source: str, target: str) -> dict[str, Any]:
        return {"source_labels": [source], "target_label": target}

    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "http_sd_configs": [{"url": discovery_url, "refresh_interval": scrape_interval}],
            "relabel_configs": [
                {"source_labels": [f"{annotation}scrape"], "regex": "true", "action": "keep"},
                {"source_labels": [f"{annotation}path"], "regex": "(.+)", "target_label": "__metrics_path__"},
                {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                label("__meta_kubernetes_namespace", "namespace"),
                label("__meta_kubernetes_pod_name", "pod"),
            ],
        }],
    }


class PodDiscovery:
    """Prometheus' HTTP service discovery endpoint (GET /targets on 127.0.0.1), answered from the API server's
    pod list on each call, in a thread of this process."""

    def __init__(self, api_server: str, ca: Path, cert: Path, key: Path) -> None:
        self.api_server = api_server
        self._tls = ssl.create_default_context(cafile=str(ca))
        self._tls.load_cert_chain(str(cert), str(key))
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                try:
                    body, code = json.dumps(target_groups(discovery.pods())).encode(), 200
                except (urllib.error.URLError, OSError, ValueError) as error:
                    body, code = str(error).encode(), 503  # Prometheus keeps the last targets and retries
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet)
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/targets"

    def pods(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.api_server}/api/v1/pods", timeout=5, context=self._tls) as response:
            return json.loads(response.read())["items"]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def rbac_objects() -> list[dict[str, Any]]:
    """What service discovery needs: list pods, nothing else."""
    name = "modelfleet:prometheus"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}]},
    ]


class Prometheus:
    """Prometheus for `cluster` (which must be up), its files (config, TSDB, log) in `directory`."""

    def __init__(self, cluster: LocalCluster, directory: Path | None = None, scrape_interval: str = "2s") -> None:
        self.cluster = cluster
        self.directory = Path(directory or cluster.directory / "prometheus")
        self.scrape_interval = scrape_interval
        self.port = 0
        self._pid: int | None = None
        self._discovery: PodDiscovery | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
        cluster = self.cluster
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac_objects()}))
        api_server = f"https://{cluster.api_host}:{cluster.load_state().ports['kube-apiserver']}"
        self._discovery = PodDiscovery(api_server, cluster.pki.ca_cert, *cluster.pki.client("prometheus"))
        self._discovery.start()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self._discovery.url, self.scrape_interval)))
        self.port = processes.free_port()
        proc = processes.start([binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=2h",
                                "--log.level=warn"], self.log_path)
        self._pid = proc.pid

        def exited() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}: {self.log_path.read_text()[-2000:]}")

        processes.poll_until(lambda: self._get("/-/ready") is not None, time.monotonic() + timeout,
                             f"prometheus not ready in {timeout}s; log: {self.log_path}", exited)

    def stop(self) -> None:
        if self._pid is not None:
            processes.stop(self._pid, expected=BINARY)
            self._pid = None
        if self._discovery is not None:
            self._discovery.stop()
            self._discovery = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if body is None:
            raise RuntimeError(f"prometheus query failed: {expr}")
        return json.loads(body)["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a query that yields at most one series (None when it yields none)."""
        result = self.query(expr)
        if len(result) > 1:
            raise ValueError(f"{expr} yields {len(result)} series, expected at most one")
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets, each with its labels, scrapeUrl and health."""
        body = self._get("/api/v1/targets?state=active")
        return json.loads(body)["data"]["activeTargets"] if body else []

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
