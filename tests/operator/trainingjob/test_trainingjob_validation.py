"""Admission: the CRD's schema and CEL rules reject bad TrainingJobs with a message naming the field."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from tests.operator.trainingjob.conftest import Jobs, job_manifest

pytestmark = pytest.mark.cluster

Change = Callable[[dict[str, Any]], Any]


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


def test_name_must_fit_the_pods_hostnames(jobs: Jobs) -> None:
    manifest = job_manifest("a" * 53)
    result = jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


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
