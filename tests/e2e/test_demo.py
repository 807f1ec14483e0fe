"""The README's first command, end to end: train on 2 nodes through the operator, hand the model to a
ModelDeployment, and query it with the openai client, on the local cluster with the local pod runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.artifact import sha256_file
from modelfleet import demo
from modelfleet.localcluster import LocalCluster

pytestmark = pytest.mark.cluster


def test_whole_lifecycle(cluster: LocalCluster, tmp_path: Path) -> None:
    lines: list[str] = []
    result = demo.run(cluster, tmp_path, steps=20, nodes=2, say=lines.append, timeout=600)

    model_dir = tmp_path / "models" / "fables"
    assert result.digest == sha256_file(model_dir / "model.safetensors")
    manifest = json.loads((model_dir / "modelfleet.json").read_text())
    assert manifest["digest"] == result.digest and manifest["source"] == {"trainingJob": "fables", "namespace": demo.NAMESPACE}
    job = json.loads(cluster.kubectl("get", "tj", "fables", "-n", demo.NAMESPACE, "-o", "json").stdout)
    assert job["status"]["phase"] == "Succeeded" and job["status"]["progress"]["step"] == 20
    mdep = json.loads(cluster.kubectl("get", "mdep", "fables", "-n", demo.NAMESPACE, "-o", "json").stdout)
    assert mdep["status"]["model"]["digest"] == result.digest
    assert result.completion and result.chat  # the served model answered both APIs
    assert any(line.startswith("  training: step") for line in lines)
