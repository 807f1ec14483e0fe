"""Fixtures and helpers for TrainingJob cluster tests.

Jobs read and write a PVC (Pod Security "restricted" forbids hostPath), bound to a static PV because
the local control plane has no storage provisioner. One namespace + claim per test module keeps the
suite fast; tests isolate themselves by job name.
"""

from __future__ import annotations

import copy
import json
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from modelfleet.localcluster import LocalCluster
from tests.helpers import ON_FAKE_NODES, wait_for

CLAIM = "store"


def job_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A small valid TrainingJob (2 nodes, 1 process each) with `spec` keys replaced."""
    base: dict[str, Any] = {
        "model": {"preset": "tiny"},
        "data": {"uri": f"pvc://{CLAIM}/data/train.txt"},
        "training": {"steps": 50, "globalBatchSize": 4, "sequenceLength": 64},
        "output": {"uri": f"pvc://{CLAIM}/models/{name}"},
        "nodes": 2,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
        **ON_FAKE_NODES,  # these tests drive pod states through kwok; tests/realnode run real trainer pods
    }
    base.update(copy.deepcopy(spec))
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


class Jobs:
    """kubectl-level helpers bound to one namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):  # noqa: A002
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def status(self, job: str) -> dict[str, Any]:
        return (self.get("trainingjob", job) or {}).get("status") or {}

    def condition(self, job: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(job).get("conditions", []) if c["type"] == type_), {})

    def pods(self, job: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", f"modelfleet.dev/trainingjob={job}", "-o", "json").stdout
        return sorted(json.loads(out)["items"], key=lambda p: p["metadata"]["name"])

    def wait_phase(self, job: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(job)).get("phase") == phase and s, timeout=timeout,
                        what=f"{job} phase {phase}")

    def wait_running_pods(self, job: str, count: int, attempt: int = 0, timeout: float = 30) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = [p for p in self.pods(job) if not p["metadata"].get("deletionTimestamp")]
            ok = len(pods) == count and all(
                p["status"].get("phase") == "Running" and p["metadata"]["annotations"]["modelfleet.dev/attempt"] == str(attempt)
                for p in pods)
            return pods if ok else None
        return wait_for(ready, timeout=timeout, what=f"{count} running pods of {job} (attempt {attempt})")

    def end_pod(self, pod: str, exit_code: int) -> None:
        """kwok's stage ends the pod with this exit code (as if the trainer exited)."""
        self.kubectl("annotate", "pod", pod, f"fake.modelfleet.dev/exit-code={exit_code}")

    def report_progress(self, job: str, report: dict[str, Any], check: bool = True):
        """Patch the progress ConfigMap as the trainer would: with the job's own ServiceAccount."""
        return self.as_trainer(job, "patch", "configmap", f"{job}-progress", "--type", "merge",
                               "-p", json.dumps({"data": {"progress": json.dumps(report)}}), check=check)

    def as_trainer(self, job: str, *args: str, check: bool = True):
        return self.kubectl(f"--as=system:serviceaccount:{self.namespace}:{job}-trainer", *args, check=check)

    def events(self, job: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "events", "--field-selector", f"involvedObject.kind=TrainingJob,involvedObject.name={job}",
                           "-o", "json").stdout
        return json.loads(out)["items"]


@contextmanager
def store_namespace(cluster: LocalCluster) -> Iterator[Jobs]:
    """A new Pod Security "restricted" namespace with a bound ReadWriteMany claim named `store`; deleted after."""
    namespace = f"tj-{uuid.uuid4().hex[:8]}"
    volume = f"{namespace}-{CLAIM}"
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                    "pod-security.kubernetes.io/enforce-version": "latest"}}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": f"/tmp/{volume}"}, "claimRef": {"namespace": namespace, "name": CLAIM}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    helper = Jobs(cluster, namespace)
    wait_for(lambda: (helper.get("pvc", CLAIM) or {}).get("status", {}).get("phase") == "Bound", timeout=60,
             what="the store claim to bind")
    wait_for(lambda: helper.get("serviceaccount", "default"), timeout=30, what="the default ServiceAccount")
    try:
        yield helper
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", volume, "--wait=false", check=False)


@pytest.fixture(scope="module")
def jobs(cluster: LocalCluster, crds: list[str]) -> Iterator[Jobs]:
    with store_namespace(cluster) as helper:
        yield helper
