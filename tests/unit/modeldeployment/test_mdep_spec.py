"""Parsing ModelDeployment specs: defaults, model URIs, derived values and errors that name the field."""

from __future__ import annotations

import pytest

from modelfleet_operator.modeldeployment.resolve import ResolvedModel, resolve_model
from modelfleet_operator.modeldeployment.spec import ModelSource, SpecError, parse_model_uri, parse_spec

DIGEST = "sha256:" + "ab" * 32


def test_defaults_match_the_crd() -> None:
    spec = parse_spec({"model": {"uri": "pvc://models/tiny"}})
    assert spec.replicas == 1 and spec.desired_replicas == 1
    assert spec.model.dtype == "auto" and spec.model.served_name is None
    assert (spec.rollout.max_surge, spec.rollout.max_unavailable, spec.rollout.when_no_room) == (1, 0, "Wait")
    assert spec.rollout.canary is None
    assert spec.runtime.drain_timeout_seconds == 30 and spec.runtime.block_size == 16
    assert spec.startup_timeout_seconds == 1800 and spec.shm_size == "1Gi"
    assert spec.autoscaling is None and spec.api_key is None and spec.gpus_per_pod == 0


@pytest.mark.parametrize("uri, expected", [
    ("pvc://models/llama/v1", ModelSource("pvc://models/llama/v1", "pvc", "models", "llama/v1")),
    ("pvc://models", ModelSource("pvc://models", "pvc", "models", "")),
    ("pvc://models/llama/", ModelSource("pvc://models/llama/", "pvc", "models", "llama")),
    ("file:///data/models/tiny/", ModelSource("file:///data/models/tiny/", "file", "/data/models/tiny")),
    ("s3://bucket-1/prefix/model", ModelSource("s3://bucket-1/prefix/model", "s3", "bucket-1", "prefix/model")),
])
def test_model_uris(uri: str, expected: ModelSource) -> None:
    assert parse_model_uri(uri) == expected


@pytest.mark.parametrize("uri", ["http://x/y", "pvc://", "pvc://Bad_Claim/x", "file://relative", "file:///a/../etc",
                                 "s3://", "s3://b/x", "pvc://models/../x", "models/x"])
def test_bad_model_uris_name_the_field(uri: str) -> None:
    with pytest.raises(SpecError, match=r"^spec\.model\.uri: "):
        parse_model_uri(uri)


@pytest.mark.parametrize("spec, field", [
    ({"model": {}}, "spec.model"),
    ({"model": {"uri": "pvc://m/x", "trainingJobRef": {"name": "tj"}}}, "spec.model"),
    ({"model": {"uri": "pvc://m/x", "s3": {"region": "eu"}}}, "spec.model.s3"),
    ({"model": {"uri": "pvc://m/x"}, "env": [{"name": "MODELFLEET_MODEL", "value": "/x"}]}, r"spec.env\[0\].name"),
    ({"model": {"uri": "pvc://m/x"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 2, "target": 1}},
     "spec.autoscaling.minReplicas"),
    ({"model": {"uri": "pvc://m/x"}, "autoscaling": {"maxReplicas": 2, "target": 1, "metric": "Cpu"}},
     "spec.autoscaling.metric"),
    ({"model": {"uri": "pvc://m/x"}, "autoscaling": {"maxReplicas": 2, "target": 1, "scaleDownStabilizationSeconds": -1}},
     "spec.autoscaling.scaleDownStabilizationSeconds"),
])
def test_invalid_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"^{field}"):
        parse_spec(spec)


def test_gpus_given_once_appear_in_requests_and_limits() -> None:
    spec = parse_spec({"model": {"uri": "pvc://m"}, "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}}})
    assert spec.resources == {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}}
    assert spec.gpus_per_pod == 2
    other = parse_spec({"model": {"uri": "pvc://m"}, "resources": {"requests": {"example.com/fpga": 1, "cpu": "2"}}})
    assert other.resources == {"requests": {"example.com/fpga": 1, "cpu": "2"}, "limits": {"example.com/fpga": 1}}


@pytest.mark.parametrize("replicas, expected", [(1, 2), (3, 3), (9, 5), (0, 2)])
def test_autoscaling_keeps_replicas_within_bounds(replicas: int, expected: int) -> None:
    spec = parse_spec({"model": {"uri": "pvc://m"}, "replicas": replicas,
                       "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "target": 4}})
    assert spec.desired_replicas == expected


def test_uri_resolves_to_itself_with_its_digest() -> None:
    spec = parse_spec({"model": {"uri": "pvc://m/x", "digest": DIGEST}})
    resolution = resolve_model(spec.model, None)
    assert resolution.resolved and resolution.model == ResolvedModel("pvc://m/x", DIGEST)


def _tj(phase: str | None, outputs: dict | None = None, conditions: list | None = None) -> dict:
    status = {"phase": phase} if phase else {}
    if outputs is not None:
        status["outputs"] = outputs
    if conditions:
        status["conditions"] = conditions
    return {"metadata": {"name": "tj"}, "status": status}


@pytest.mark.parametrize("tj, reason", [
    (None, "TrainingJobNotFound"),
    (_tj(None), "TrainingJobNotSucceeded"),
    (_tj("Running"), "TrainingJobNotSucceeded"),
    (_tj("Succeeded", {}), "TrainingJobNoOutput"),
    (_tj("Failed", conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                "message": "3 restarts"}]), "TrainingJobFailed"),
])
def test_training_job_reference_waits_with_a_reason(tj: dict | None, reason: str) -> None:
    spec = parse_spec({"model": {"trainingJobRef": {"name": "tj"}}})
    resolution = resolve_model(spec.model, tj)
    assert not resolution.resolved and resolution.reason == reason
    assert "tj" in resolution.message
    if reason == "TrainingJobFailed":
        assert "BackoffLimitExceeded: 3 restarts" in resolution.message


def test_succeeded_training_job_resolves_to_its_output() -> None:
    spec = parse_spec({"model": {"trainingJobRef": {"name": "tj"}}})
    tj = _tj("Succeeded", {"model": {"uri": "pvc://ckpt/tj/model", "digest": DIGEST}})
    resolution = resolve_model(spec.model, tj)
    assert resolution.resolved and resolution.reason == "TrainingJobSucceeded"
    assert resolution.model == ResolvedModel("pvc://ckpt/tj/model", DIGEST, "tj")
    assert resolution.model.to_status("chat") == {"name": "chat", "uri": "pvc://ckpt/tj/model", "digest": DIGEST,
                                                  "trainingJob": "tj"}
