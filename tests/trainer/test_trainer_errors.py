"""Bad input stops at once with a message naming what to fix and a distinct exit code; no partial output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from model_runtime.artifact import read_manifest, sha256_file
from model_runtime.training import exitcodes
from model_runtime.training.cli import main
from model_runtime.training.output import prepare_output
from trainer_testlib import REPO, read_history, tiny_config, train_command, trainer_env, write_config


def run_main(tmp_path: Path, config: dict) -> int:
    return main(["--config", str(write_config(tmp_path / "config.yaml", config))])


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


CASES = {
    "indivisible batch": (
        lambda tmp: {"training": {"globalBatchSize": 5, "microBatchSize": 2}}, exitcodes.CONFIG_ERROR,
        "training.globalBatchSize: must be divisible by world size x microBatchSize (=2); got 5"),
    "typo in a key": (lambda tmp: {"training": {"learningRat": 0.1}}, exitcodes.CONFIG_ERROR,
                      "training.learningRat: Extra inputs are not permitted"),
    "bad value": (lambda tmp: {"training": {"schedule": "exponential"}}, exitcodes.CONFIG_ERROR,
                  "training.schedule: Input should be 'cosine', 'constant' or 'linear'"),
    "vocabulary too small": (lambda tmp: {"model": {"vocabSize": 100}}, exitcodes.CONFIG_ERROR,
                             "model.vocabSize (100) is smaller than the tokenizer's vocabulary (259)"),
    "base model missing": (lambda tmp: {"model": None, "baseModel": {"path": str(tmp / "nope")}},
                           exitcodes.CONFIG_ERROR, "baseModel.path: " + "{tmp}/nope is not a model directory"),
    "data missing": (lambda tmp: {"data": {"path": str(tmp / "absent.txt")}}, exitcodes.DATA_ERROR,
                     "data.path: {tmp}/absent.txt does not exist"),
    "data empty": (lambda tmp: {"data": {"path": str(jsonl(tmp / "empty.txt", []))}}, exitcodes.DATA_ERROR,
                   "data.path: {tmp}/empty.txt is empty"),
    "jsonl not JSON": (lambda tmp: {"data": {"format": "jsonl", "path": str(jsonl(tmp / "d.jsonl", ['{"text": "a"}', "{oops"]))}},
                       exitcodes.DATA_ERROR, "data.path: {tmp}/d.jsonl:2: invalid JSON"),
    "jsonl without the field": (
        lambda tmp: {"data": {"format": "jsonl", "field": "body", "path": str(jsonl(tmp / "d.jsonl", ['{"text": "a"}']))}},
        exitcodes.DATA_ERROR, "data.field: {tmp}/d.jsonl:1: no string field 'body'"),
    "jsonl of empty documents": (
        lambda tmp: {"data": {"format": "jsonl", "path": str(jsonl(tmp / "d.jsonl", ['{"text": ""}']))}},
        exitcodes.DATA_ERROR, "data.path: the data holds no text"),
    "too little data": (lambda tmp: {"data": {"path": str(jsonl(tmp / "short.txt", ["tiny"]))}}, exitcodes.DATA_ERROR,
                        "the data has 6 tokens; training.sequenceLength=32 needs at least 33"),
    "output is a file": (lambda tmp: {"output": {"path": str(jsonl(tmp / "file", []))}}, exitcodes.OUTPUT_NOT_WRITABLE,
                         "output.path: {tmp}/file exists and is not a directory"),
    "output under a file": (lambda tmp: {"output": {"path": str(jsonl(tmp / "file", []) / "model")}},
                            exitcodes.OUTPUT_NOT_WRITABLE, "output.path: cannot write in {tmp}/file"),
    "checkpoint dir is a file": (lambda tmp: {"checkpoint": {"dir": str(jsonl(tmp / "file", []))}},
                                 exitcodes.OUTPUT_NOT_WRITABLE, "checkpoint.dir: cannot write to {tmp}/file"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_its_message_and_exit_code(case, tmp_path, clean_env, caplog):
    override, code, message = CASES[case]
    config = tiny_config(tmp_path, **override(tmp_path))
    assert run_main(tmp_path, config) == code
    assert message.format(tmp=tmp_path) in caplog.text
    assert f"(exit {code})" in caplog.text
    assert not Path(config["output"]["path"]).is_dir()


def test_codes_the_operator_must_not_retry():
    assert exitcodes.DO_NOT_RETRY == {65, 70, 73, 78}
    assert exitcodes.FAILURE not in exitcodes.DO_NOT_RETRY


def test_cli_reports_config_errors_on_stderr_with_exit_78(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"data": {"path": "x"}})
    result = subprocess.run(train_command(bad), env=trainer_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert "training: Field required; output: Field required (exit 78)" in result.stderr

    no_config = subprocess.run(train_command(tmp_path / "missing.yaml")[:-2], env=trainer_env(), cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert no_config.returncode == exitcodes.CONFIG_ERROR
    assert "--config: give a configuration file (or set MODELFLEET_TRAINER_CONFIG)" in no_config.stderr


def test_config_from_env_and_invalid_yaml(tmp_path, clean_env, monkeypatch, caplog):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    monkeypatch.setenv("MODELFLEET_TRAINER_CONFIG", str(broken))
    assert main([]) == exitcodes.CONFIG_ERROR
    assert f"--config: {broken} is not valid JSON or YAML" in caplog.text


def test_checkpoints_of_another_run_are_refused(tmp_path, clean_env, caplog):
    config = tiny_config(tmp_path, training={"steps": 2, "evalEvery": 0}, checkpoint={"every": 1})
    assert run_main(tmp_path, config) == exitcodes.SUCCESS
    changed = tiny_config(tmp_path, model={"hiddenSize": 64}, training={"steps": 4}, output={"path": str(tmp_path / "m2")})
    assert run_main(tmp_path, changed) == exitcodes.CONFIG_ERROR
    assert "holds checkpoints of a different run" in caplog.text
    assert not (tmp_path / "m2").exists()


def test_a_failed_save_keeps_the_previous_output_and_leaves_no_partial_directory(tmp_path, clean_env, monkeypatch, caplog):
    config = tiny_config(tmp_path, training={"steps": 2, "evalEvery": 0}, checkpoint={"every": 0})
    assert run_main(tmp_path, config) == exitcodes.SUCCESS
    model = tmp_path / "model"
    before = {p.name: p.read_bytes() for p in model.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a tensor")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("model_runtime.artifact.save_file", disk_full)
    retrained = tiny_config(tmp_path, training={"steps": 3, "evalEvery": 0, "seed": 1}, checkpoint={"every": 0,
                            "dir": str(tmp_path / "other-checkpoints")})
    assert run_main(tmp_path, retrained) == exitcodes.OUTPUT_NOT_WRITABLE
    assert "output.path: cannot write the model" in caplog.text and "No space left on device" in caplog.text
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert read_manifest(model)["digest"] == sha256_file(model / "model.safetensors")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_prepare_output_cleans_up_after_a_save_killed_midway(tmp_path):
    target = tmp_path / "model"
    (tmp_path / ".model.partial-abc").mkdir()
    (tmp_path / ".model.partial-abc" / "model.safetensors").write_bytes(b"half")
    # Killed between "move the old output aside" and "rename the new one in": the old one comes back.
    (tmp_path / ".model.old-123").mkdir()
    (tmp_path / ".model.old-123" / "modelfleet.json").write_text(json.dumps({"digest": "sha256:old"}))
    prepare_output(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert read_manifest(target) == {"digest": "sha256:old"}


def test_fine_tuning_starts_from_a_base_model(reference_run, tmp_path):
    base = reference_run["root"] / "model"
    config = tiny_config(tmp_path, model=None, baseModel={"path": str(base)}, tokenizer=None,
                         training={"steps": 2, "evalEvery": 0, "learningRate": 1e-4})
    result = subprocess.run(train_command(write_config(tmp_path / "config.yaml", config)), env=trainer_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "model")
    assert manifest["baseModel"] == {"path": str(base)}
    assert manifest["tokenizerDigest"] == read_manifest(base)["tokenizerDigest"]  # tokenizer.type defaults to base
    scratch_first = read_history(reference_run["root"] / "checkpoints")[0]["loss"]
    tuned_first = read_history(tmp_path / "checkpoints")[0]["loss"]
    assert tuned_first < scratch_first - 0.5  # it starts where the base model left off, not from scratch
