"""Least privilege, proven by the API server: the real operator runs as a ServiceAccount bound to exactly the
chart's rendered roles (all namespaces; then watchNamespaces), does a representative set of TrainingJob and
ModelDeployment scenarios, and the API server's audit log (modelfleet/localcluster/audit.py) records every request it made. The chart must grant
exactly what was used: a grant nobody used fails the test, and so does a used permission the chart lacks.

To change the operator's permissions (docs/security.md): add the code, the rule in
charts/modelfleet/templates/_helpers.tpl, and (when no scenario below reaches the new code) a scenario here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import yaml

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.audit import Request, requests_of
from modelfleet.localcluster.binaries import ensure_binaries
from tests.chart.helm import Helm, one
from tests.chart.identity import operator_as
from tests.chart.rbac import Permission, grants
from tests.helpers import wait_for
from tests.kubeclient import SyncKube as Kube
from tests.operator.conftest import crds  # noqa: F401  (fixture)
from tests.operator.modeldeployment.test_mdep_controller import FIXTURE_CRDS, manifest, patch_spec, wait_ready
from tests.operator.trainingjob.conftest import Jobs, job_manifest, store_namespace
from tests.operator.trainingjob.test_trainingjob_kueue import QUEUE_LABEL, condition, workload_of
from tests.operator.trainingjob.test_trainingjob_lifecycle import succeed

pytestmark = pytest.mark.cluster

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# KEDA's and the Prometheus Operator's CRDs (as kubectl -f arguments). Removed while the operator ran, they raced
# its applies (one run saw a PodMonitor patch refused with 403 then), so they go after it has stopped.
OTHER_CRDS = [arg for name in ("keda-scaledobject.yaml", "prometheus-podmonitor.yaml")
              for arg in ("-f", str(FIXTURE_CRDS / name))]
# Kueue's CRDs for what the operator reads and writes, as the module (hack/build-binaries.sh kueue) ships them,
# without Kueue's conversion webhooks: their storage version is the v1beta2 the operator speaks, so none is needed.
KUEUE_CRDS = ("workloads", "resourceflavors")


@dataclass
class Scene:
    cluster: LocalCluster
    jobs: Jobs
    kube: Kube
    crds: list[str] = field(default_factory=list)  # installed by a scenario; deleted once the operator has stopped

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
                         nodeSelector={"nvidia.com/gpu.present": "true"}, rollout={"whenNoRoom": "Replace"}))
    assert wait_ready(scene.kube, scene.namespace, "gpu", 1)["rollout"]["withoutSurge"] is False


def model_from_a_training_job(scene: Scene) -> None:
    scene.apply(manifest("trained", replicas=1, model={"trainingJobRef": {"name": "done"}}))
    assert wait_ready(scene.kube, scene.namespace, "trained", 1)["model"]["trainingJob"] == "done"


def autoscaling_with_and_without_keda_and_prometheus_operator(scene: Scene) -> None:
    kube, namespace = scene.kube, scene.namespace
    scene.apply(manifest("auto", autoscaling={"minReplicas": 2, "maxReplicas": 4, "target": 4}))
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto"), what="HPA")
    scene.cluster.kubectl("apply", *OTHER_CRDS)  # deleted by the fixture once the operator is stopped
    scene.cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh",
                          "crd/podmonitors.monitoring.coreos.com", "--timeout=30s")
    wait_for(lambda: kube.get("ScaledObject", namespace, "auto") and kube.get("PodMonitor", namespace, "auto"),
             what="ScaledObject and PodMonitor")
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto") is None, what="HPA gives way to KEDA")
    patch_spec(scene.cluster, namespace, "auto", {"autoscaling": None, "replicas": 1})
    wait_for(lambda: kube.get("ScaledObject", namespace, "auto") is None, what="ScaledObject removed")


def install_kueue_crds(scene: Scene) -> None:
    """Kueue's CRDs (not Kueue: the scenario admits as Kueue would); left alone where already installed."""
    bases = ensure_binaries(("kueue",)) / "kueue-config" / "crd" / "bases"
    for plural in KUEUE_CRDS:
        name = f"{plural}.kueue.x-k8s.io"
        if scene.cluster.kubectl("get", "crd", name, check=False).returncode == 0:
            continue
        crd = yaml.safe_load((bases / f"{name.split('.', 1)[1]}_{plural}.yaml").read_text())
        assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == ["v1beta2"], crd["spec"]["versions"]
        scene.cluster.kubectl("create", "-f", "-", input=json.dumps(crd))
        scene.crds.append(name)

    def established() -> bool:  # `kubectl wait` fails, not waits, on a CRD this new (status.conditions null)
        crds = json.loads(scene.cluster.kubectl("get", "crd", *(f"{p}.kueue.x-k8s.io" for p in KUEUE_CRDS),
                                                "-o", "json").stdout)["items"]
        return all(any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status") or {}).get("conditions") or []) for crd in crds)
    wait_for(established, what="Kueue's CRDs established")


def set_workload_status(scene: Scene, job: str, status: dict[str, Any]) -> None:
    """Write a Workload's status as Kueue does (the status subresource; conditions given as {type: (status, reason)})."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": type_, "status": value, "reason": reason, "message": f"{reason} (set by the audit)",
                   "lastTransitionTime": now} for type_, (value, reason) in status.pop("conditions").items()]
    scene.jobs.kubectl("patch", "workloads.kueue.x-k8s.io", workload_of(scene.jobs, job)["metadata"]["name"],
                       "--subresource=status", "--type=merge",
                       "-p", json.dumps({"status": {**status, "conditions": conditions}}))


def kueue_admits_evicts_and_readmits_a_queued_job(scene: Scene) -> None:
    """Kueue's path with its CRDs only: the Workload created, admitted with a flavor (its node labels read),
    evicted (pods deleted, quota released), admitted again, and marked Finished when the job succeeds."""
    jobs, flavor = scene.jobs, f"audit-{scene.namespace}"
    install_kueue_crds(scene)
    scene.cluster.kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor},
         "spec": {"nodeLabels": {"node.kubernetes.io/instance-type": "cpu-16"}}}))
    queued = job_manifest("queued")
    queued["metadata"]["labels"] = {QUEUE_LABEL: "team"}
    scene.apply(queued)
    workload = wait_for(lambda: workload_of(jobs, "queued"), what="the operator's Workload")
    wait_for(lambda: jobs.condition("queued", "Suspended").get("reason") == "WaitingForKueue", what="WaitingForKueue")
    assert jobs.pods("queued") == []
    [pod_set] = workload["spec"]["podSets"]
    admitted = {"clusterQueue": "audit", "podSetAssignments": [
        {"name": pod_set["name"], "count": pod_set["count"], "flavors": {"cpu": flavor, "memory": flavor}}]}
    set_workload_status(scene, "queued", {"admission": admitted, "conditions": {
        "QuotaReserved": ("True", "QuotaReserved"), "Admitted": ("True", "Admitted")}})
    pods = jobs.wait_running_pods("queued", 2)
    assert all(p["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "cpu-16"
               and p["spec"]["nodeName"].startswith("cpu-node-") for p in pods), [p["spec"] for p in pods]

    set_workload_status(scene, "queued", {"conditions": {
        "QuotaReserved": ("True", "QuotaReserved"), "Admitted": ("True", "Admitted"), "Evicted": ("True", "Preempted")}})
    wait_for(lambda: jobs.pods("queued") == [], what="the evicted job's pods deleted")
    wait_for(lambda: condition(w := workload_of(jobs, "queued"), "QuotaReserved").get("status") == "False"
             and not w["status"].get("admission") and condition(w, "Requeued").get("status") == "True",
             what="the evicted Workload's quota released")

    set_workload_status(scene, "queued", {"admission": admitted, "conditions": {
        "QuotaReserved": ("True", "QuotaReserved"), "Admitted": ("True", "Admitted"), "Evicted": ("False", "QuotaReserved")}})
    jobs.wait_running_pods("queued", 2)
    succeed(jobs, "queued")
    wait_for(lambda: condition(workload_of(jobs, "queued"), "Finished").get("reason") == "Succeeded",
             what="the Workload Finished")
    scene.cluster.kubectl("delete", "resourceflavors.kueue.x-k8s.io", flavor)


SCENARIOS: list[Callable[[Scene], None]] = [
    training_job_succeeds, failed_pod_restarts_the_gang, finished_job_is_deleted_by_its_ttl,
    suspended_job_loses_its_pods, existing_service_account_is_not_borrowed, model_deployment_scales_and_rolls_out,
    gpu_rollout_checks_free_capacity, model_from_a_training_job, autoscaling_with_and_without_keda_and_prometheus_operator,
    kueue_admits_evicts_and_readmits_a_queued_job,
]


# --- what was used, and what it implies --------------------------------------------------------------------------

Use = tuple[str, str, str, str]  # (namespace, "" when cluster-scoped or across namespaces; group, resource, verb)
OPERATOR_SETS = ("MODELFLEET_METRICS_PORT", "MODELFLEET_HEALTH_PORT", "MODELFLEET_METRICS_ADDRESS",
                 "MODELFLEET_HEALTH_ADDRESS")  # OperatorProcess picks free ports on 127.0.0.1


@dataclass(frozen=True)
class BoundRole:
    """A rendered ClusterRole (namespace "") or Role bound to the operator's ServiceAccount."""

    kind: str
    name: str
    namespace: str
    rules: list[dict[str, Any]]

    def covers(self, namespace: str) -> bool:
        return not self.namespace or self.namespace == namespace


@dataclass
class Audit:
    namespace: str  # of the operator's ServiceAccount
    account: str
    roles: list[BoundRole]  # what the chart rendered, applied as rendered
    requests: list[Request]  # everything the operator asked the API server
    implied: set[Use]  # permissions the API server checks without a request of their own

    @property
    def uses(self) -> set[Use]:
        return {(r.namespace, r.group, r.resource, r.verb) for r in self.requests} | self.implied


def bound_roles(objects: list[dict[str, Any]], account: str) -> list[BoundRole]:
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding"
              else "") for b in objects if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])}
    roles = [BoundRole(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""), o["rules"])
             for o in objects if o["kind"] in ("ClusterRole", "Role")]
    return [r for r in roles if (r.kind, r.name, r.namespace) in bound]


