"""Least privilege, proven by the API server: the real operator runs as a ServiceAccount bound to exactly the
chart's rendered ClusterRole, does a representative set of TrainingJob and ModelDeployment scenarios, and the
API server's audit log (modelfleet/localcluster/audit.py) records every request it made. The chart must grant
exactly what was used: a grant nobody used fails the test, and so does a used permission the chart lacks.

To change the operator's permissions (docs/security.md): add the code, the rule in
charts/modelfleet/templates/_helpers.tpl, and (when no scenario below reaches the new code) a scenario here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.audit import Request, requests_of
from modelfleet_operator.modeldeployment.kube import Kube
from tests.chart.helm import Helm, one
from tests.chart.identity import operator_as
from tests.chart.rbac import Permission, grants
from tests.helpers import wait_for
from tests.operator.conftest import crds  # noqa: F401  (fixture)
from tests.operator.modeldeployment.test_mdep_controller import FIXTURE_CRDS, manifest, patch_spec, wait_ready
from tests.operator.trainingjob.conftest import Jobs, job_manifest, jobs  # noqa: F401  (fixture)
from tests.operator.trainingjob.test_trainingjob_lifecycle import succeed

pytestmark = pytest.mark.cluster

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")


@dataclass
class Scene:
    cluster: LocalCluster
    jobs: Jobs
    kube: Kube

    @property
    def namespace(self) -> str:
        return self.jobs.namespace

    def apply(self, obj: dict[str, Any]) -> None:
        self.jobs.apply(obj)


# --- scenarios: each drives one path of the operator and checks that it happened ---------------------------------

def training_job_succeeds(scene: Scene) -> None:
    scene.apply(job_manifest("done"))
    scene.jobs.wait_running_pods("done", 2)
    succeed(scene.jobs, "done")


def failed_pod_restarts_the_gang(scene: Scene) -> None:
    scene.apply(job_manifest("gang"))
    scene.jobs.wait_running_pods("gang", 2)
    scene.jobs.end_pod("gang-node-1", 1)  # its last log lines are read for status.failures
    scene.jobs.wait_running_pods("gang", 2, attempt=1)


def finished_job_is_deleted_by_its_ttl(scene: Scene) -> None:
    scene.apply(job_manifest("ttl", runPolicy={"ttlSecondsAfterFinished": 1}))
    scene.jobs.wait_running_pods("ttl", 2)
    scene.jobs.end_pod("ttl-node-0", 65)
    wait_for(lambda: scene.jobs.get("trainingjob", "ttl") is None, what="the job deleted by its TTL")


def suspended_job_loses_its_pods(scene: Scene) -> None:
    scene.apply(job_manifest("pause", runPolicy={"suspend": True}))
    scene.jobs.wait_phase("pause", "Suspended")


def existing_service_account_is_not_borrowed(scene: Scene) -> None:
    scene.jobs.kubectl("create", "serviceaccount", "borrow-trainer")
    scene.apply(job_manifest("borrow"))
    wait_for(lambda: scene.jobs.condition("borrow", "Running").get("reason") == "InvalidSpec", what="InvalidSpec")


def model_deployment_scales_and_rolls_out(scene: Scene) -> None:
    scene.apply(manifest("serve", replicas=2, image="example.com/runtime:1"))
    wait_ready(scene.kube, scene.namespace, "serve", 2)
    patch_spec(scene.cluster, scene.namespace, "serve", {"image": "example.com/runtime:2", "replicas": 1})
    wait_ready(scene.kube, scene.namespace, "serve", 1)
    wait_for(lambda: scene.kube.get("PodDisruptionBudget", scene.namespace, "serve") is None,
             what="PDB removed at 1 replica")


def gpu_rollout_checks_free_capacity(scene: Scene) -> None:
    scene.apply(manifest("gpu", replicas=1, resources={"limits": {"nvidia.com/gpu": 1}},
                         nodeSelector={"nvidia.com/gpu.present": "true"}))
    assert wait_ready(scene.kube, scene.namespace, "gpu", 1)["rollout"]["withoutSurge"] is False


def model_from_a_training_job(scene: Scene) -> None:
    scene.apply(manifest("trained", replicas=1, model={"trainingJobRef": {"name": "done"}}))
    assert wait_ready(scene.kube, scene.namespace, "trained", 1)["model"]["trainingJob"] == "done"


def autoscaling_with_and_without_keda_and_prometheus_operator(scene: Scene) -> None:
    kube, namespace = scene.kube, scene.namespace
    scene.apply(manifest("auto", autoscaling={"minReplicas": 2, "maxReplicas": 4, "target": 4}))
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto"), what="HPA")
    fixtures = [a for name in ("keda-scaledobject.yaml", "prometheus-podmonitor.yaml")
                for a in ("-f", str(FIXTURE_CRDS / name))]
    scene.cluster.kubectl("apply", *fixtures)
    try:
        scene.cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh",
                              "crd/podmonitors.monitoring.coreos.com", "--timeout=30s")
        wait_for(lambda: kube.get("ScaledObject", namespace, "auto") and kube.get("PodMonitor", namespace, "auto"),
                 what="ScaledObject and PodMonitor")
        wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto") is None, what="HPA gives way to KEDA")
        patch_spec(scene.cluster, namespace, "auto", {"autoscaling": None, "replicas": 1})
        wait_for(lambda: kube.get("ScaledObject", namespace, "auto") is None, what="ScaledObject removed")
    finally:
        scene.cluster.kubectl("delete", "--wait=true", *fixtures, check=False)


SCENARIOS: list[Callable[[Scene], None]] = [
    training_job_succeeds, failed_pod_restarts_the_gang, finished_job_is_deleted_by_its_ttl,
    suspended_job_loses_its_pods, existing_service_account_is_not_borrowed, model_deployment_scales_and_rolls_out,
    gpu_rollout_checks_free_capacity, model_from_a_training_job, autoscaling_with_and_without_keda_and_prometheus_operator,
]


# --- what was used, and what it implies --------------------------------------------------------------------------

@dataclass
class Audit:
    namespace: str  # of the operator's ServiceAccount
    account: str
    rules: list[dict[str, Any]]  # the rendered ClusterRole the operator ran with
    requests: list[Request]  # everything the operator asked the API server
    implied: set[Permission]  # permissions the API server checks without a request of their own


def implied_by(cluster: LocalCluster, namespace: str, requests: list[Request]) -> set[Permission]:
    """What the API server authorizes inside other requests (no audit event of their own):
    - server-side apply that creates an object (answered 201) is also authorized as "create";
    - RBAC's escalation check: the operator may create a Role only with permissions it holds itself;
    - OwnerReferencesPermissionEnforcement: a child with blockOwnerDeletion needs update on its owner's finalizers."""
    implied = {(r.group, r.resource, "create") for r in requests if r.verb == "patch" and r.code == 201}
    for role in json.loads(cluster.kubectl("get", "roles", "-n", namespace, "-o", "json").stdout)["items"]:
        if any(r.resource == "roles" and r.verb == "create" and r.name == role["metadata"]["name"] for r in requests):
            implied |= grants(role["rules"])
    created = {(r.group, r.resource, r.name) for r in requests if r.code == 201 and r.namespace == namespace}
    for group, resource, name in created:
        api = f"{resource}.{group}" if group else resource
        child = cluster.kubectl("get", api, name, "-n", namespace, "-o", "json", check=False)
        for ref in json.loads(child.stdout)["metadata"].get("ownerReferences", []) if child.returncode == 0 else []:
            if ref.get("blockOwnerDeletion"):
                implied.add((ref["apiVersion"].split("/")[0], f"{ref['kind'].lower()}s/finalizers", "update"))
    return implied


