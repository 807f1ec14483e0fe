"""`LocalCluster(kueue=True)`: Kueue runs as one of the cluster's processes, and the API server reaches its
webhooks (admission and CRD conversion) over TLS on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.localcluster import LocalCluster, processes
from modelfleet.localcluster.binaries import ensure_binaries

pytestmark = pytest.mark.cluster


def test_kueue_component_serves_its_webhooks_and_stops_with_the_cluster(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "c", bin_dir=ensure_binaries(("kueue",)), real_node=False, kueue=True)
    local.up(timeout=180)
    state = local.load_state()
    try:
        assert state.kueue and local.status()["kueue"] and local.running()
        # A rule only Kueue's validating webhook enforces (the CRD's schema allows it).
        workload = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {"name": "w", "namespace": "default"},
                    "spec": {"queueName": "q", "podSets": [{"name": "main", "count": 1, "template": {"spec": {"containers": [
                        {"name": "c", "image": "i", "resources": {"requests": {"pods": "1"}}}]}}}]}}
        refused = local.kubectl("apply", "-f", "-", input=json.dumps(workload), check=False)
        assert refused.returncode != 0 and "reserved for internal kueue use" in refused.stderr, refused.stderr
        # Stored as v1beta2, read as v1beta1: the API server calls Kueue's conversion webhook.
        local.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "q", "namespace": "default"},
            "spec": {"clusterQueue": "cq"}}))
        old = json.loads(local.kubectl("get", "localqueues.v1beta1.kueue.x-k8s.io", "q", "-n", "default", "-o", "json").stdout)
        assert old["apiVersion"] == "kueue.x-k8s.io/v1beta1" and old["spec"]["clusterQueue"] == "cq"
    finally:
        local.down()
    assert not processes.alive(state.pids["kueue"])
    assert not any(processes.port_open(port) for port in state.ports.values())