def implied_by(cluster: LocalCluster, namespace: str, requests: list[Request]) -> set[Use]:
    """What the API server authorizes inside other requests (no audit event of their own):
    - server-side apply that creates an object (answered 201) is also authorized as "create";
    - RBAC's escalation check: the operator may create a Role only with permissions it holds itself;
    - OwnerReferencesPermissionEnforcement: a child with blockOwnerDeletion needs update on its owner's finalizers."""
    implied = {(r.namespace, r.group, r.resource, "create") for r in requests if r.verb == "patch" and r.code == 201}
    for role in json.loads(cluster.kubectl("get", "roles", "-n", namespace, "-o", "json").stdout)["items"]:
        if any(r.resource == "roles" and r.verb == "create" and r.name == role["metadata"]["name"] for r in requests):
            implied |= {(namespace, *permission) for permission in grants(role["rules"])}
    created = {(r.group, r.resource, r.name) for r in requests if r.code == 201 and r.namespace == namespace}
    for group, resource, name in created:
        api = f"{resource}.{group}" if group else resource
        child = cluster.kubectl("get", api, name, "-n", namespace, "-o", "json", check=False)
        for ref in json.loads(child.stdout)["metadata"].get("ownerReferences", []) if child.returncode == 0 else []:
            if ref.get("blockOwnerDeletion"):
                implied.add((namespace, ref["apiVersion"].split("/")[0], f"{ref['kind'].lower()}s/finalizers", "update"))
    return implied


