"""The chart without a cluster: lint, what it renders for each option, its schema, RBAC rules, CRD copies."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.chart.helm import CHART, KUBE_VERSION, MONITORING_API, REPO, Helm, find, one, values_args
from tests.chart.permissions import (FORBIDDEN_CLUSTER_WIDE, FORBIDDEN_IN_NAMESPACE, NEEDED_CLUSTER_WIDE, NEEDED_IN_NAMESPACE,
                                     NEEDED_WATCH_NAMESPACES_ONLY)
from tests.chart.rbac import allows, grants

OPERATOR_IMAGE = "ghcr.io/modelfleet/modelfleet-operator:0.1.0"
WORKLOAD_IMAGE = "ghcr.io/modelfleet/modelfleet:0.1.0"


def env_of(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["team-a", "team-b"]},
                                    {"dashboards": {"enabled": False}, "metrics": {"service": {"enabled": False}}}],
                         ids=["defaults", "watch-namespaces", "minimal"])
def test_lint_strict_passes(helm: Helm, values: dict | None) -> None:
    result = helm.run("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values_args(helm.home, values),
                      check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_default_render_has_exactly_the_operator_objects(helm: Helm) -> None:
    objects = helm.template()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["CustomResourceDefinition"] * 2 + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                                "Service", "Deployment"] + ["ConfigMap"] * 3
                           + ["Role", "RoleBinding", "PodDisruptionBudget"])  # leader election, 2 replicas
    assert {o["metadata"]["name"] for o in find(objects, "CustomResourceDefinition")} == {
        "trainingjobs.modelfleet.dev", "modeldeployments.modelfleet.dev"}
    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition" and not obj["kind"].startswith("Cluster"):
            assert obj["metadata"]["namespace"] == "modelfleet-system", obj["metadata"]["name"]


def test_operator_deployment(helm: Helm) -> None:
    deployment = one(helm.template(), "Deployment")
    assert deployment["spec"]["replicas"] == 2  # one leader, one standby
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == OPERATOR_IMAGE
    assert container["command"] == ["modelfleet"] and container["args"] == ["operator"]
    assert env_of(deployment) == {
        "MODELFLEET_TRAINER_IMAGE": WORKLOAD_IMAGE, "MODELFLEET_RUNTIME_IMAGE": WORKLOAD_IMAGE,
        "MODELFLEET_IMAGE_PULL_POLICY": "IfNotPresent", "MODELFLEET_METRICS_PORT": "8080", "MODELFLEET_HEALTH_PORT": "8081",
        "MODELFLEET_METRICS_ADDRESS": "0.0.0.0", "MODELFLEET_HEALTH_ADDRESS": "0.0.0.0",
        "MODELFLEET_ALLOW_HOST_PATHS": "false", "MODELFLEET_LEADER_ELECTION": "true",
        "MODELFLEET_LEADER_ELECTION_LEASE": "mf-modelfleet", "MODELFLEET_LEADER_ELECTION_NAMESPACE": None,
        "MODELFLEET_LEADER_ELECTION_IDENTITY": None, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    from_pod = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
                for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e}
    assert from_pod == {"MODELFLEET_LEADER_ELECTION_NAMESPACE": "metadata.namespace",
                        "MODELFLEET_LEADER_ELECTION_IDENTITY": "metadata.name"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == "mf-modelfleet"
    # Pod Security "restricted", non-root, read-only root filesystem with a writable /tmp.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_image_options(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    deployment = one(helm.template({
        "image": {"repository": "registry.example/mf", "tag": "1.2.3", "pullPolicy": "Always"},
        "workloadImages": {"repository": "registry.example/mf-workload", "tag": "1.2.3-cuda",
                           "trainer": "registry.example/trainer:custom", "pullPolicy": "Always"},
        "operator": {"metricsPort": 9090, "healthPort": 9091, "verbose": True, "allowHostPaths": True,
                     "prometheusUrl": "http://prom.monitoring:9090", "extraEnv": [{"name": "EXTRA", "value": "x"}]},
    }), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/mf:1.2.3" and container["imagePullPolicy"] == "Always"
    assert container["args"] == ["operator", "--verbose"]
    env = env_of(deployment)
    assert env["MODELFLEET_TRAINER_IMAGE"] == "registry.example/trainer:custom"
    assert env["MODELFLEET_RUNTIME_IMAGE"] == "registry.example/mf-workload:1.2.3-cuda"
    assert env["MODELFLEET_IMAGE_PULL_POLICY"] == "Always"
    assert (env["MODELFLEET_METRICS_PORT"], env["MODELFLEET_HEALTH_PORT"]) == ("9090", "9091")
    assert env["MODELFLEET_ALLOW_HOST_PATHS"] == "true"
    assert env["MODELFLEET_PROMETHEUS_URL"] == "http://prom.monitoring:9090" and env["EXTRA"] == "x"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http-metrics": 9090, "health": 9091}
    pinned = one(helm.template({"image": {"digest": digest}}), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/modelfleet/modelfleet-operator@{digest}"


def test_cluster_wide_rbac_grants_what_the_code_uses_and_nothing_dangerous(helm: Helm) -> None:
    objects = helm.template()
    rules = one(objects, "ClusterRole")["rules"]
    for verb, resource, group in NEEDED_IN_NAMESPACE + NEEDED_CLUSTER_WIDE:
        assert allows(rules, verb, resource, group), (verb, resource, group)
    for verb, resource, group in FORBIDDEN_IN_NAMESPACE + FORBIDDEN_CLUSTER_WIDE:
        assert not allows(rules, verb, resource, group), (verb, resource, group)
    assert not any("*" in rule.get(key, []) for rule in rules for key in ("apiGroups", "resources", "verbs"))
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mf-modelfleet", "namespace": "modelfleet-system"}]


def test_cluster_role_grants_exactly_the_table_of_needs(helm: Helm) -> None:
    """The tables of permissions.py are the chart's rules (test_rbac_audit.py proves both against the audit log)."""
    granted = grants(one(helm.template(), "ClusterRole")["rules"])
    assert granted == {(g, r, v) for v, r, g in NEEDED_IN_NAMESPACE + NEEDED_CLUSTER_WIDE}


