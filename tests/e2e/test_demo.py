"""The README's first command, end to end, in real containers on the local cluster's real node: the chart's
operator as a pod, a 2-pod TrainingJob (DDP over gloo, rendezvous through the headless Service's DNS name) on a
PersistentVolumeClaim, the model handed to a ModelDeployment, and the openai client through port-forward."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_runtime.artifact import sha256_file
from modelfleet import demo
from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.realnode import NODE_NAME

pytestmark = pytest.mark.cluster


@pytest.fixture
def demo_namespaces(cluster: LocalCluster) -> Iterator[None]:
    """The demo installs the chart's operator, which watches every namespace: uninstall it afterwards, or it
    would reconcile the other tests' resources next to their own operator."""
    yield
    subprocess.run([str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig, "uninstall", "modelfleet",
                    "--namespace", demo.OPERATOR_NAMESPACE, "--wait", "--timeout", "60s"], capture_output=True, timeout=90)
    cluster.kubectl("delete", "namespace", demo.NAMESPACE, demo.OPERATOR_NAMESPACE, "--wait=false", check=False)


def test_whole_lifecycle_on_real_containers(cluster: LocalCluster, demo_namespaces: None) -> None:
    lines: list[str] = []
    result = demo.run(cluster, steps=20, nodes=2, say=lines.append, timeout=600)

    job = json.loads(cluster.kubectl("get", "tj", "fables", "-n", demo.NAMESPACE, "-o", "json").stdout)
    assert job["status"]["phase"] == "Succeeded" and job["status"]["progress"]["step"] == 20
    assert job["status"]["outputs"]["model"] == {"uri": f"pvc://{demo.CLAIM}/models/fables", "digest": result.digest}
    mdep = json.loads(cluster.kubectl("get", "mdep", "fables", "-n", demo.NAMESPACE, "-o", "json").stdout)
    assert mdep["status"]["model"]["digest"] == result.digest
    assert result.completion and result.chat  # the served model answered both APIs through its Service

    # The model on the claim is the one the job reported (the claim is a local volume of the real node).
    claim = json.loads(cluster.kubectl("get", "pvc", demo.CLAIM, "-n", demo.NAMESPACE, "-o", "json").stdout)
    volume = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    model_dir = Path(volume["spec"]["hostPath"]["path"]) / "models" / "fables"
    assert result.digest == sha256_file(model_dir / "model.safetensors")
    manifest = json.loads((model_dir / "modelfleet.json").read_text())
    assert manifest["source"] == {"trainingJob": "fables", "namespace": demo.NAMESPACE}

    # Every pod ran in a real container on the real node: the trainers, the runtime and the operator.
    pods = [p for ns in (demo.NAMESPACE, demo.OPERATOR_NAMESPACE)
            for p in json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]]
    trainers = [p for p in pods if p["metadata"]["labels"].get("modelfleet.dev/role") == "trainer"]
    runtimes = [p for p in pods if p["metadata"]["labels"].get("modelfleet.dev/role") == "runtime"]
    operators = [p for p in pods if p["metadata"]["namespace"] == demo.OPERATOR_NAMESPACE]
    assert trainers and runtimes and operators  # finished trainer pods other than rank 0 are cleaned up
    assert {p["spec"]["nodeName"] for p in pods} == {NODE_NAME}
    for rank in (0, 1):  # both ranks were scheduled to the real node (rank 1's pod is gone by now)
        scheduled = json.loads(cluster.kubectl("get", "events", "-n", demo.NAMESPACE, "--field-selector",
                                               f"involvedObject.name=fables-node-{rank},reason=Scheduled",
                                               "-o", "json").stdout)["items"]
        assert scheduled and all(e["message"].endswith(f"to {NODE_NAME}") for e in scheduled), scheduled
    assert all(s["containerID"].startswith("containerd://") for p in pods for s in p["status"]["containerStatuses"])
    assert {p["spec"]["containers"][0]["image"] for p in trainers + runtimes} == {cluster.images["runtime"]}
    assert operators[0]["spec"]["containers"][0]["image"] == cluster.images["operator"]
    # Rank 1 found rank 0 through cluster DNS (MASTER_ADDR is the headless Service's name for rank 0).
    env = {e["name"]: e.get("value") for e in trainers[0]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "fables-node-0.fables-nodes"
    assert any(line.startswith("  training: step") for line in lines)
