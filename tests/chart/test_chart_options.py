"""The chart as others embed it: a subchart with `global:` values, monitors for GitOps renders without a cluster,
relabelings, extra objects, endpoint addresses, and a schema that describes every value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, KUBE_VERSION, MONITORING_API, Helm, find, one, values_args
from tests.chart.test_render import env_of

RELABEL = {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
DROP = {"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def test_global_image_registry_replaces_the_registry_of_every_image(helm: Helm) -> None:
    objects = helm.template({"global": {"imageRegistry": "mirror.corp:5000"},
                             "workloadImages": {"trainer": "docker.io/team/trainer:2", "runtime": "team/runtime:3"}})
    assert pod_spec(objects)["containers"][0]["image"] == "mirror.corp:5000/modelfleet/modelfleet-operator:0.1.0"
    env = env_of(one(objects, "Deployment"))
    # A registry host is replaced; a repository without one (Docker Hub's "team/runtime") gets the mirror in front.
    assert env["MODELFLEET_TRAINER_IMAGE"] == "mirror.corp:5000/team/trainer:2"
    assert env["MODELFLEET_RUNTIME_IMAGE"] == "mirror.corp:5000/team/runtime:3"
    digest = "sha256:" + "ab" * 32
    pinned = pod_spec(helm.template({"global": {"imageRegistry": "mirror.corp"}, "image": {"digest": digest}}))
    assert pinned["containers"][0]["image"] == f"mirror.corp/modelfleet/modelfleet-operator@{digest}"
    assert pod_spec(helm.template())["containers"][0]["image"] == "ghcr.io/modelfleet/modelfleet-operator:0.1.0"


def test_global_pull_secrets_join_the_charts_own(helm: Helm) -> None:
    spec = pod_spec(helm.template({"global": {"imagePullSecrets": ["corp", {"name": "shared"}]},
                                   "imagePullSecrets": [{"name": "own"}, "shared"]}))
    assert spec["imagePullSecrets"] == [{"name": "corp"}, {"name": "shared"}, {"name": "own"}]
    assert "imagePullSecrets" not in pod_spec(helm.template())


def parent_chart(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A parent chart with modelfleet under charts/, as `helm dependency build` leaves it."""
    parent = tmp_path / "platform"
    shutil.copytree(CHART, parent / "charts" / "modelfleet")
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "modelfleet", "version": yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    return parent


def test_works_as_a_subchart_with_global_values(helm: Helm, tmp_path: Path) -> None:
    parent = parent_chart(tmp_path, {
        "global": {"imageRegistry": "mirror.corp", "imagePullSecrets": ["corp"]},
        "modelfleet": {"watchNamespaces": ["team-a"], "metrics": {"assumePrometheusOperator": True}}})
    lint = helm.run("lint", "--strict", str(parent), "--kube-version", KUBE_VERSION, check=False)
    assert lint.returncode == 0 and "[ERROR]" not in lint.stdout, lint.stdout + lint.stderr
    objects = helm.template(release="platform", chart=parent)
    spec = pod_spec(objects)
    assert spec["containers"][0]["image"] == "mirror.corp/modelfleet/modelfleet-operator:0.1.0"
    assert spec["imagePullSecrets"] == [{"name": "corp"}]
    assert spec["serviceAccountName"] == "platform-modelfleet"
    assert one(objects, "Role", "platform-modelfleet")["metadata"]["namespace"] == "team-a"
    assert {o["metadata"]["name"] for o in find(objects, "CustomResourceDefinition")} == {
        "trainingjobs.modelfleet.dev", "modeldeployments.modelfleet.dev"}
    assert one(objects, "ServiceMonitor") and one(objects, "PodMonitor")
    # The subchart's schema still applies to the parent's values for it, naming the field.
    (parent / "values.yaml").write_text(yaml.safe_dump({"modelfleet": {"operator": {"metricsPort": 0}}}))
    refused = helm.run("template", "platform", str(parent), check=False)
    assert refused.returncode != 0 and "/operator/metricsPort" in refused.stderr


