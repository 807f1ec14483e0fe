"""Admission: the CRD's schema and CEL rules reject bad TrainingJobs with a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.operator.trainingjob.conftest import Jobs, job_manifest

pytestmark = pytest.mark.cluster

Change = Callable[[dict[str, Any]], Any]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _set(path: str, value: Any) -> Change:
    def change(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return change


def _drop(path: str) -> Change:
    def change(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]
    return change


def _both(*changes: Change) -> Change:
    return lambda spec: [c(spec) for c in changes]


INVALID: list[tuple[str, Change, str]] = [
    ("model-and-baseModel", _set("baseModel", {"uri": "pvc://store/base"}), "spec.model"),
    ("neither-model-nor-baseModel", _drop("model"), "spec.model"),
    ("explicit-model-incomplete", _set("model", {"layers": 2, "hiddenSize": 64}), "spec.model"),
    ("hidden-not-divisible-by-heads", _set("model", {"layers": 2, "hiddenSize": 66, "heads": 4, "contextLength": 64}),
     "spec.model.hiddenSize"),
    ("odd-head-size", _set("model", {"layers": 2, "hiddenSize": 36, "heads": 4, "contextLength": 64}), "spec.model.hiddenSize"),
    ("kvHeads-not-dividing-heads", _set("model", {"preset": "tiny", "heads": 4, "kvHeads": 3}), "spec.model.kvHeads"),
    ("unknown-preset", _set("model.preset", "huge"), "spec.model.preset"),
    ("zero-layers", _set("model.layers", 0), "spec.model.layers"),
    ("data-uri-scheme", _set("data.uri", "http://example.com/corpus.txt"), "spec.data.uri"),
    ("data-uri-dotdot", _set("data.uri", "pvc://store/../etc/passwd"), "spec.data.uri"),
    ("data-missing", _drop("data"), "spec.data"),
    ("data-format", _set("data.format", "csv"), "spec.data.format"),
    ("field-without-jsonl", _set("data.field", "text"), "spec.data.field"),
    ("validation-fraction", _set("data.validationFraction", 0.7), "spec.data.validationFraction"),
    ("base-tokenizer-without-baseModel", _set("tokenizer", {"type": "base"}), "spec.tokenizer.type"),
    ("vocab-size-for-byte-tokenizer", _set("tokenizer", {"type": "byte", "vocabSize": 1000}), "spec.tokenizer.vocabSize"),
    ("bpe-vocab-too-small", _set("tokenizer", {"type": "bpe", "vocabSize": 100}), "spec.tokenizer.vocabSize"),
    ("steps-and-epochs", _set("training.epochs", 1), "spec.training"),
    ("neither-steps-nor-epochs", _drop("training.steps"), "spec.training"),
    ("batch-not-divisible-by-nodes", _set("training.globalBatchSize", 5), "spec.training.globalBatchSize"),
    ("batch-not-divisible-by-gpus", _both(_set("nodes", 1), _set("training.globalBatchSize", 12),
                                          _set("resources", {"limits": {"nvidia.com/gpu": 8}})),
     "spec.training.globalBatchSize"),
    ("batch-not-divisible-by-micro-batch", _set("training.microBatchSize", 3), "spec.training.globalBatchSize"),
    ("micro-batch-above-global", _both(_set("training.microBatchSize", 8), _set("nodes", 1)), "spec.training.microBatchSize"),
    ("warmup-not-below-steps", _set("training.warmupSteps", 50), "spec.training.warmupSteps"),
    ("sequence-beyond-context", _set("model", {"layers": 2, "hiddenSize": 64, "heads": 4, "contextLength": 32}),
     "spec.training.sequenceLength"),
    ("precision", _set("training.precision", "fp16"), "spec.training.precision"),
    ("zero-learning-rate", _set("training.learningRate", 0), "spec.training.learningRate"),
    ("output-missing-uri", _set("output", {}), "spec.output.uri"),
    ("output-claim-name", _set("output.uri", "pvc://Bad_Claim/model"), "spec.output.uri"),
    ("output-without-path", _set("output.uri", "pvc://store"), "spec.output.uri"),
    ("checkpoint-uri", _set("checkpoint", {"uri": "ftp://host/ckpt"}), "spec.checkpoint.uri"),
    ("checkpoint-keep", _set("checkpoint", {"keep": 0}), "spec.checkpoint.keep"),
    ("zero-nodes", _set("nodes", 0), "spec.nodes"),
    ("zero-processes", _set("processesPerNode", 0), "spec.processesPerNode"),
    ("reserved-env-master-addr", _set("env", [{"name": "MASTER_ADDR", "value": "evil"}]), "spec.env"),
    ("reserved-env-pet-prefix", _set("env", [{"name": "PET_NNODES", "value": "9"}]), "spec.env"),
    ("reserved-env-modelfleet", _set("env", [{"name": "MODELFLEET_TRAINER_CONFIG", "value": "/x"}]), "spec.env"),
    ("duplicate-env", _set("env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "spec.env"),
    ("reserved-volume-name", _set("volumes", [{"name": "modelfleet-storage-0", "emptyDir": {}}]), "spec.volumes"),
    ("reserved-mount-path", _set("volumeMounts", [{"name": "x", "mountPath": "/etc/modelfleet/trainer.json"}]),
     "spec.volumeMounts"),
    ("negative-backoff", _set("runPolicy", {"backoffLimit": -1}), "spec.runPolicy.backoffLimit"),
    ("clean-pod-policy", _set("runPolicy", {"cleanPodPolicy": "Sometimes"}), "spec.runPolicy.cleanPodPolicy"),
    ("zero-deadline", _set("runPolicy", {"activeDeadlineSeconds": 0}), "spec.runPolicy.activeDeadlineSeconds"),
    ("bad-quantity", _set("resources", {"limits": {"cpu": "lots"}}), "spec.resources.limits"),
    ("toleration-operator", _set("tolerations", [{"key": "a", "operator": "Maybe"}]), "spec.tolerations"),
    # Cross-field rules see a preset's sizes, not only explicit fields.
    ("sequence-beyond-preset-context", _set("training.sequenceLength", 512), "spec.training.sequenceLength"),
    ("kvHeads-not-dividing-preset-heads", _set("model", {"preset": "small", "kvHeads": 3}), "spec.model.kvHeads"),
    ("preset-kvHeads-not-dividing-heads", _set("model", {"preset": "tiny", "heads": 8, "hiddenSize": 128, "kvHeads": 3}),
     "spec.model.kvHeads"),
    ("heads-not-dividing-preset-hidden", _set("model", {"preset": "small", "heads": 3}), "spec.model.hiddenSize"),
    ("odd-head-size-with-preset", _set("model", {"preset": "tiny", "hiddenSize": 36}), "spec.model.hiddenSize"),
    ("validation-fraction-half", _set("data.validationFraction", 0.5), "spec.data.validationFraction"),
    ("validation-fraction-negative", _set("data.validationFraction", -0.1), "spec.data.validationFraction"),
    # Quantities.
    ("fractional-gpu", _set("resources", {"limits": {"nvidia.com/gpu": "0.5"}}), "spec.resources.limits"),
    ("negative-cpu", _set("resources", {"requests": {"cpu": "-1"}}), "spec.resources.requests"),
    ("request-above-limit", _set("resources", {"requests": {"memory": "256Mi"}, "limits": {"memory": "128Mi"}}),
     "spec.resources.requests"),
    ("gpu-request-without-limit", _set("resources", {"requests": {"nvidia.com/gpu": 1}}), "spec.resources.requests"),
    ("bad-resource-name", _set("resources", {"limits": {"gpu!": 1}}), "spec.resources.limits"),
    # Label keys and values, names.
    ("node-selector-key", _set("nodeSelector", {"bad key": "x"}), "spec.nodeSelector"),
    ("node-selector-value", _set("nodeSelector", {"zone": "not a label value"}), "spec.nodeSelector"),
    ("toleration-key", _set("tolerations", [{"key": "bad key", "operator": "Exists"}]), "spec.tolerations[0].key"),
    ("toleration-exists-with-value", _set("tolerations", [{"key": "a", "operator": "Exists", "value": "b"}]),
     "spec.tolerations[0].value"),
    ("toleration-seconds-without-no-execute", _set("tolerations", [{"key": "a", "tolerationSeconds": 5}]),
     "spec.tolerations[0].effect"),
    ("toleration-empty-key-equal", _set("tolerations", [{"operator": "Equal", "value": "x"}]),
     "spec.tolerations[0].operator"),
    ("priority-class-name", _set("priorityClassName", "Not_A_Name"), "spec.priorityClassName"),
    ("image-with-space", _set("image", "trainer image:1"), "spec.image"),
    # Env sources and volumes (docs/security.md).
    ("env-two-sources", _set("env", [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                                 "fieldRef": {"fieldPath": "metadata.name"}}}]),
     "spec.env[0].valueFrom"),
    ("env-field-path", _set("env", [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]),
     "spec.env[0].valueFrom.fieldRef.fieldPath"),
    ("hostPath-volume", _set("volumes", [{"name": "root", "hostPath": {"path": "/"}}]), "spec.volumes[0]"),
    ("csi-volume", _set("volumes", [{"name": "x", "csi": {"driver": "secrets-store.csi.k8s.io"}}]), "spec.volumes[0]"),
    ("hostPath-beside-emptyDir", _set("volumes", [{"name": "x", "emptyDir": {}, "hostPath": {"path": "/"}}]),
     "spec.volumes[0]"),
    ("projected-token", _set("volumes", [{"name": "x", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]),
     "spec.volumes[0].projected.sources[0]"),
    ("mount-of-unknown-volume", _set("volumeMounts", [{"name": "nope", "mountPath": "/data"}]), "spec.volumeMounts"),
    ("duplicate-mount-path", _both(_set("volumes", [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]),
                                   _set("volumeMounts", [{"name": "a", "mountPath": "/data"}, {"name": "b", "mountPath": "/data"}])),
     "spec.volumeMounts"),
    ("sub-path-dotdot", _both(_set("volumes", [{"name": "a", "emptyDir": {}}]),
                              _set("volumeMounts", [{"name": "a", "mountPath": "/data", "subPath": "../x"}])),
     "spec.volumeMounts[0].subPath"),
]


@pytest.mark.parametrize("change, field", [pytest.param(c, f, id=i) for i, c, f in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(jobs: Jobs, change: Change, field: str) -> None:
    manifest = job_manifest("invalid")
    change(manifest["spec"])
    result = jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"accepted: {manifest['spec']}"
    assert "is invalid" in result.stderr and field in result.stderr, result.stderr


def test_at_least_thirty_invalid_specs() -> None:
    assert len(INVALID) >= 30


def test_fractional_gpus_are_refused_for_being_fractional(jobs: Jobs) -> None:
    manifest = job_manifest("gpus", resources={"limits": {"nvidia.com/gpu": "1.5"}})
    result = jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert "must be whole numbers" in result.stderr and "globalBatchSize" not in result.stderr, result.stderr


def test_name_must_fit_the_pods_hostnames(jobs: Jobs) -> None:
    for name in ("a" * 53, "dotted.name", "9starts-with-a-digit"):
        result = jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(job_manifest(name)), check=False)
        assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


VALID_EDGES: list[tuple[str, Change]] = [
    ("validation-fraction-zero", _set("data.validationFraction", 0)),
    ("validation-fraction-just-below-half", _set("data.validationFraction", 0.49)),
    ("sequence-at-preset-context", _set("training.sequenceLength", 256)),
    ("preset-with-overrides", _set("model", {"preset": "tiny", "heads": 8, "kvHeads": 4})),
    ("whole-gpus-requested-and-limited", _both(_set("nodes", 1), _set("training.globalBatchSize", 16), _set("resources", {
        "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 8}, "limits": {"memory": "1Gi", "nvidia.com/gpu": "8"}}))),
    ("labels-and-tolerations", _both(
        _set("nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "zone": ""}),
        _set("tolerations", [{"operator": "Exists"}, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                             {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 30}]))),
    ("allowed-volumes-and-env", _both(
        _set("volumes", [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "extra", "persistentVolumeClaim": {"claimName": "store"}},
                         {"name": "settings", "configMap": {"name": "settings"}}, {"name": "token", "secret": {"secretName": "hub-token"}},
                         {"name": "all", "projected": {"sources": [{"configMap": {"name": "a"}}, {"secret": {"name": "b"}}]}},
                         {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]),
        _set("volumeMounts", [{"name": "cache", "mountPath": "/cache"}, {"name": "token", "mountPath": "/token", "readOnly": True},
                              {"name": "extra", "mountPath": "/extra", "subPath": "shared/a"}]),
        _set("env", [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "token"}}},
                     {"name": "ZONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}},
                     {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}]))),
]


@pytest.mark.parametrize("example", [*sorted(EXAMPLES.glob("trainingjob-*.yaml")), EXAMPLES / "usercode" / "trainingjob.yaml"],
                         ids=lambda path: path.relative_to(EXAMPLES).with_suffix("").as_posix())
def test_examples_are_accepted(jobs: Jobs, example: Path) -> None:
    result = jobs.kubectl("apply", "--dry-run=server", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("change", [pytest.param(c, id=i) for i, c in VALID_EDGES])
def test_valid_edge_cases_are_accepted(jobs: Jobs, change: Change) -> None:
    manifest = job_manifest("a" * 52)  # the longest name
    change(manifest["spec"])
    result = jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, result.stderr


def test_valid_examples_are_accepted_with_defaults(jobs: Jobs) -> None:
    result = jobs.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(job_manifest("valid")))
    spec = json.loads(result.stdout)["spec"]
    assert spec["runPolicy"] == {"backoffLimit": 3, "suspend": False, "cleanPodPolicy": "Running"}
    assert spec["data"]["format"] == "text" and spec["training"]["precision"] == "fp32"
    assert spec["checkpoint"] == {"every": 100, "keep": 3}


def test_training_definition_is_immutable_but_run_policy_is_not(jobs: Jobs) -> None:
    manifest = job_manifest("immutable", runPolicy={"suspend": True})
    jobs.apply(manifest)
    manifest["spec"]["training"]["steps"] = 51
    result = jobs.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0 and "spec.training: is immutable" in result.stderr, result.stderr
    manifest["spec"]["training"]["steps"] = 50
    manifest["spec"]["runPolicy"] = {"suspend": True, "backoffLimit": 7}
    manifest["spec"]["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    jobs.apply(manifest)
    assert jobs.get("trainingjob", "immutable")["spec"]["runPolicy"]["backoffLimit"] == 7
