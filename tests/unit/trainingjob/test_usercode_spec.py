"""User code (spec.container): the spec, the pods and the success rule, as pure functions."""

from __future__ import annotations

import copy

import pytest

from modelfleet_operator.trainingjob import render
from modelfleet_operator.trainingjob.spec import SpecError, parse_spec
from modelfleet_operator.trainingjob.status import decide
from tj_builders import NOW, make_job, make_pod

OWNER = {"metadata": {"name": "tj", "uid": "u-1"}}


def user_spec(**extra) -> dict:
    """As stored: the CRD's defaults (checkpoint, runPolicy) applied."""
    return {"container": {"image": "pytorch/pytorch:2", "command": ["python", "/code/train.py"], "args": ["--steps", "5"],
                          "workingDir": "/code"},
            "output": {"uri": "pvc://models/runs/mine"}, "checkpoint": {"every": 100, "keep": 3}, "nodes": 2,
            "runPolicy": {"backoffLimit": 3, "suspend": False, "cleanPodPolicy": "Running"}, **extra}


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_user_code_needs_no_model_data_or_training() -> None:
    spec = parse_spec("tj", "ns", user_spec())
    assert spec.user_code and spec.container.image == "pytorch/pytorch:2"
    assert spec.data is None and spec.output.uri == "pvc://models/runs/mine"
    assert spec.checkpoint.uri == "pvc://models/runs/mine-checkpoints"
    bare = parse_spec("tj", "ns", {"container": {"image": "img"}, "checkpoint": {"every": 100, "keep": 3}})
    assert bare.output is None and bare.checkpoint is None and bare.data is None


@pytest.mark.parametrize("field", ["model", "training", "tokenizer", "baseModel", "image"])
def test_trainer_sections_with_user_code_are_refused_naming_the_field(field: str) -> None:
    value = {"model": {"preset": "tiny"}, "training": {"steps": 1}, "tokenizer": {"type": "byte"},
             "baseModel": {"uri": "pvc://m/x"}, "image": "trainer:1"}[field]
    with pytest.raises(SpecError, match=rf"^spec\.{field}: applies only to the built-in trainer"):
        parse_spec("tj", "ns", user_spec(**{field: value}))


def test_the_built_in_trainer_still_requires_its_sections() -> None:
    with pytest.raises(SpecError, match=r"^spec\.model: .*spec\.container"):
        parse_spec("tj", "ns", {"data": {"uri": "pvc://d/x"}, "output": {"uri": "pvc://m/y"}, "training": {}})
    with pytest.raises(SpecError, match=r"^spec\.container\.image: is required"):
        parse_spec("tj", "ns", {"container": {"command": ["python"]}})
    with pytest.raises(SpecError, match=r"^spec\.container\.workingDir: must be an absolute path"):
        parse_spec("tj", "ns", {"container": {"image": "i", "workingDir": "code"}})
    with pytest.raises(SpecError, match=r"^spec\.env: MODELFLEET_REPORT_FILE is reserved"):
        parse_spec("tj", "ns", user_spec(env=[{"name": "MODELFLEET_REPORT_FILE", "value": "/x"}]))


def test_user_code_pods_run_the_program_with_the_distributed_env_and_rank0_gets_the_report_sidecar() -> None:
    spec = parse_spec("tj", "ns", user_spec(env=[{"name": "EPOCHS", "value": "2"}],
                                            runPolicy={"terminationGracePeriodSeconds": 90}))
    rank0, rank1 = (render.pod(spec, OWNER, rank, 0, "registry/modelfleet:1", "IfNotPresent") for rank in (0, 1))
    (program,) = rank1["spec"]["containers"]
    assert (program["name"], program["image"], program["command"], program["args"], program["workingDir"]) == (
        "trainer", "pytorch/pytorch:2", ["python", "/code/train.py"], ["--steps", "5"], "/code")
    env = env_of(program)
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "NODE_RANK", "PET_NNODES",
                                "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")} == {
        "MASTER_ADDR": "tj-node-0.tj-nodes", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1", "NODE_RANK": "1",
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "tj-node-0.tj-nodes",
        "PET_MASTER_PORT": "29500"}
    assert env["MODELFLEET_REPORT_FILE"] == render.REPORT_FILE and env["EPOCHS"] == "2"
    assert env["MODELFLEET_OUTPUT_DIR"] == "/mnt/modelfleet/pvc/models/runs/mine"
    assert env["MODELFLEET_CHECKPOINT_DIR"] == "/mnt/modelfleet/pvc/models/runs/mine-checkpoints"
    assert "MODELFLEET_TRAINER_CONFIG" not in env and "MODELFLEET_DATA_PATH" not in env
    assert program["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert rank1["spec"]["terminationGracePeriodSeconds"] == 90
    assert "initContainers" not in rank1["spec"]  # only rank 0 reports
    assert not any(v.get("configMap", {}).get("name") == "tj-config" for v in rank1["spec"]["volumes"])

    (sidecar,) = rank0["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["image"] == "registry/modelfleet:1"
    assert sidecar["command"] == ["modelfleet", "report-forward", "--follow", render.REPORT_FILE]
    assert env_of(sidecar)["MODELFLEET_PROGRESS_CONFIGMAP"] == "tj-progress"
    # It sees what the program sees (to digest the model it reports), read-only.
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert render.REPORT_DIR in mounts and "/mnt/modelfleet/pvc/models" in mounts
    assert all(m["readOnly"] for m in mounts.values())
    assert "prometheus.io/scrape" not in rank0["metadata"]["annotations"]


def test_user_code_has_no_trainer_config_map() -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in render.supporting_objects(parse_spec("tj", "ns", user_spec()), OWNER)]
    assert ("ConfigMap", "tj-config") not in kinds and ("ConfigMap", "tj-progress") in kinds


def test_the_built_in_trainer_keeps_its_config_and_gets_the_grace_period_and_log_fallback() -> None:
    job = make_job()
    job["spec"]["runPolicy"]["terminationGracePeriodSeconds"] = 120
    pod = render.pod(parse_spec("tj", "ns", job["spec"]), OWNER, 0, 0, "img", "IfNotPresent")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120
    assert pod["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "initContainers" not in pod["spec"]


def test_user_code_success_takes_the_reported_model_digest_without_a_succeeded_phase() -> None:
    job = make_job(spec=user_spec(nodes=1), status={"phase": "Running", "restartCount": 0,
                                                    "progress": {"step": 5, "phase": "Training",
                                                                 "outputDigest": "sha256:abc"}})
    plan = decide(job, [make_pod(job, 0, phase="Succeeded", exit_code=0, finished_at=NOW)], NOW)
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["outputs"] == {"model": {"uri": "pvc://models/runs/mine", "digest": "sha256:abc"}}


def test_user_code_without_an_output_succeeds_without_outputs() -> None:
    spec = copy.deepcopy(user_spec(nodes=1))
    del spec["output"]
    job = make_job(spec=spec, status={"phase": "Running", "restartCount": 0})
    plan = decide(job, [make_pod(job, 0, phase="Succeeded", exit_code=0, finished_at=NOW)], NOW)
    assert plan.status["phase"] == "Succeeded" and "outputs" not in plan.status
