"""What admission cannot catch shows in the status, never as an empty one; and a ModelDeployment cannot make the
operator do what its author could not (docs/security.md). The operator runs with host paths refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kubeclient import SyncKube as Kube
from tests.helpers import wait_for
from tests.operator.modeldeployment.test_mdep_controller import apply, condition, events, manifest, status

pytestmark = pytest.mark.cluster

BAD_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zone", "operator": "Bogus", "values": ["a"]}]}]}}}


def wait_invalid(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: (s := status(kube, namespace, name)).get("phase") == "Invalid" and s,
                    what=f"{name} phase Invalid")


def ready_message(st: dict[str, Any]) -> str:
    return next(c["message"] for c in st["conditions"] if c["type"] == "Ready")


def test_a_child_the_api_server_refuses_shows_as_invalid_naming_the_field(
        cluster: Any, kube: Kube, strict_operator: Any, namespace: str) -> None:
    apply(cluster, namespace, manifest("affinity", affinity=BAD_AFFINITY))  # passed through: the schema cannot know
    st = wait_invalid(kube, namespace, "affinity")
    assert condition(st, "Ready") == ("False", "InvalidSpec") and condition(st, "Available") == ("False", "InvalidSpec")
    message = ready_message(st)
    assert message.startswith("spec.affinity: the API server refused the Deployment affinity: ")
    assert 'Invalid value: "Bogus": not a valid selector operator' in message
    assert st["observedGeneration"] == 1
    wait_for(lambda: any(e[:2] == ("Warning", "InvalidSpec") and e[2] == message
                         for e in events(cluster, namespace, "affinity")), what="an InvalidSpec Event")
    # Fixing the field recovers without any other action.
    cluster.kubectl("patch", "mdep", "affinity", "-n", namespace, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/affinity"}]))
    wait_for(lambda: status(kube, namespace, "affinity").get("phase") not in (None, "Invalid"), what="no longer Invalid")


def test_host_paths_are_refused_when_the_operator_does_not_allow_them(
        cluster: Any, kube: Kube, strict_operator: Any, namespace: str) -> None:
    apply(cluster, namespace, manifest("hostpath", model={"uri": "file:///srv/models/tiny"}))
    st = wait_invalid(kube, namespace, "hostpath")
    assert condition(st, "Ready") == ("False", "InvalidSpec")
    message = ready_message(st)
    assert message.startswith("spec.model.uri: file:// URIs mount a directory of the node")
    assert "MODELFLEET_ALLOW_HOST_PATHS=true" in message
    assert kube.get("Deployment", namespace, "hostpath") is None  # nothing was rendered


def test_an_object_it_does_not_own_is_never_taken_over(cluster: Any, kube: Kube, strict_operator: Any,
                                                       namespace: str) -> None:
    cluster.kubectl("create", "service", "clusterip", "frontend", "--tcp=80:8080", "-n", namespace)
    apply(cluster, namespace, manifest("frontend"))
    st = wait_invalid(kube, namespace, "frontend")
    assert ready_message(st).startswith("metadata.name: Service frontend already exists and is not owned by this "
                                        "ModelDeployment")
    service = kube.get("Service", namespace, "frontend")
    assert service["spec"]["ports"][0]["port"] == 80 and not service["metadata"].get("ownerReferences")