def used_permissions(audit: Audit) -> set[Permission]:
    return {(r.group, r.resource, r.verb) for r in audit.requests} | audit.implied


def differences(rules: list[dict[str, Any]], needed: set[Permission]) -> tuple[set[Permission], set[Permission]]:
    """(granted but never needed, needed but not granted)."""
    granted = grants(rules)
    return granted - needed, needed - granted


@pytest.fixture(scope="module")
def audit(cluster: LocalCluster, crds: list[str], jobs: Jobs, helm: Helm,  # noqa: F811  (fixtures)
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audit]:
    home = f"rbac-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", home)
    release = f"audit-{home}"
    objects = [o for o in helm.template(namespace=home, release=release) if o["kind"] in RBAC_KINDS]
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    cluster.kubectl("apply", "-n", home, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                       "items": objects}))
    operator = operator_as(cluster, home, account, tmp_path_factory.mktemp("audited-operator"))
    scene = Scene(cluster, jobs, Kube(cluster.api_client()))
    try:
        operator.start()
        for scenario in SCENARIOS:
            scenario(scene)
        operator.stop()
        requests = requests_of(cluster.audit_log, f"system:serviceaccount:{home}:{account}")
        implied = implied_by(cluster, jobs.namespace, requests)
        yield Audit(home, account, one(objects, "ClusterRole")["rules"], requests, implied)
    finally:
        operator.stop()
        for obj in objects:
            if obj["kind"] != "ServiceAccount":
                cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", home, "--wait=false", check=False)


def table(permissions: set[Permission]) -> str:
    return "\n".join(f"  {verb:<8} {resource:<32} {group or 'core'}" for group, resource, verb in sorted(permissions))


def test_the_operator_was_refused_nothing(audit: Audit) -> None:
    assert audit.requests, "no request of the operator's ServiceAccount in the audit log"
    refused = {(r.group, r.resource, r.verb) for r in audit.requests if r.code == 403}
    assert not refused, f"the API server refused the operator:\n{table(refused)}"


def test_the_audit_log_holds_only_service_accounts_outside_kube_system(cluster: LocalCluster, audit: Audit) -> None:
    users = {json.loads(line)["user"]["username"] for line in cluster.audit_log.read_text().splitlines()}
    assert f"system:serviceaccount:{audit.namespace}:{audit.account}" in users
    assert all(u.startswith("system:serviceaccount:") and ":kube-system:" not in u for u in users), users


def test_the_chart_grants_exactly_what_the_operator_used(audit: Audit) -> None:
    used = used_permissions(audit)
    print(f"permissions the operator used ({len(used)}):\n{table(used)}")
    unused, missing = differences(audit.rules, used)
    assert not unused, f"the chart grants what the operator never used (remove it, see docs/security.md):\n{table(unused)}"
    assert not missing, f"the operator used what the chart does not grant:\n{table(missing)}"


def test_an_added_grant_nobody_uses_fails(audit: Audit) -> None:
    used, (unused, missing) = used_permissions(audit), differences(audit.rules, used_permissions(audit))
    extra = [*audit.rules, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert differences(extra, used) == (unused | {("", "secrets", "get")}, missing)


def test_a_removed_grant_the_operator_uses_fails(audit: Audit) -> None:
    used, (unused, missing) = used_permissions(audit), differences(audit.rules, used_permissions(audit))
    assert ("", "pods", "create") in used
    pods = next(r for r in audit.rules if r["resources"] == ["pods"] and "create" in r["verbs"])
    fewer = [r for r in audit.rules if r is not pods] + [{**pods, "verbs": [v for v in pods["verbs"] if v != "create"]}]
    assert differences(fewer, used) == (unused, missing | {("", "pods", "create")})
