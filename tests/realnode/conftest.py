"""Helpers for tests on the local cluster's real node: pods from the project's images, claims on the node's
local volumes, a tiny model on a claim, the kubelet-side view of a container (its cgroup), and the metrics
pipeline (a real Prometheus scraping the pods, prometheus-adapter serving the custom metrics API), all against
real components."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.metricsadapter import MetricsAdapter
from modelfleet.localcluster.prometheus import Prometheus
from modelfleet.localcluster.realnode import NODE_NAME
from modelfleet_operator.security import container_security_context, pod_security_context
from tests.helpers import wait_for
from tests.operator.conftest import OperatorProcess, crds, operator  # noqa: F401 (fixtures for these tests)


def apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get(cluster: LocalCluster, namespace: str, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "-n", namespace, *args, "-o", "json").stdout)


def image_pod(cluster: LocalCluster, name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A pod from the runtime image (images/runtime.Dockerfile) that passes Pod Security "restricted"."""
    container = {"name": "main", "image": cluster.images["runtime"], "command": command,
                 "securityContext": container_security_context(), **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
            "spec": {"securityContext": pod_security_context(), "terminationGracePeriodSeconds": 2,
                     "containers": [container], **spec}}


def wait_running(cluster: LocalCluster, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod = get(cluster, namespace, "pod", name)
        waiting = [s["state"]["waiting"] for s in pod["status"].get("containerStatuses", []) if "waiting" in s["state"]]
        assert not [w for w in waiting if w.get("reason") in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError")], waiting
        return pod if pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, timeout=timeout, what=f"pod {name} Running")
    assert pod["spec"]["nodeName"] == NODE_NAME
    return pod


def claim(cluster: LocalCluster, namespace: str, name: str) -> Path:
    """A ReadWriteMany claim on the default StorageClass; returns the host directory of the volume it bound."""
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    volume = wait_for(lambda: get(cluster, namespace, "pvc", name)["spec"].get("volumeName"), timeout=30,
                      what=f"claim {name} bound")
    return Path(json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)["spec"]["hostPath"]["path"])


def container_cgroup(pod: dict[str, Any], controller: str) -> Path:
    """The container's cgroup (cgroup v1, the kubelet's cgroupfs driver) in `controller`."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    [path] = Path(f"/sys/fs/cgroup/{controller}/kubepods").glob(f"**/{container_id}")
    return path


def kubectl_exec(cluster: LocalCluster, namespace: str, pod: str, *command: str, timeout: float = 60) -> str:
    result = subprocess.run([str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace,
                             "exec", pod, "--", *command], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"kubectl exec {' '.join(command)}: {result.stderr}"
    return result.stdout


def signal_container(pod: dict[str, Any], signal: int) -> None:
    """Send `signal` to every process of the pod's (first) container, from the host: SIGSTOP makes it hang
    (unlike the cgroup freezer, a stopped process can still be killed by the kubelet), SIGCONT resumes it."""
    import os

    for pid in (container_cgroup(pod, "pids") / "cgroup.procs").read_text().split():
        try:
            os.kill(int(pid), signal)
        except ProcessLookupError:
            pass


def events(cluster: LocalCluster, namespace: str, pod: str) -> list[str]:
    found = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                       f"involvedObject.name={pod}", "-o", "json").stdout)["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in found]


def tiny_model(cluster: LocalCluster, namespace: str, claim_name: str = "models") -> str:
    """A tiny random Llama with the byte tokenizer on a new claim; returns its URI (pvc://CLAIM/tiny)."""
    from model_runtime.artifact import save_model_dir
    from model_runtime.llama import LlamaConfig, LlamaForCausalLM
    from model_runtime.tokenizer import byte_tokenizer

    model_dir = claim(cluster, namespace, claim_name) / "tiny"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    model.init_weights(0, std=0.2)
    save_model_dir(model, byte_tokenizer(), model_dir)
    for path in [model_dir, *model_dir.rglob("*")]:  # written here as root; the runtime pod runs as 65532
        path.chmod(0o755 if path.is_dir() else 0o644)
    return f"pvc://{claim_name}/tiny"


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus discovering every annotated pod through the API server, scraping every 2 s."""
    with Prometheus(cluster, tmp_path_factory.mktemp("prometheus"), scrape_interval="2s") as server:
        yield server


@pytest.fixture(scope="module")
def metrics_adapter(cluster: LocalCluster, prometheus: Prometheus,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsAdapter]:
    """custom.metrics.k8s.io from `prometheus`, registered with the API server (unregistered afterwards)."""
    with MetricsAdapter(cluster, prometheus, tmp_path_factory.mktemp("metrics-adapter")) as adapter:
        yield adapter
