"""Autoscaling for real: a ModelDeployment's HorizontalPodAutoscaler, fed by a real Prometheus (scraping the
runtime pods it discovers through the API server) and prometheus-adapter (the custom metrics API), scales it
out under load on vllm:num_requests_waiting, the new pod serves, and without load it scales back in. Status
and Events say why each scale happened."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest
from kubernetes.utils.quantity import parse_quantity

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.metricsadapter import MetricsAdapter
from modelfleet.localcluster.prometheus import Prometheus
from tests.helpers import wait_for
from tests.realnode.conftest import OperatorProcess, apply, get, tiny_model

pytestmark = pytest.mark.cluster

WAITING = "vllm:num_requests_waiting"
CLIENTS = 6  # concurrent clients; with maxNumSeqs 1 one pod queues about CLIENTS - 1 of them


class Load:
    """CLIENTS threads sending completions without pause through the Service (a new connection per request, so
    kube-proxy spreads them over the ready pods), until stopped or `limit` seconds have passed."""

    def __init__(self, base_url: str, limit: float = 300) -> None:
        self.base_url = base_url
        self.deadline = time.monotonic() + limit
        self.stopped = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=60)
        api = openai.OpenAI(base_url=self.base_url, api_key="unused", http_client=http, max_retries=0)
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                done = api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=32, temperature=0)
                assert done.choices[0].text is not None
                with self._lock:
                    self.ok += 1
            except Exception as error:  # noqa: BLE001 (every failure is recorded and asserted on)
                with self._lock:
                    self.failures.append(repr(error))
        http.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=90)


def status(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    return get(cluster, namespace, "modeldeployment", "scaled").get("status") or {}


def ready_pods(cluster: LocalCluster, namespace: str) -> list[str]:
    pods = get(cluster, namespace, "pods", "-l", "modelfleet.dev/modeldeployment=scaled")["items"]
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                  and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}]))


def scale_events(cluster: LocalCluster, namespace: str) -> list[str]:
    found = get(cluster, namespace, "events", "--field-selector",
                "involvedObject.kind=ModelDeployment,involvedObject.name=scaled,reason=Scaled")["items"]
    return [e["message"] for e in sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])]


def test_load_scales_out_the_new_pod_serves_and_no_load_scales_back_in(
        cluster: LocalCluster, namespace: str, operator: OperatorProcess, prometheus: Prometheus,
        metrics_adapter: MetricsAdapter) -> None:
    apply(cluster, namespace, {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "scaled"},
                               "spec": {"model": {"uri": tiny_model(cluster, namespace), "servedModelName": "tiny"},
                                        "replicas": 1,
                                        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "WaitingRequests",
                                                        "target": 2, "scaleDownStabilizationSeconds": 10},
                                        "runtime": {"maxNumSeqs": 1, "drainTimeoutSeconds": 1},
                                        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}})
    [first] = wait_for(lambda: len(pods := ready_pods(cluster, namespace)) == 1 and pods, timeout=240,
                       what="the first runtime pod ready")

    # The pipeline works before any load: Prometheus scrapes the pod, the adapter serves its metric through the
    # API server, and the HPA reads it (0 waiting, 1 replica).
    wait_for(lambda: prometheus.value(f'sum({WAITING}{{namespace="{namespace}",pod="{first}"}})') == 0, timeout=60,
             what="prometheus scraping the runtime pod")
    wait_for(lambda: metrics_adapter.pods_metric(namespace, WAITING) == {first: 0.0}, timeout=30,
             what="the custom metrics API serving the pod's metric")
    # Reading the metric, the HPA reports ValidMetricFound, or, once its first scale-down window has passed with
    # 0 waiting, TooFewReplicas (it would go below minReplicas): either way it has a current value.
    idle = wait_for(lambda: (s := status(cluster, namespace).get("autoscaling") or {}).get("currentValue") is not None
                    and s, timeout=60, what="the HPA reading the metric")
    assert (idle["currentValue"], idle["target"], idle["metric"]) == ("0", "2", WAITING), idle
    assert idle["reason"] in ("ValidMetricFound", "TooFewReplicas"), idle

    service = get(cluster, namespace, "service", "scaled")["spec"]["clusterIP"]
    with Load(f"http://{service}:8000/v1") as load:
        started = time.monotonic()
        queued = wait_for(lambda: (v := metrics_adapter.pods_metric(namespace, WAITING).get(first, 0)) >= 2 and v,
                          timeout=60, what="requests queueing on the first pod")
        out = wait_for(lambda: (s := status(cluster, namespace).get("autoscaling", {}).get("lastScale"))
                       and s["toReplicas"] == 2 and s, timeout=90, what="the autoscaler scaling out")
        decided = time.monotonic() - started
        pods = wait_for(lambda: len(p := ready_pods(cluster, namespace)) == 2 and p, timeout=180,
                        what="the second runtime pod ready")
        served = time.monotonic() - started
        [second] = [p for p in pods if p != first]
        # The new pod serves: Prometheus sees its successful requests go up.
        wait_for(lambda: (prometheus.value(f'sum(vllm:request_success_total{{namespace="{namespace}",pod="{second}"}})')
                          or 0) >= 3, timeout=90, what="the second pod serving requests")
    assert load.failures == [], load.failures[:5]
    assert out["fromReplicas"] == 1 and parse_quantity(out["metricValue"]) > 2, out
    assert out["message"].startswith(f"scaled 1 -> 2: {WAITING} "), out

    stopped = time.monotonic()
    back = wait_for(lambda: (s := status(cluster, namespace).get("autoscaling", {}).get("lastScale"))
                    and s["toReplicas"] == 1 and s, timeout=120, what="the autoscaler scaling back in")
    wait_for(lambda: len(ready_pods(cluster, namespace)) == 1 and status(cluster, namespace).get("replicas") == 1,
             timeout=120, what="one runtime pod left")
    scaled_in = time.monotonic() - stopped
    assert back["fromReplicas"] == 2 and back["message"].startswith(f"scaled 2 -> 1: {WAITING} 0 per pod"), back
    events = wait_for(lambda: back["message"] in (e := scale_events(cluster, namespace)) and e, timeout=30,
                      what="the Scaled event of the scale-in")
    assert out["message"] in events and events[-1] == back["message"], events
    print(f"\nautoscaling: {load.ok} requests, {queued:g} waiting on one pod; scale-out decided after {decided:.0f}s, "
          f"second pod ready after {served:.0f}s; scaled back in {scaled_in:.0f}s after the load stopped")