def test_monitors_can_be_forced_for_renders_without_a_cluster(helm: Helm) -> None:
    assert not find(helm.template(), "ServiceMonitor")
    objects = helm.template({"metrics": {"assumePrometheusOperator": True}})  # no --api-versions: like GitOps
    assert one(objects, "ServiceMonitor") and one(objects, "PodMonitor")
    assert "prometheus.io/scrape" not in (one(objects, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {})
    off = helm.template({"metrics": {"assumePrometheusOperator": True, "trainerPodMonitor": {"enabled": False}}})
    assert one(off, "ServiceMonitor") and not find(off, "PodMonitor")


def test_relabelings_reach_both_monitors(helm: Helm) -> None:
    objects = helm.template({"metrics": {
        "serviceMonitor": {"relabelings": [RELABEL], "metricRelabelings": [DROP]},
        "trainerPodMonitor": {"relabelings": [RELABEL], "metricRelabelings": [DROP]}}}, api_versions=[MONITORING_API])
    [endpoint] = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"] == [RELABEL] and endpoint["metricRelabelings"] == [DROP]
    [trainers] = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert trainers["relabelings"] == [{"sourceLabels": ["__meta_kubernetes_pod_label_modelfleet_dev_trainingjob"],
                                        "targetLabel": "trainingjob"}, RELABEL]
    assert trainers["metricRelabelings"] == [DROP]
    [plain] = one(helm.template(api_versions=[MONITORING_API]), "ServiceMonitor")["spec"]["endpoints"]
    assert "relabelings" not in plain and "metricRelabelings" not in plain


def test_extra_objects_are_rendered_with_tpl(helm: Helm) -> None:
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "{{ .Release.Name }}-deny", "namespace": "{{ .Release.Namespace }}"},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    as_text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-notes\ndata:\n  chart: {{ .Chart.Name }}\n"
    objects = helm.template({"extraObjects": [policy, as_text]}, namespace="ops", release="mf")
    rendered = one(objects, "NetworkPolicy")
    assert rendered["metadata"] == {"name": "mf-deny", "namespace": "ops"} and rendered["spec"] == policy["spec"]
    assert one(objects, "ConfigMap", "mf-notes")["data"] == {"chart": "modelfleet"}
    assert not find(helm.template(), "NetworkPolicy")


def test_endpoint_addresses_reach_the_operator(helm: Helm) -> None:
    """The defaults (0.0.0.0) are checked in test_render.py's test_operator_deployment."""
    env = env_of(one(helm.template({"operator": {"metricsAddress": "127.0.0.1", "healthAddress": "::"}}), "Deployment"))
    assert (env["MODELFLEET_METRICS_ADDRESS"], env["MODELFLEET_HEALTH_ADDRESS"]) == ("127.0.0.1", "::")


def schema_properties(node: dict, path: str = "") -> list[tuple[str, dict]]:
    found = []
    for name, child in (node.get("properties") or {}).items():
        found.append((f"{path}.{name}".lstrip("."), child))
        found += schema_properties(child, f"{path}.{name}")
    return found


def test_every_value_has_a_description_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = dict(schema_properties(schema))
    undescribed = [path for path, node in properties.items()
                   if not path.endswith("items") and not (node.get("description") or "").strip()]
    assert not undescribed, undescribed

    def leaves(values: Any, path: str = "") -> list[str]:
        if isinstance(values, dict) and values and path not in ("podSecurityContext", "securityContext", "resources"):
            return [leaf for key, value in values.items() for leaf in leaves(value, f"{path}.{key}".lstrip("."))]
        return [path]
    # Every default in values.yaml is a described property (additionalProperties: false already refuses others).
    assert set(leaves(yaml.safe_load((CHART / "values.yaml").read_text()))) <= set(properties)


@pytest.mark.parametrize(("values", "message"), [
    ({"global": {"imageRegistry": "mirror corp"}}, "at '/global/imageRegistry'"),
    ({"global": {"imagePullSecrets": [{"nom": "x"}]}}, "at '/global/imagePullSecrets/0'"),
    ({"metrics": {"assumePrometheusOperator": "yes"}}, "at '/metrics/assumePrometheusOperator': got string, want boolean"),
    ({"metrics": {"serviceMonitor": {"relabelings": {"a": 1}}}}, "at '/metrics/serviceMonitor/relabelings': got object"),
    ({"extraObjects": {"kind": "ConfigMap"}}, "at '/extraObjects': got object, want array"),
    ({"operator": {"healthAddress": ""}}, "at '/operator/healthAddress'"),
], ids=lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else "")
def test_schema_rejects_bad_new_values_naming_the_field(helm: Helm, values: dict, message: str) -> None:
    result = helm.run("template", "mf", str(CHART), *values_args(helm.home, values), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
