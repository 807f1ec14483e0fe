"""The local control plane is a real Kubernetes: scheduling, controllers, garbage collection, fake GPU
nodes driven by kwok stages, a real version, and helm. (The real node: tests/realnode.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster import processes
from modelfleet.localcluster.realnode import NODE_NAME
from tests.helpers import restricted_pod, wait_for

pytestmark = pytest.mark.cluster
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def get(cluster: LocalCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: LocalCluster, namespace: str, obj: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def test_fake_nodes_ready_with_gpu_capacity(cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")["items"]}
    assert set(nodes) - {NODE_NAME} == {"gpu-node-0", "gpu-node-1", "cpu-node-0"}
    for node in nodes.values():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
    for name in ("gpu-node-0", "gpu-node-1"):
        assert nodes[name]["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert nodes[name]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert nodes[name]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert "nvidia.com/gpu" not in nodes["cpu-node-0"]["status"]["capacity"]


def test_gpu_pod_is_scheduled_and_oversized_pod_is_unschedulable(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, restricted_pod("one-gpu", {"nvidia.com/gpu": "1"}))
    apply(cluster, namespace, restricted_pod("nine-gpus", {"nvidia.com/gpu": "9"}))
    pod = wait_for(lambda: (p := get(cluster, "pod", "one-gpu", "-n", namespace))["status"].get("phase") == "Running" and p,
                   what="one-gpu Running")
    assert pod["spec"]["nodeName"] in {"gpu-node-0", "gpu-node-1"}
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])

    def unschedulable() -> dict | None:
        conds = get(cluster, "pod", "nine-gpus", "-n", namespace)["status"].get("conditions", [])
        return next((c for c in conds if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"), None)

    condition = wait_for(unschedulable, what="Unschedulable condition")
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert get(cluster, "pod", "nine-gpus", "-n", namespace)["status"]["phase"] == "Pending"


def test_deployment_gets_replicaset_and_pods_and_garbage_collection_cascades(cluster: LocalCluster, namespace: str) -> None:
    template = restricted_pod("ignored", labels={"app": "web"})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": template["spec"]}},
    }
    apply(cluster, namespace, deployment)
    wait_for(lambda: get(cluster, "deployment", "web", "-n", namespace)["status"].get("readyReplicas") == 2,
             what="2 ready replicas")
    replicasets = get(cluster, "replicasets", "-n", namespace, "-l", "app=web")["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--cascade=background", "--wait=false")
    wait_for(lambda: not get(cluster, "replicasets", "-n", namespace, "-l", "app=web")["items"]
             and not get(cluster, "pods", "-n", namespace, "-l", "app=web")["items"],
             timeout=60, what="garbage collection of the ReplicaSet and its pods")


def test_annotated_pod_ends_with_its_exit_code(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, restricted_pod("fails"))
    apply(cluster, namespace, restricted_pod("succeeds"))
    for name in ("fails", "succeeds"):
        wait_for(lambda n=name: get(cluster, "pod", n, "-n", namespace)["status"].get("phase") == "Running",
                 what=f"{name} Running")
    cluster.kubectl("annotate", "pod", "fails", "-n", namespace, "fake.modelfleet.dev/exit-code=3",
                    "fake.modelfleet.dev/message=out of memory")
    cluster.kubectl("annotate", "pod", "succeeds", "-n", namespace, "fake.modelfleet.dev/exit-code=0")
    failed = wait_for(lambda: (p := get(cluster, "pod", "fails", "-n", namespace))["status"]["phase"] == "Failed" and p,
                      what="pod Failed")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "out of memory"
    succeeded = wait_for(lambda: (p := get(cluster, "pod", "succeeds", "-n", namespace))["status"]["phase"] == "Succeeded" and p,
                         what="pod Succeeded")
    assert succeeded["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_restricted_namespace_rejects_a_privileged_pod(cluster: LocalCluster, namespace: str) -> None:
    pod = restricted_pod("root")
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr


def test_api_server_reports_its_real_version(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.35.")
    assert version["serverVersion"]["major"] == "1"
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_helm_works_and_lints_a_chart_strictly(cluster: LocalCluster, tmp_path: Path) -> None:
    helm = str(cluster.bin_dir / "helm")
    env = {**cluster.env, "HELM_CACHE_HOME": str(tmp_path / "c"), "HELM_CONFIG_HOME": str(tmp_path / "f"),
           "HELM_DATA_HOME": str(tmp_path / "d")}
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, env=env, check=True)
    assert version.stdout.startswith("v3.")
    lint = subprocess.run([helm, "lint", "--strict", str(FIXTURES / "minimal-chart")], capture_output=True, text=True, env=env)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    broken = tmp_path / "broken"
    (broken / "templates").mkdir(parents=True)
    (broken / "Chart.yaml").write_text((FIXTURES / "minimal-chart" / "Chart.yaml").read_text())
    (broken / "templates" / "bad.yaml").write_text("kind: ConfigMap\nmetadata:\n  name: {{ .Values.missing.key }}\n")
    lint = subprocess.run([helm, "lint", "--strict", str(broken)], capture_output=True, text=True, env=env)
    assert lint.returncode != 0


def test_kwok_only_cluster_up_and_down_twice_leaves_no_process_or_port(tmp_path: Path, cluster: LocalCluster) -> None:
    for attempt in range(2):
        local = LocalCluster(tmp_path / f"c{attempt}", bin_dir=cluster.bin_dir, real_node=False)
        local.up(timeout=120)
        state = local.load_state()
        assert local.running()
        assert all(processes.alive(pid) for pid in state.pids.values())
        local.down()
        assert not any(processes.alive(pid) for pid in state.pids.values())
        assert not any(processes.port_open(port) for port in state.ports.values())
        assert not local.running()
