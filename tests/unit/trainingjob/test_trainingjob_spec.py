"""parse_spec: the controller's own validation and normalisation of a stored TrainingJob spec."""

from __future__ import annotations

import re

import pytest

from modelfleet_operator.trainingjob.spec import Location, SpecError, parse_spec, parse_uri
from tj_builders import base_spec


def test_defaults_and_derived_values() -> None:
    spec = parse_spec("tj", "ns", base_spec())
    assert (spec.nodes, spec.processes_per_node, spec.world_size) == (2, 1, 2)
    assert spec.data == Location("pvc://corpus/books/train.txt", "pvc", "corpus", "books/train.txt")
    # Checkpoints default to a sibling of the model directory on the output's volume.
    assert spec.checkpoint == Location("pvc://models/runs/tiny-checkpoints", "pvc", "models", "runs/tiny-checkpoints")
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.clean_pod_policy == "Running"


def test_processes_per_node_defaults_to_the_gpu_limit() -> None:
    raw = base_spec() | {"resources": {"limits": {"nvidia.com/gpu": "8"}}, "nodes": 1}
    raw["training"]["globalBatchSize"] = 16
    assert parse_spec("tj", "ns", raw).processes_per_node == 8
    raw["processesPerNode"] = 2
    assert parse_spec("tj", "ns", raw).world_size == 2


@pytest.mark.parametrize("uri, expected", [
    ("pvc://data/a/b.txt", Location("pvc://data/a/b.txt", "pvc", "data", "a/b.txt")),
    ("file:///srv/corpus/", Location("file:///srv/corpus/", "file", "", "/srv/corpus")),
])
def test_parse_uri(uri: str, expected: Location) -> None:
    assert parse_uri(uri, "spec.data.uri") == expected


@pytest.mark.parametrize("uri, message", [
    ("s3://bucket/prefix", "spec.data.uri: s3:// URIs are not supported yet"),
    ("pvc://claim", "spec.data.uri: must be pvc://<claim>/<path>"),
    ("pvc://Bad_Claim/x", "spec.data.uri: must be pvc://<claim>/<path>"),
    ("file:///", "spec.data.uri: must be file:///<absolute path>"),
    ("pvc://claim/a/../../etc", "spec.data.uri: must not contain '..'"),
    ("http://example.com/x", "spec.data.uri: must be pvc://"),
    (None, "spec.data.uri: must be a URI string"),
])
def test_bad_uris_name_the_field(uri: object, message: str) -> None:
    with pytest.raises(SpecError, match="^" + re.escape(message)):
        parse_uri(uri, "spec.data.uri")


@pytest.mark.parametrize("change, field", [
    (lambda s: s.pop("model"), "spec.model"),
    (lambda s: s.update(baseModel={"uri": "pvc://m/x"}), "spec.model"),
    (lambda s: s.pop("training"), "spec.training"),
    (lambda s: s["training"].update(globalBatchSize=3), r"spec.training.globalBatchSize: .*\(= 2\), got 3"),
    (lambda s: s.update(env=[{"name": "WORLD_SIZE", "value": "9"}]), "spec.env: WORLD_SIZE is reserved"),
    (lambda s: s.update(env=[{"name": "PET_NNODES", "value": "9"}]), "spec.env: PET_NNODES is reserved"),
    (lambda s: s.update(resources={"limits": {"nvidia.com/gpu": "1.5"}}), r"spec.resources.limits\[nvidia.com/gpu\]"),
    (lambda s: s["runPolicy"].update(cleanPodPolicy="Sometimes"), "spec.runPolicy.cleanPodPolicy"),
    (lambda s: s["data"].update(uri="s3://bucket/x"), "spec.data.uri"),
    (lambda s: s["output"].update(uri="pvc://models"), "spec.output.uri"),
])
def test_invalid_specs_name_the_field(change, field: str) -> None:
    raw = base_spec()
    change(raw)
    with pytest.raises(SpecError, match="^" + field):
        parse_spec("tj", "ns", raw)
