"""A real Kueue (built from its Go module, run as a host process) admits TrainingJobs as gangs: with 8 GPUs of
quota, of two 8-GPU jobs the first runs and the second waits suspended, without pods, until the first finishes.
Scheduling only: kwok's GPU nodes (MODELFLEET_TEST_REAL_NODE=0 is enough)."""

from __future__ import annotations

import json
import time
from typing import Iterator

import pytest

from modelfleet.localcluster import LocalCluster, processes
from modelfleet.localcluster.binaries import ensure_binaries
from modelfleet.localcluster.kueue import Kueue
from tests.helpers import wait_for
from tests.operator.trainingjob.conftest import Jobs, job_manifest
from tests.operator.trainingjob.test_trainingjob_lifecycle import succeed

pytestmark = pytest.mark.cluster

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture(scope="module")
def kueue(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue against the test cluster; afterwards its objects are deleted (while it still runs to remove its
    finalizers) and its webhook configurations removed."""
    manager = Kueue(tmp_path_factory.mktemp("kueue"), ensure_binaries(("kueue",)), cluster.kubeconfig,
                    processes.free_port(), processes.free_port())
    manager.install(cluster.kubectl)
    log = manager.directory / "kueue.log"
    proc = processes.start(manager.command(), log)

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"kueue exited with {proc.returncode}:\n{log.read_text()[-3000:]}")

    try:
        processes.poll_until(manager.healthy, time.monotonic() + 120, f"Kueue not ready; log: {log}", alive)
        yield manager
    finally:
        cluster.kubectl("delete", "workloads.kueue.x-k8s.io,localqueues.kueue.x-k8s.io", "--all", "--all-namespaces",
                        "--timeout=60s", check=False, timeout=90)
        cluster.kubectl("delete", "clusterqueues.kueue.x-k8s.io,resourceflavors.kueue.x-k8s.io", "--all",
                        "--timeout=60s", check=False, timeout=90)
        manager.uninstall_webhooks(cluster.kubectl)
        processes.stop(proc.pid, expected="kueue")


def gpu_job(name: str, nodes: int, gpus_per_node: int) -> dict:
    manifest = job_manifest(name, nodes=nodes, training={"steps": 50, "globalBatchSize": 8, "sequenceLength": 64},
                            resources={"requests": {"cpu": "100m", "memory": "128Mi"},
                                       "limits": {"memory": "128Mi", "nvidia.com/gpu": gpus_per_node}})
    manifest["metadata"]["labels"] = {QUEUE_LABEL: "team"}
    return manifest


def workload_of(jobs: Jobs, job: str) -> dict | None:
    out = jobs.kubectl("get", "workloads.kueue.x-k8s.io", "-l", f"modelfleet.dev/trainingjob={job}", "-o", "json").stdout
    items = json.loads(out)["items"]
    return items[0] if len(items) == 1 else None


def condition(obj: dict | None, type_: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture(scope="module")
def cluster_queue(jobs: Jobs, kueue: Kueue) -> str:
    """A ResourceFlavor for kwok's GPU nodes, a ClusterQueue of 8 GPUs, and the LocalQueue `team` in the jobs'
    namespace; returns the ClusterQueue's name."""
    name = f"gpus-{jobs.namespace}"
    quota = {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}
    jobs.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "h100"},
         "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name},
         "spec": {"namespaceSelector": {}, "resourceGroups": [{
             "coveredResources": list(quota),
             "flavors": [{"name": "h100", "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team", "namespace": jobs.namespace},
         "spec": {"clusterQueue": name}},
    ]}))
    return name