def differences(roles: list[BoundRole], uses: set[Use]) -> tuple[dict[str, set[Permission]], set[Use]]:
    """({role: what it grants that nothing in its scope used}, what was used that no role grants in its scope)."""
    unused = {}
    for role in roles:
        used = {(group, resource, verb) for namespace, group, resource, verb in uses if role.covers(namespace)}
        if extra := grants(role.rules) - used:
            unused[f"{role.kind} {role.namespace + '/' if role.namespace else ''}{role.name}"] = extra
    missing = {use for use in uses if not any(role.covers(use[0]) and use[1:] in grants(role.rules) for role in roles)}
    return unused, missing


def operator_settings(objects: list[dict[str, Any]], namespace: str) -> tuple[dict[str, str], list[str]]:
    """The rendered Deployment's environment (the downward API resolved as for a pod of it) and arguments."""
    deployment = one(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    pod = {"metadata.namespace": namespace, "metadata.name": f"{deployment['metadata']['name']}-audited"}
    env = {e["name"]: e["value"] if "value" in e else pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
           for e in container["env"] if e["name"] not in OPERATOR_SETS}
    return env, container["args"][1:]  # after "operator"


@pytest.fixture(scope="module", params=["cluster-wide", "watch-namespaces"])
def audit(request: pytest.FixtureRequest, cluster: LocalCluster, crds: list[str], helm: Helm,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audit]:
    """The operator, configured and authorized as the chart renders it (all namespaces, or watchNamespaces with
    per-namespace Roles), through every scenario; then what the audit log says it did."""
    home = f"rbac-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", home)
    with store_namespace(cluster) as jobs:
        values = {"watchNamespaces": [jobs.namespace]} if request.param == "watch-namespaces" else {}
        rendered = helm.template(values, namespace=home, release=f"audit-{home}")
        objects = [o for o in rendered if o["kind"] in RBAC_KINDS]
        account = one(objects, "ServiceAccount")["metadata"]["name"]
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        env, args = operator_settings(rendered, home)
        operator = operator_as(cluster, home, account, tmp_path_factory.mktemp("audited-operator"), env, args)
        scene = Scene(cluster, jobs, Kube(cluster.kubeconfig))
        try:
            operator.start()
            try:
                for scenario in SCENARIOS:
                    scenario(scene)
            except BaseException:
                print(f"operator log (end):\n{operator.log()[-8000:]}")
                raise
            operator.stop()
            requests = requests_of(cluster.audit_log, f"system:serviceaccount:{home}:{account}")
            implied = implied_by(cluster, jobs.namespace, requests)
            yield Audit(home, account, bound_roles(objects, account), requests, implied)
        finally:
            operator.stop()
            cluster.kubectl("delete", "--ignore-not-found", "--wait=true", *OTHER_CRDS, check=False)
            for crd in scene.crds:
                cluster.kubectl("delete", "crd", crd, "--ignore-not-found", "--wait=true", check=False)
            for obj in objects:
                if not obj["metadata"].get("namespace"):
                    cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--wait=false", check=False)
            cluster.kubectl("delete", "namespace", home, "--wait=false", check=False)


