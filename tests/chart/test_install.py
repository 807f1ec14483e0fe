"""The chart against the local control plane: Pod Security admission, install/upgrade/uninstall, and RBAC
that is both sufficient (the real operator, authenticated as the chart's ServiceAccount, does its work)
and least-privilege (the API server's authorizer refuses what the operator must never do)."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Iterator

import pytest
import yaml

from modelfleet.images import chart_values
from modelfleet.localcluster import LocalCluster
from tests.chart.helm import CHART, REPO, Helm, pods_of, values_args
from tests.chart.identity import operator_as
from tests.chart.permissions import (FORBIDDEN_CLUSTER_WIDE, FORBIDDEN_IN_NAMESPACE, NEEDED_CLUSTER_WIDE, NEEDED_IN_NAMESPACE,
                                     NEEDED_WATCH_NAMESPACES_ONLY)
from tests.helpers import wait_for
from tests.operator.conftest import OperatorProcess

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster_helm(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster.bin_dir / "helm", tmp_path_factory.mktemp("helm"), dict(cluster.env))


def get(cluster: LocalCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def exists(cluster: LocalCluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, check=False).returncode == 0


def new_namespace(cluster: LocalCluster) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


class Release:
    """A helm release of the chart; uninstalled (and its namespace deleted) by the fixture that made it."""

    def __init__(self, helm: Helm, cluster: LocalCluster, namespace: str, values: dict | None = None) -> None:
        self.helm, self.cluster, self.namespace = helm, cluster, namespace
        self.name = f"mf-{namespace}"
        self.service_account = f"{self.name}-modelfleet"
        self.values = values

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def install(self, *extra: str) -> None:
        # On the real node the operator pod runs the image built from images/operator.Dockerfile.
        values = {**(chart_values(self.cluster.images) if self.cluster.images else {}), **(self.values or {})}
        self.helm.run("upgrade", "--install", self.name, str(CHART), "--namespace", self.namespace, "--wait",
                      "--timeout", "120s", *values_args(self.helm.home, values), *extra)

    def uninstall(self, check: bool = True) -> None:
        self.helm.run("uninstall", self.name, "--namespace", self.namespace, "--wait", check=check)

    def can(self, verb: str, resource: str, group: str, namespace: str | None) -> bool:
        """The API server's authorizer's answer (a SubjectAccessReview, the same as `kubectl auth can-i --as`,
        minus kubectl's discovery lookup, which fails for kinds whose CRDs are not installed, e.g. KEDA's)."""
        plural, _, subresource = resource.partition("/")
        attributes = {"verb": verb, "group": group, "resource": plural, "subresource": subresource}
        if namespace:
            attributes["namespace"] = namespace
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
            "user": self.user, "resourceAttributes": attributes,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}", "system:authenticated"]}}
        answer = json.loads(self.cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout)
        return bool(answer["status"].get("allowed"))


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, cluster_helm: Helm) -> Iterator[Release]:
    """The chart with default values (cluster-wide), installed once for this module's RBAC checks."""
    installed = Release(cluster_helm, cluster, new_namespace(cluster))
    installed.install()
    try:
        yield installed
    finally:
        installed.uninstall(check=False)
        cluster.kubectl("delete", "namespace", installed.namespace, "--wait=false", check=False)


