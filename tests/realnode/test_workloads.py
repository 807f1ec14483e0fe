"""The operator's pods on the real node, observed through the kubelet: a runtime pod's startup, readiness and
liveness probes, and a trainer pod stopped through the kubelet (SIGTERM, grace period) that checkpoints its
step and is resumed from it."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.binaries import REPO_ROOT
from tests.helpers import wait_for
from tests.realnode.conftest import (
    OperatorProcess,
    apply,
    claim,
    events,
    get,
    signal_container,
    tiny_model,
    wait_running,
)

pytestmark = pytest.mark.cluster


def runtime_pod(cluster: LocalCluster, namespace: str, name: str, ready: bool | None = None) -> dict | None:
    pods = get(cluster, namespace, "pods", "-l", f"modelfleet.dev/modeldeployment={name}")["items"]
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp") and p["status"].get("containerStatuses")]
    if not pods:
        return None
    status = pods[0]["status"]["containerStatuses"][0]
    if ready is not None and status.get("ready") is not ready:
        return None
    return pods[0]


def test_probes_spare_a_slow_load_and_restart_a_hung_runtime(cluster: LocalCluster, namespace: str,
                                                           operator: OperatorProcess) -> None:
    uri = tiny_model(cluster, namespace)
    apply(cluster, namespace, {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "probed"},
                               "spec": {"model": {"uri": uri, "servedModelName": "tiny"}, "replicas": 1,
                                        "probes": {"startupTimeoutSeconds": 180},
                                        "runtime": {"drainTimeoutSeconds": 1},
                                        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}})

    # A slow load: the runtime makes no progress for longer than liveness allows (3 x 10 s), but the startup
    # probe's budget is larger, so the kubelet waits instead of killing it.
    starting = wait_for(lambda: (p := runtime_pod(cluster, namespace, "probed"))
                        and "running" in p["status"]["containerStatuses"][0]["state"] and p,
                        timeout=180, what="the runtime container started")
    signal_container(starting, signal.SIGSTOP)
    wait_for(lambda: any(e.startswith("Unhealthy: Startup probe failed") for e in
                         events(cluster, namespace, starting["metadata"]["name"])), timeout=60, what="failed startup probes")
    time.sleep(40)  # the stall itself: longer than liveness would tolerate
    signal_container(starting, signal.SIGCONT)
    ready = wait_for(lambda: runtime_pod(cluster, namespace, "probed", ready=True), timeout=180, what="runtime Ready")
    assert ready["metadata"]["uid"] == starting["metadata"]["uid"]
    assert ready["status"]["containerStatuses"][0]["restartCount"] == 0

    # A hang once serving: readiness takes it out of the Service, liveness restarts the container.
    signal_container(ready, signal.SIGSTOP)
    wait_for(lambda: runtime_pod(cluster, namespace, "probed", ready=False), timeout=60, what="runtime not Ready")
    restarted = wait_for(lambda: (p := runtime_pod(cluster, namespace, "probed", ready=True))
                         and p["status"]["containerStatuses"][0]["restartCount"] == 1 and p, timeout=180,
                         what="the hung runtime restarted and Ready again")
    assert restarted["metadata"]["uid"] == ready["metadata"]["uid"]  # the same pod: the kubelet restarted it
    seen = events(cluster, namespace, ready["metadata"]["name"])
    assert any(e.startswith("Unhealthy: Liveness probe failed") for e in seen), seen
    assert any("failed liveness probe, will be restarted" in e for e in seen), seen


def test_a_trainer_pod_deleted_mid_run_checkpoints_its_step_and_resumes_from_it(
        cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    store = claim(cluster, namespace, "store")
    (store / "data").mkdir()
    (store / "data" / "corpus.txt").write_bytes((REPO_ROOT / "examples" / "data" / "corpus.txt").read_bytes())
    steps, every = 400, 300
    apply(cluster, namespace, {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
                               "metadata": {"name": "stopped"},
                               "spec": {"model": {"preset": "tiny"}, "tokenizer": {"type": "byte"},
                                        "data": {"uri": "pvc://store/data/corpus.txt", "format": "text"},
                                        "training": {"steps": steps, "globalBatchSize": 8, "sequenceLength": 64,
                                                     "logEvery": 5, "seed": 0},
                                        "checkpoint": {"uri": "pvc://store/checkpoints", "every": every, "keep": 2},
                                        "output": {"uri": "pvc://store/models/stopped"}, "nodes": 1,
                                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}})
    wait_running(cluster, namespace, "stopped-node-0", timeout=180)

    def step() -> int:
        return ((get(cluster, namespace, "trainingjob", "stopped").get("status") or {}).get("progress") or {}).get("step", 0)

    wait_for(lambda: step() >= 20, timeout=180, what="training past step 20")
    first = get(cluster, namespace, "pod", "stopped-node-0")
    cluster.kubectl("delete", "pod", "stopped-node-0", "-n", namespace, "--wait=false")  # SIGTERM via the kubelet

    def resumed_pod() -> dict | None:
        pod = get(cluster, namespace, "pods", "-l", "modelfleet.dev/trainingjob=stopped")["items"]
        return next((p for p in pod if p["metadata"]["uid"] != first["metadata"]["uid"]
                     and p["status"].get("phase") in ("Running", "Succeeded")), None)

    wait_for(resumed_pod, timeout=180, what="the trainer pod recreated")
    logs = wait_for(lambda: re.search(r"resuming from \S+ \(step (\d+)\)",
                                      cluster.kubectl("logs", "-n", namespace, "stopped-node-0", check=False).stdout),
                    timeout=120, what="the recreated trainer resuming")
    resumed_at = int(logs.group(1))
    assert 20 <= resumed_at < every  # not a periodic checkpoint: the one the SIGTERM handler wrote
    final = wait_for(lambda: (s := get(cluster, namespace, "trainingjob", "stopped").get("status") or {})
                     .get("phase") in ("Succeeded", "Failed") and s, timeout=300, what="the job to finish")
    assert final["phase"] == "Succeeded", json.dumps(final, indent=2)
    assert final["progress"]["step"] == steps and final["outputs"]["model"]["digest"].startswith("sha256:")
    manifest = json.loads((store / "models" / "stopped" / "modelfleet.json").read_text())
    assert manifest["digest"] == final["outputs"]["model"]["digest"]