def test_watch_namespaces_uses_roles_per_namespace(helm: Helm) -> None:
    objects = helm.template({"watchNamespaces": ["team-a", "team-b"]})
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--namespace=team-a", "--namespace=team-b"]
    roles = [r for r in find(objects, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        for verb, resource, group in NEEDED_IN_NAMESPACE:
            assert allows(role["rules"], verb, resource, group), (verb, resource, group)
    bindings = [b for b in find(objects, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["kind"] == "Role" for b in bindings)
    cluster_rules = one(objects, "ClusterRole")["rules"]
    for verb, resource, group in NEEDED_CLUSTER_WIDE + NEEDED_WATCH_NAMESPACES_ONLY:
        assert allows(cluster_rules, verb, resource, group), (verb, resource, group)
    # Outside the watched namespaces: reads for GPU capacity and kopf only; no writes.
    for verb, resource, group in [("create", "pods", ""), ("get", "configmaps", ""),
                                  ("create", "roles", "rbac.authorization.k8s.io")]:
        assert not allows(cluster_rules, verb, resource, group), (verb, resource, group)


def test_leader_election_role_grants_only_the_lease_calls(helm: Helm) -> None:
    objects = helm.template()
    [role] = [r for r in find(objects, "Role") if r["metadata"]["name"] == "mf-modelfleet-leader-election"]
    assert role["metadata"]["namespace"] == "modelfleet-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["mf-modelfleet"],
         "verbs": ["get", "update"]}]
    [binding] = [b for b in find(objects, "RoleBinding") if b["metadata"]["name"] == "mf-modelfleet-leader-election"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "mf-modelfleet-leader-election"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mf-modelfleet", "namespace": "modelfleet-system"}]
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": one(objects, "Deployment")["spec"]["selector"]}


def test_without_leader_election_one_replica_recreates(helm: Helm) -> None:
    objects = helm.template({"leaderElection": {"enabled": False}, "replicaCount": 1})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert env_of(deployment)["MODELFLEET_LEADER_ELECTION"] == "false"
    assert not find(objects, "Role") and not find(objects, "PodDisruptionBudget")
    result = helm.run("template", "mf", str(CHART), *values_args(helm.home, {"leaderElection": {"enabled": False}}),
                      check=False)
    assert result.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in result.stderr


def test_rbac_and_service_account_can_be_left_to_the_user(helm: Helm) -> None:
    objects = helm.template({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-sa"}})
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    assert not find(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    result = helm.run("template", "mf", str(CHART), *values_args(helm.home, {"serviceAccount": {"create": False}}),
                      check=False)
    assert result.returncode != 0 and "serviceAccount.name is required" in result.stderr


def test_without_prometheus_operator_pods_carry_scrape_annotations(helm: Helm) -> None:
    objects = helm.template()
    assert not find(objects, "ServiceMonitor") and not find(objects, "PodMonitor")
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}


def test_with_prometheus_operator_monitors_replace_annotations(helm: Helm) -> None:
    objects = helm.template({"metrics": {"serviceMonitor": {"labels": {"release": "kps"}}}},
                            api_versions=[MONITORING_API])
    deployment = one(objects, "Deployment")
    assert "prometheus.io/scrape" not in (deployment["spec"]["template"]["metadata"].get("annotations") or {})
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    # The ServiceMonitor selects the metrics Service, whose port reaches the container's metrics port.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in container_ports
    trainers = one(objects, "PodMonitor")
    assert trainers["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "modelfleet", "modelfleet.dev/role": "trainer", "modelfleet.dev/node-rank": "0"}
    assert trainers["spec"]["namespaceSelector"] == {"any": True}
    endpoint = trainers["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_modelfleet_dev_trainingjob"],
            "targetLabel": "trainingjob"} in endpoint["relabelings"]
    scoped = helm.template({"watchNamespaces": ["team-a"]}, api_versions=[MONITORING_API])
    assert one(scoped, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_dashboards_ship_as_labelled_configmaps(helm: Helm) -> None:
    configmaps = find(helm.template(), "ConfigMap")
    assert sorted(c["metadata"]["name"] for c in configmaps) == [
        "mf-modelfleet-dashboard-operator", "mf-modelfleet-dashboard-serving", "mf-modelfleet-dashboard-training"]
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(key, text)] = configmap["data"].items()
        name = key.removeprefix("modelfleet-")
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())
    moved = find(helm.template({"dashboards": {"namespace": "monitoring", "label": "dash", "labelValue": "yes",
                                               "annotations": {"grafana_folder": "modelfleet"}}}), "ConfigMap")
    assert {c["metadata"]["namespace"] for c in moved} == {"monitoring"}
    assert all(c["metadata"]["labels"]["dash"] == "yes" and "grafana_dashboard" not in c["metadata"]["labels"]
               and c["metadata"]["annotations"] == {"grafana_folder": "modelfleet"} for c in moved)
    assert not find(helm.template({"dashboards": {"enabled": False}}), "ConfigMap")


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"image": {"digest": "latest"}}, "at '/image/digest': 'latest' does not match pattern"),
    ({"operator": {"metricsPort": 0}}, "at '/operator/metricsPort': minimum: got 0, want 1"),
    ({"operator": {"healthPort": "8081"}}, "at '/operator/healthPort': got string, want integer"),
    ({"operator": {"prometheusUrl": "prometheus:9090"}}, "at '/operator/prometheusUrl'"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"rbac": {"create": "yes"}}, "at '/rbac/create': got string, want boolean"),
    ({"dashboards": {"labelValue": 1}}, "at '/dashboards/labelValue': got number, want string"),
], ids=lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else "")
def test_schema_rejects_bad_values_naming_the_field(helm: Helm, values: dict, message: str) -> None:
    result = helm.run("template", "mf", str(CHART), *values_args(helm.home, values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_chart_crds_are_byte_identical_to_the_source() -> None:
    source = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source and copies == source
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/modelfleet/crds/{name} is stale: run hack/sync-chart-crds.sh")
    check = subprocess.run(["bash", str(REPO / "hack" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