def test_rendered_pods_pass_pod_security_restricted_admission(cluster: LocalCluster, namespace: str, helm: Helm) -> None:
    objects = helm.template(namespace=namespace)
    pods = pods_of(objects)
    assert pods, "the chart renders no pod template"
    for account in (o for o in objects if o["kind"] == "ServiceAccount"):  # admission looks the pod's one up
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(account))
    for pod in pods:
        result = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod),
                                 check=False)
        assert result.returncode == 0, result.stderr
        assert "PodSecurity" not in result.stderr
    # Control: the namespace really enforces "restricted", so the check above can fail.
    weakened = copy.deepcopy(pods[0])
    weakened["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    refused = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(weakened),
                              check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr


def test_install_upgrade_and_uninstall(cluster: LocalCluster, namespace: str, cluster_helm: Helm) -> None:
    release = Release(cluster_helm, cluster, namespace)
    release.install()
    deployment = get(cluster, "deployment", release.service_account, "-n", namespace)
    assert deployment["status"]["availableReplicas"] == 2
    for crd in ("trainingjobs.modelfleet.dev", "modeldeployments.modelfleet.dev"):
        established = get(cluster, "crd", crd)["status"]["conditions"]
        assert any(c["type"] == "Established" and c["status"] == "True" for c in established)
    pods = get(cluster, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release.name}")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == release.service_account
        assert pod["status"]["phase"] == "Running"
    # One of the two leads: it holds the release's Lease (the other stands by).
    lease = wait_for(lambda: exists(cluster, "lease", release.service_account, "-n", namespace)
                     and get(cluster, "lease", release.service_account, "-n", namespace), timeout=30, what="the Lease")
    assert lease["spec"]["holderIdentity"] in {p["metadata"]["name"] for p in pods}

    release.install("--set", "operator.verbose=true")
    wait_for(lambda: [p for p in get(cluster, "pods", "-n", namespace, "-l",
                                     f"app.kubernetes.io/instance={release.name}")["items"]
                      if "--verbose" in p["spec"]["containers"][0]["args"] and p["status"].get("phase") == "Running"],
             timeout=60, what="the upgraded operator pod")

    release.uninstall()
    for kind, name in [("deployment", release.service_account), ("serviceaccount", release.service_account),
                       ("service", f"{release.name}-modelfleet-metrics"),
                       ("configmap", f"{release.name}-modelfleet-dashboard-serving")]:
        assert not exists(cluster, kind, name, "-n", namespace), (kind, name)
    for kind in ("clusterrole", "clusterrolebinding"):
        assert not exists(cluster, kind, release.service_account), kind
    # Helm never deletes CRDs (that would delete every TrainingJob and ModelDeployment); docs/helm.md says so.
    assert exists(cluster, "crd", "trainingjobs.modelfleet.dev")


@pytest.mark.parametrize(("verb", "resource", "group"), NEEDED_IN_NAMESPACE)
def test_service_account_may_do_what_the_operator_does(release: Release, verb: str, resource: str, group: str) -> None:
    assert release.can(verb, resource, group, "default")


@pytest.mark.parametrize(("verb", "resource", "group"), NEEDED_CLUSTER_WIDE)
def test_service_account_may_read_cluster_wide(release: Release, verb: str, resource: str, group: str) -> None:
    assert release.can(verb, resource, group, None)


@pytest.mark.parametrize(("verb", "resource", "group"), FORBIDDEN_IN_NAMESPACE)
def test_service_account_may_not_in_a_namespace(release: Release, verb: str, resource: str, group: str) -> None:
    assert not release.can(verb, resource, group, "default")


@pytest.mark.parametrize(("verb", "resource", "group"), FORBIDDEN_CLUSTER_WIDE)
def test_service_account_may_not_cluster_wide(release: Release, verb: str, resource: str, group: str) -> None:
    assert not release.can(verb, resource, group, None)


def role(name: str, rules: list[dict]) -> str:
    return json.dumps({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
                       "rules": rules})


def test_escalation_rule_lets_the_operator_grant_progress_access_and_nothing_more(release: Release,
                                                                                   cluster: LocalCluster) -> None:
    """A job's progress Role is created by the operator; RBAC allows that only for permissions it holds."""
    as_operator = ("create", "--dry-run=server", "-n", "default", f"--as={release.user}", "-f", "-")
    progress = [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["job-progress"],
                 "verbs": ["get", "patch", "update"]}]
    allowed = cluster.kubectl(*as_operator, input=role("job-progress", progress), check=False)
    assert allowed.returncode == 0, allowed.stderr
    secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    refused = cluster.kubectl(*as_operator, input=role("steal-secrets", secrets), check=False)
    assert refused.returncode != 0 and "attempting to grant RBAC permissions not currently held" in refused.stderr


