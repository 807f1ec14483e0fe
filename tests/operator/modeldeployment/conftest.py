"""Helpers for ModelDeployment cluster tests: a dict-speaking API client, a bound PVC holding "the model",
and small accessors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.kubeclient import SyncKube


@pytest.fixture(scope="module")
def kube(cluster: Any) -> SyncKube:
    return SyncKube(cluster.kubeconfig)


@pytest.fixture
def models_pvc(cluster: Any, namespace: str) -> Iterator[str]:
    """A PersistentVolumeClaim "models", bound to a pre-made PersistentVolume (kwok runs no storage)."""
    pv = f"{namespace}-models"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "manual",
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/srv/models"},
                  "claimRef": {"namespace": namespace, "name": "models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "manual", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]}))
    wait_for(lambda: cluster.kubectl("get", "pvc", "models", "-n", namespace, "-o", "jsonpath={.status.phase}")
             .stdout == "Bound", timeout=30, what="PVC models bound")
    yield "models"
    cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