def table(permissions: set[Permission] | set[Use]) -> str:
    return "\n".join(f"  {p[-1]:<8} {p[-2]:<32} {p[-3] or 'core':<26} {p[0] if len(p) == 4 else ''}"
                     for p in sorted(permissions, key=lambda p: (p[-3:], p[0])))


def test_the_operator_was_refused_nothing(audit: Audit) -> None:
    assert audit.requests, "no request of the operator's ServiceAccount in the audit log"
    refused = [r for r in audit.requests if r.denied]
    assert not refused, "the API server refused the operator:\n" + "\n".join(
        f"  {r.verb} {r.resource} {r.group or 'core'} {r.namespace}/{r.name}: {r.message}" for r in refused)


def test_the_audit_log_holds_only_service_accounts_outside_kube_system(cluster: LocalCluster, audit: Audit) -> None:
    users = {json.loads(line)["user"]["username"] for line in cluster.audit_log.read_text().splitlines()}
    assert f"system:serviceaccount:{audit.namespace}:{audit.account}" in users
    assert all(u.startswith("system:serviceaccount:") and ":kube-system:" not in u for u in users), users


def test_the_chart_grants_exactly_what_the_operator_used(audit: Audit) -> None:
    used = {use[1:] for use in audit.uses}
    print(f"\npermissions the operator used ({len(used)}):\n{table(used)}")
    unused, missing = differences(audit.roles, audit.uses)
    assert not unused, "the chart grants what the operator never used (remove it, see docs/security.md):\n" + "\n".join(
        f"{role}:\n{table(extra)}" for role, extra in unused.items())
    assert not missing, f"the operator used what the chart does not grant:\n{table(missing)}"


def test_an_added_grant_nobody_uses_fails(audit: Audit) -> None:
    unused, missing = differences(audit.roles, audit.uses)
    first = audit.roles[0]
    extra = replace(first, rules=[*first.rules, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    label = f"{first.kind} {first.namespace + '/' if first.namespace else ''}{first.name}"
    assert differences([extra, *audit.roles[1:]], audit.uses) == (
        {**unused, label: unused.get(label, set()) | {("", "secrets", "get")}}, missing)


def test_a_removed_grant_the_operator_uses_fails(audit: Audit) -> None:
    unused, missing = differences(audit.roles, audit.uses)
    creates = {use for use in audit.uses if use[1:] == ("", "pods", "create")}
    assert creates, "the operator created no pod"
    without = [replace(role, rules=[{**rule, "verbs": [v for v in rule["verbs"] if v != "create"]}
                                    if "pods" in rule["resources"] else rule for rule in role.rules])
               for role in audit.roles]
    assert differences(without, audit.uses) == (unused, missing | creates)
