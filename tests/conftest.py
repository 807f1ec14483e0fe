"""Fixtures shared by the whole suite: the local cluster (started once per session, only when a test asks
for it: the control plane, kwok's fake nodes and the real node) and a fresh namespace per test.

MODELFLEET_TEST_REAL_NODE=0 starts the cluster without its real node (no root needed); the tests that need
real containers then fail, they are not skipped."""

from __future__ import annotations

import json
import os
import uuid
from typing import Iterator

import pytest

from modelfleet.localcluster import LocalCluster
from tests.helpers import wait_for

REAL_NODE = os.environ.get("MODELFLEET_TEST_REAL_NODE", "1") != "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that bring up a real-node cluster of their own run first: the machine has one real node, which
    the shared cluster holds from its first use to the end of the session."""
    items.sort(key=lambda item: item.get_closest_marker("own_real_node") is None)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), real_node=REAL_NODE, say=print)
    local.up(timeout=180)
    try:
        yield local
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A new namespace that enforces Pod Security "restricted"; deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                              "pod-security.kubernetes.io/enforce-version": "latest"}},
    }))
    # Pods are refused until kube-controller-manager has made the namespace's default ServiceAccount.
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             timeout=30, what=f"default ServiceAccount in {name}")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
