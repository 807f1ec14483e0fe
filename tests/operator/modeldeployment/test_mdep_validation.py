"""Admission: the API server itself (schema and CEL) rejects invalid ModelDeployments with a message that
names the field, and accepts the examples. Server-side dry runs: nothing is stored, no operator needed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
DIGEST = "sha256:" + "ab" * 32
BASE: dict[str, Any] = {
    "apiVersion": "modelfleet.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat"},
    "spec": {"model": {"uri": "pvc://models/tiny"}},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"].update(changes)
    return obj


def with_model(**changes: Any) -> dict[str, Any]:
    return with_spec(model={**BASE["spec"]["model"], **changes})


ONE_OF = "exactly one of spec.model.uri and spec.model.trainingJobRef"
INVALID = [
    ("no model", {**BASE, "spec": {"replicas": 1}}, "spec.model"),
    ("uri and trainingJobRef", with_model(trainingJobRef={"name": "tj"}), ONE_OF),
    ("neither uri nor trainingJobRef", with_spec(model={"dtype": "auto"}), ONE_OF),
    ("http uri", with_model(uri="http://models/tiny"), "spec.model.uri"),
    ("pvc without claim", with_model(uri="pvc://"), "spec.model.uri"),
    ("pvc bad claim", with_model(uri="pvc://Models_X/tiny"), "spec.model.uri"),
    ("relative file path", with_model(uri="file://data/tiny"), "spec.model.uri"),
    ("file path with ..", with_model(uri="file:///data/../etc"), "spec.model.uri"),
    ("s3 without bucket", with_model(uri="s3://"), "spec.model.uri"),
    ("bad digest", with_model(digest="md5:1234"), "spec.model.digest"),
    ("digest with trainingJobRef", with_spec(model={"trainingJobRef": {"name": "tj"}, "digest": DIGEST}),
     "spec.model.digest"),
    ("s3 options on pvc", with_model(s3={"region": "eu-west-1"}), "spec.model.s3"),
    ("bad trainingJobRef name", with_spec(model={"trainingJobRef": {"name": "Bad_Name"}}),
     "spec.model.trainingJobRef.name"),
    ("unknown dtype", with_model(dtype="int8"), "spec.model.dtype"),
    ("tiny maxModelLen", with_model(maxModelLen=0), "spec.model.maxModelLen"),
    ("served name with space", with_model(servedModelName="my model"), "spec.model.servedModelName"),
    ("negative replicas", with_spec(replicas=-1), "spec.replicas"),
    ("min above max", with_spec(autoscaling={"minReplicas": 5, "maxReplicas": 2, "target": 3}),
     "spec.autoscaling.minReplicas"),
    ("unknown metric", with_spec(autoscaling={"maxReplicas": 2, "target": 3, "metric": "CPU"}),
     "spec.autoscaling.metric"),
    ("zero target", with_spec(autoscaling={"maxReplicas": 2, "target": 0}), "spec.autoscaling.target"),
    ("kv usage above 1", with_spec(autoscaling={"maxReplicas": 2, "target": 80, "metric": "KVCacheUsage"}),
     "spec.autoscaling.target"),
    ("no maxReplicas", with_spec(autoscaling={"target": 3}), "spec.autoscaling.maxReplicas"),
    ("reserved env", with_spec(env=[{"name": "MODELFLEET_API_KEY", "value": "secret"}]), "spec.env[0].name"),
    ("duplicate env", with_spec(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "spec.env[1]"),
    ("env value and valueFrom", with_spec(env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]),
     "spec.env[0]"),
    ("kv blocks and memory", with_spec(runtime={"numKvBlocks": 100, "kvCacheMemory": "1Gi"}),
     "spec.runtime.kvCacheMemory"),
    ("zero max seqs", with_spec(runtime={"maxNumSeqs": 0}), "spec.runtime.maxNumSeqs"),
    ("block size", with_spec(runtime={"blockSize": 12}), "spec.runtime.blockSize"),
    ("long drain", with_spec(runtime={"drainTimeoutSeconds": 7200}), "spec.runtime.drainTimeoutSeconds"),
    ("no surge, no unavailable", with_spec(rollout={"maxSurge": 0, "maxUnavailable": "0%"}),
     "spec.rollout.maxUnavailable"),
    ("bad surge", with_spec(rollout={"maxSurge": "lots"}), "spec.rollout.maxSurge"),
    ("negative unavailable", with_spec(rollout={"maxUnavailable": -1}), "spec.rollout.maxUnavailable"),
    ("api key without name", with_spec(apiKeySecretRef={"key": "k"}), "spec.apiKeySecretRef.name"),
    ("gpu requests differ from limits",
     with_spec(resources={"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}),
     "spec.resources.limits"),
    ("bad quantity", with_spec(resources={"limits": {"memory": "lots"}}), "spec.resources.limits[memory]"),
    ("pull policy", with_spec(imagePullPolicy="Sometimes"), "spec.imagePullPolicy"),
    ("short startup timeout", with_spec(probes={"startupTimeoutSeconds": 5}), "spec.probes.startupTimeoutSeconds"),
    ("toleration operator", with_spec(tolerations=[{"key": "a", "operator": "Maybe"}]), "spec.tolerations[0].operator"),
    ("unknown field", with_spec(replica=2), "replica"),
    # Names valid for every child: the Service is named like the ModelDeployment.
    ("name too long for its Service", {**BASE, "metadata": {"name": "a" * 64}}, "metadata.name"),
    ("dotted name", {**BASE, "metadata": {"name": "chat.v1"}}, "metadata.name"),
    ("trainingJobRef name no TrainingJob can have", with_spec(model={"trainingJobRef": {"name": "a" * 53}}),
     "spec.model.trainingJobRef.name"),
    ("bad podAnnotations key", with_spec(podAnnotations={"bad key": "x"}), "spec.podAnnotations"),
    ("apparmor podAnnotation", with_spec(podAnnotations={
        "container.apparmor.security.beta.kubernetes.io/runtime": "unconfined"}), "spec.podAnnotations"),
    ("nodeSelector value", with_spec(nodeSelector={"zone": "two words"}), "spec.nodeSelector"),
    ("nodeSelector key", with_spec(nodeSelector={"-zone": "a"}), "spec.nodeSelector"),
    ("toleration Exists with value", with_spec(tolerations=[{"key": "a", "operator": "Exists", "value": "b"}]),
     "spec.tolerations[0].value"),
    ("imagePullSecrets name", with_spec(imagePullSecrets=[{"name": "Not_A_Name"}]), "spec.imagePullSecrets[0].name"),
    ("priorityClassName", with_spec(priorityClassName="Not_A_Name"), "spec.priorityClassName"),
    ("apiKeySecretRef key", with_spec(apiKeySecretRef={"name": "keys", "key": "a/b"}), "spec.apiKeySecretRef.key"),
    ("env name with =", with_spec(env=[{"name": "A=B", "value": "1"}]), "spec.env[0].name"),
    ("env with two sources", with_spec(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"},
                                                                        "configMapKeyRef": {"name": "c", "key": "k"}}}]),
     "spec.env[0].valueFrom"),
    ("image with space", with_spec(image="my image:1"), "spec.image"),
    # Values the runtime would exit 2 on.
    ("zero waiting requests", with_spec(runtime={"maxWaitingRequests": 0}), "spec.runtime.maxWaitingRequests"),
    ("zero drain timeout", with_spec(runtime={"drainTimeoutSeconds": 0}), "spec.runtime.drainTimeoutSeconds"),
    ("zero KV cache memory", with_spec(runtime={"kvCacheMemory": "0"}), "spec.runtime.kvCacheMemory"),
    ("maxModelLen beyond the KV cache", with_spec(model={"uri": "pvc://models/tiny", "maxModelLen": 4096},
                                                  runtime={"numKvBlocks": 10, "blockSize": 16}), "spec.model.maxModelLen"),
    ("zero shm", with_spec(shmSize="0"), "spec.shmSize"),
    # Quantities and percentages.
    ("negative cpu", with_spec(resources={"requests": {"cpu": "-500m"}}), "spec.resources.requests"),
    ("request above limit", with_spec(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
     "spec.resources.requests"),
    ("fractional gpu", with_spec(resources={"limits": {"nvidia.com/gpu": "0.5"}}), "spec.resources.limits"),
    ("surge above 100%", with_spec(rollout={"maxSurge": "150%"}), "spec.rollout.maxSurge"),
    ("unavailable above 100%", with_spec(rollout={"maxUnavailable": "101%"}), "spec.rollout.maxUnavailable"),
    # Rollout policy and canary.
    ("unknown whenNoRoom", with_spec(rollout={"whenNoRoom": "Evict"}), "spec.rollout.whenNoRoom"),
    ("canary without steps", with_spec(rollout={"canary": {"steps": [], "analysis": {"metrics": [
        {"name": "ErrorRate", "max": 0.01}]}}}), "spec.rollout.canary.steps"),
    ("canary weight 100", with_spec(rollout={"canary": {"steps": [{"weight": 100}], "analysis": {"metrics": [
        {"name": "ErrorRate", "max": 0.01}]}}}), "spec.rollout.canary.steps[0].weight"),
    ("canary short pause", with_spec(rollout={"canary": {"steps": [{"weight": 50, "pauseSeconds": 1}], "analysis": {
        "metrics": [{"name": "ErrorRate", "max": 0.01}]}}}), "spec.rollout.canary.steps[0].pauseSeconds"),
    ("canary metric without bound", with_spec(rollout={"canary": {"steps": [{"weight": 50}], "analysis": {
        "metrics": [{"name": "ErrorRate"}]}}}), "give max, maxRatioToStable or both"),
    ("canary unknown metric", with_spec(rollout={"canary": {"steps": [{"weight": 50}], "analysis": {
        "metrics": [{"name": "GPUTemperature", "max": 80}]}}}), "spec.rollout.canary.analysis.metrics[0].name"),
    ("canary metric twice", with_spec(rollout={"canary": {"steps": [{"weight": 50}], "analysis": {
        "metrics": [{"name": "ErrorRate", "max": 0.1}, {"name": "ErrorRate", "max": 0.2}]}}}), "each metric may appear once"),
    ("canary zero ratio", with_spec(rollout={"canary": {"steps": [{"weight": 50}], "analysis": {
        "metrics": [{"name": "TimeToFirstTokenP95", "maxRatioToStable": 0}]}}}), "maxRatioToStable must be greater than 0"),
    ("other reserved env", with_spec(env=[{"name": "MODELFLEET_FAULT_OTHER", "value": "1"}]), "spec.env[0].name"),
]


@pytest.mark.parametrize("obj, field", [(o, f) for _, o, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(cluster: Any, crds: list[str], namespace: str,
                                                   obj: dict[str, Any], field: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj),
                             check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(obj)}"
    assert field in result.stderr, result.stderr


def test_examples_and_a_full_spec_are_accepted(cluster: Any, crds: list[str], namespace: str) -> None:
    full = with_spec(
        model={"uri": "s3://models/llama/v3", "digest": DIGEST, "servedModelName": "llama-3", "dtype": "bfloat16",
               "maxModelLen": 8192, "s3": {"endpoint": "http://minio:9000", "region": "us-east-1",
                                           "credentialsSecretRef": {"name": "s3"}, "image": "amazon/aws-cli:2"}},
        replicas=2, autoscaling={"minReplicas": 2, "maxReplicas": 8, "metric": "KVCacheUsage", "target": 0.75},
        image="example/modelfleet:1", imagePullPolicy="Always", imagePullSecrets=[{"name": "registry"}],
        resources={"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "32Gi", "nvidia.com/gpu": 1}},
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        priorityClassName="inference", podAnnotations={"team": "ml"},
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"},
             {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        runtime={"maxNumSeqs": 128, "maxNumBatchedTokens": 8192, "kvCacheMemory": "20Gi", "blockSize": 32,
                 "maxWaitingRequests": 256, "requestTimeoutSeconds": 600, "drainTimeoutSeconds": 60},
        apiKeySecretRef={"name": "keys", "key": "token"}, rollout={"maxSurge": "25%", "maxUnavailable": 0},
        probes={"startupTimeoutSeconds": 3600}, shmSize="8Gi",
    )
    documents = [full] + [doc for path in sorted(REPO.glob("examples/modeldeployment-*.yaml"))
                          for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(documents) >= 3
    for doc in documents:
        result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(doc),
                                 check=False)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("obj", [
    {**BASE, "metadata": {"name": "a" * 63}},
    with_spec(rollout={"maxSurge": "100%", "maxUnavailable": "100%"}),
    with_spec(runtime={"maxWaitingRequests": 1, "drainTimeoutSeconds": 1, "numKvBlocks": 16, "blockSize": 16},
              model={"uri": "pvc://models/tiny", "maxModelLen": 256}),
    with_spec(podAnnotations={"example.com/team": "ml", "note": "free text, any characters: ok"},
              nodeSelector={"kubernetes.io/arch": "amd64", "empty": ""}),
    with_spec(resources={"requests": {"nvidia.com/gpu": 1, "cpu": "2"}, "limits": {"cpu": "2", "memory": "1Gi"}}),
    with_spec(env=[{"name": "my.setting", "value": "1"},
                   {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token", "optional": True}}}]),
    with_spec(rollout={"whenNoRoom": "Replace", "canary": {
        "steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50}],
        "analysis": {"prometheusAddress": "http://prometheus.monitoring:9090", "metrics": [
            {"name": "TimeToFirstTokenP95", "max": 0.5, "maxRatioToStable": 1.5}, {"name": "ErrorRate", "max": 0.01},
            {"name": "RequestLatencyP95", "maxRatioToStable": 2}]}}},
              env=[{"name": "MODELFLEET_FAULT_LATENCY_MS", "value": "300"}]),
], ids=["63-char name", "100% surge", "smallest runtime values", "annotations and labels", "gpu in requests only",
        "env sources", "canary and fault switch"])
def test_valid_edge_cases_are_accepted(cluster: Any, crds: list[str], namespace: str, obj: dict[str, Any]) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj),
                             check=False)
    assert result.returncode == 0, result.stderr


def test_defaults_are_filled_in_by_the_api_server(cluster: Any, crds: list[str], namespace: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                             input=json.dumps(BASE))
    spec = json.loads(result.stdout)["spec"]
    assert spec["replicas"] == 1 and spec["model"]["dtype"] == "auto"
    assert spec["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "whenNoRoom": "Wait"}
    assert spec["runtime"] == {"blockSize": 16, "drainTimeoutSeconds": 30}
    assert spec["probes"] == {"startupTimeoutSeconds": 1800} and spec["shmSize"] == "1Gi"


def test_explain_describes_the_fields(cluster: Any, crds: list[str]) -> None:
    out = cluster.kubectl("explain", "modeldeployment.spec.rollout").stdout
    assert "canary" in out and "maxSurge" in out and "whenNoRoom" in out