def test_watch_namespaces_confines_writes_to_those_namespaces(cluster: LocalCluster, cluster_helm: Helm) -> None:
    home, watched, other = new_namespace(cluster), new_namespace(cluster), new_namespace(cluster)
    scoped = Release(cluster_helm, cluster, home, {"watchNamespaces": [watched]})
    try:
        scoped.install()
        for verb, resource, group in NEEDED_IN_NAMESPACE:
            assert scoped.can(verb, resource, group, watched), (verb, resource, group)
        for verb, resource, group in NEEDED_CLUSTER_WIDE + NEEDED_WATCH_NAMESPACES_ONLY:
            assert scoped.can(verb, resource, group, None), (verb, resource, group)
        for verb, resource, group in [("create", "pods", ""), ("get", "configmaps", ""), ("patch", "deployments", "apps"),
                                      ("create", "roles", "rbac.authorization.k8s.io"),
                                      ("watch", "trainingjobs", "modelfleet.dev")]:
            assert not scoped.can(verb, resource, group, other), (verb, resource, group)
    finally:
        scoped.uninstall(check=False)
        for name in (home, watched, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- the real operator, authenticated as the chart's ServiceAccount ------------------------------------------------

@pytest.fixture(scope="module")
def operator_as_service_account(cluster: LocalCluster, release: Release,
                                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = operator_as(cluster, release.namespace, release.service_account, tmp_path_factory.mktemp("sa-operator"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


def apply_example(cluster: LocalCluster, namespace: str, file: str, name: str) -> dict:
    obj = yaml.safe_load((REPO / "examples" / file).read_text())
    obj["metadata"]["name"] = name
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    return obj


def test_operator_with_only_the_charts_permissions_creates_children(
        cluster: LocalCluster, namespace: str, release: Release, operator_as_service_account: OperatorProcess,
        helm: Helm) -> None:
    job = apply_example(cluster, namespace, "trainingjob-tiny.yaml", "train")
    name, nodes = job["metadata"]["name"], job["spec"]["nodes"]

    def trainer_pods() -> list[dict]:
        found = get(cluster, "pods", "-n", namespace, "-l", f"modelfleet.dev/trainingjob={name}")["items"]
        return found if len(found) == nodes else []

    pods = wait_for(trainer_pods, timeout=60, what=f"{nodes} trainer pods (log: {operator_as_service_account.log_path})")
    for kind in ("service", "configmap", "serviceaccount", "role", "rolebinding"):
        assert get(cluster, kind, "-n", namespace, "-l", f"modelfleet.dev/trainingjob={name}")["items"], kind
    # The chart's trainer PodMonitor selects exactly rank 0 and scrapes its "metrics" port.
    monitor = next(o for o in helm.template(api_versions=["monitoring.coreos.com/v1"]) if o["kind"] == "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
    assert [p["metadata"]["name"] for p in selected] == [f"{name}-node-0"]
    ports = {port["name"] for c in selected[0]["spec"]["containers"] for port in c.get("ports", [])}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports

    deployment = apply_example(cluster, namespace, "modeldeployment-tiny.yaml", "serve")
    wait_for(lambda: exists(cluster, "deployment", deployment["metadata"]["name"], "-n", namespace),
             timeout=60, what=f"the runtime Deployment (log: {operator_as_service_account.log_path})")
    wait_for(lambda: exists(cluster, "service", deployment["metadata"]["name"], "-n", namespace),
             timeout=30, what="the runtime Service")

    log = operator_as_service_account.log()
    assert "Forbidden" not in log and " 403" not in log and "forbidden" not in log, log[-4000:]