def test_kueue_admits_the_second_8_gpu_job_only_when_the_first_finishes(jobs: Jobs, cluster_queue: str, operator) -> None:

    # The first job, 2 nodes x 4 GPUs, is one gang of 2 pods for Kueue; admitted, its pods get the flavor's labels.
    jobs.apply(gpu_job("first", nodes=2, gpus_per_node=4))
    pods = jobs.wait_running_pods("first", 2, timeout=60)
    first = workload_of(jobs, "first")
    assert condition(first, "Admitted")["status"] == "True"
    assert first["status"]["admission"]["clusterQueue"] == cluster_queue
    [pod_set] = first["spec"]["podSets"]
    assert pod_set["count"] == 2 and first["metadata"]["ownerReferences"][0]["name"] == "first"
    assert all(p["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true" for p in pods)
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in pods)

    # The second, 1 node x 8 GPUs, does not fit in what is left: suspended, no pods, Kueue's reason in status.
    jobs.apply(gpu_job("second", nodes=1, gpus_per_node=8))
    waiting = wait_for(lambda: (c := jobs.condition("second", "Suspended")).get("reason") == "WaitingForKueue"
                       and "insufficient unused quota" in c.get("message", "") and c, timeout=60,
                       what="the second job waiting for Kueue, with Kueue's message")
    assert waiting["status"] == "True" and "nvidia.com/gpu" in waiting["message"], waiting
    assert jobs.status("second")["phase"] == "Suspended"
    assert condition(workload_of(jobs, "second"), "QuotaReserved")["status"] == "False"
    assert jobs.pods("second") == []

    # The first finishes: its Workload is Finished, Kueue frees the quota and admits the second, which runs.
    succeed(jobs, "first")
    wait_for(lambda: condition(workload_of(jobs, "first"), "Finished").get("reason") == "Succeeded", timeout=30,
             what="the first job's Workload Finished")
    [pod] = jobs.wait_running_pods("second", 1, timeout=60)
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert condition(workload_of(jobs, "second"), "Admitted")["status"] == "True"
    admitted = jobs.condition("second", "Suspended")
    assert (admitted["status"], admitted["reason"]) == ("False", "Admitted") and cluster_queue in admitted["message"]


def test_an_evicted_job_loses_its_pods_and_runs_again_when_readmitted(jobs: Jobs, cluster_queue: str, operator) -> None:
    """Stopping the ClusterQueue (HoldAndDrain) makes Kueue evict the running job: its pods are deleted and its
    quota released; when the queue runs again Kueue admits it again and its pods come back, with no restart counted."""
    jobs.kubectl("delete", "trainingjobs", "--all", "--wait=true", "--timeout=60s")
    wait_for(lambda: json.loads(jobs.kubectl("get", "workloads.kueue.x-k8s.io", "-o", "json").stdout)["items"] == [],
             timeout=60, what="the earlier jobs' Workloads deleted with them")
    jobs.apply(gpu_job("evicted", nodes=1, gpus_per_node=8))
    jobs.wait_running_pods("evicted", 1, timeout=60)

    def stop_policy(policy: str) -> None:
        jobs.cluster.kubectl("patch", "clusterqueues.kueue.x-k8s.io", cluster_queue, "--type", "merge",
                             "-p", json.dumps({"spec": {"stopPolicy": policy}}))

    stop_policy("HoldAndDrain")
    evicted = wait_for(lambda: (c := jobs.condition("evicted", "Suspended")).get("reason") == "EvictedByKueue" and c,
                       timeout=60, what="the job suspended by Kueue's eviction")
    assert "ClusterQueueStopped" in evicted["message"], evicted
    wait_for(lambda: jobs.pods("evicted") == [], timeout=30, what="the evicted job's pods deleted")
    wait_for(lambda: condition(workload_of(jobs, "evicted"), "QuotaReserved").get("status") == "False"
             and not workload_of(jobs, "evicted")["status"].get("admission"), timeout=30, what="the quota released")
    assert any(e["reason"] == "EvictedByKueue" and e["type"] == "Warning" for e in jobs.events("evicted"))

    stop_policy("None")
    jobs.wait_running_pods("evicted", 1, timeout=60)
    assert jobs.condition("evicted", "Suspended")["reason"] == "Admitted"
    assert jobs.status("evicted")["restartCount"] == 0
