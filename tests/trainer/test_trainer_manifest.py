"""`modelfleet train -f trainingjob.yaml`: a TrainingJob manifest run here, through the operator's own mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from model_runtime.artifact import read_manifest
from model_runtime.files import sha256_file
from modelfleet.localtrain import trainer_config_for
from modelfleet_operator.trainingjob import render
from modelfleet_operator.trainingjob.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]


def modelfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_the_local_config_is_the_operators_with_claims_mapped_to_directories(tmp_path) -> None:
    manifest = yaml.safe_load((REPO / "examples" / "trainingjob-tiny.yaml").read_text())
    claims = {"corpus": tmp_path / "c", "models": tmp_path / "m"}
    local, processes, name = trainer_config_for(manifest, claims)
    in_pods = json.loads(render.config_map(parse_spec("tiny", "ns", manifest["spec"]), {"metadata": {"name": "tiny", "uid": "u"}})
                         ["data"][render.CONFIG_FILE])
    mapped = json.dumps(in_pods).replace(f"{render.STORAGE_ROOT}/pvc/corpus", str(claims["corpus"])) \
                                .replace(f"{render.STORAGE_ROOT}/pvc/models", str(claims["models"]))
    assert local == json.loads(mapped) and (processes, name) == (2, "tiny")


def test_a_manifest_trains_here_with_its_world_size_and_writes_the_model(tmp_path) -> None:
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    (data / "corpus.txt").write_bytes((REPO / "examples" / "data" / "corpus.txt").read_bytes()[:20000])
    manifest = {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "local"},
                "spec": {"model": {"preset": "tiny"}, "tokenizer": {"type": "byte"},
                         "data": {"uri": "pvc://store/data/corpus.txt"},
                         "training": {"steps": 6, "globalBatchSize": 4, "sequenceLength": 32, "logEvery": 2,
                                      "evalEvery": 0},
                         "checkpoint": {"every": 3}, "output": {"uri": "pvc://store/models/local"}, "nodes": 2}}
    path = tmp_path / "tj.yaml"
    path.write_text("# another document first\n---\n{}\n---\n" + yaml.safe_dump(manifest))
    result = modelfleet("train", "-f", str(path), "--claim", f"store={tmp_path / 'store'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching 2 worker(s)" in result.stderr  # nodes x processesPerNode processes, all on this machine
    model = tmp_path / "store" / "models" / "local"
    assert read_manifest(model)["digest"] == sha256_file(model / "model.safetensors")
    assert "step 6/6" in result.stdout
    assert (tmp_path / "store" / "models" / "local-checkpoints").is_dir()  # the default checkpoint URI, mapped too


def test_an_unmapped_claim_or_user_code_is_a_clear_error(tmp_path) -> None:
    result = modelfleet("train", "-f", str(REPO / "examples" / "trainingjob-tiny.yaml"), cwd=tmp_path)
    assert result.returncode == 78
    assert "spec.data.uri: pvc://corpus/books/train.txt names claim 'corpus'; map it to a local directory with " \
           "--claim corpus=DIR" in result.stderr
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump({"kind": "TrainingJob", "metadata": {"name": "u"},
                                    "spec": {"container": {"image": "img"}}}))
    result = modelfleet("train", "-f", str(path), cwd=tmp_path)
    assert result.returncode == 78 and "spec.container: modelfleet train -f runs the built-in trainer" in result.stderr
    result = modelfleet("train", "-f", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert result.returncode == 78 and "-f: cannot read" in result.stderr
