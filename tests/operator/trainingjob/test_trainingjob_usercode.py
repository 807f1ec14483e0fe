"""User code, disruptions and stalls against the real control plane (kwok drives the pods; tests/realnode runs
them for real): what the API server admits, the pods the operator creates, and how the job reacts."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ON_FAKE_NODES, wait_for
from tests.operator.trainingjob.conftest import CLAIM, Jobs, job_manifest

pytestmark = pytest.mark.cluster


def user_manifest(name: str, **spec) -> dict:
    base = {"container": {"image": "registry.example/me/train:1", "command": ["python", "/code/train.py"],
                          "args": ["--steps", "10"]},
            "output": {"uri": f"pvc://{CLAIM}/models/{name}"}, "nodes": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
            **ON_FAKE_NODES, **spec}
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


def refused(jobs: Jobs, manifest: dict) -> str:
    result = jobs.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{manifest['metadata']['name']} was admitted"
    return result.stderr


def test_admission_accepts_user_code_without_trainer_sections_and_names_the_field_otherwise(jobs: Jobs) -> None:
    with_model = user_manifest("both", model={"preset": "tiny"})
    assert "spec.model: applies only to the built-in trainer" in refused(jobs, with_model)
    no_data = job_manifest("nodata")
    del no_data["spec"]["data"]
    assert "spec.data: is required (unless spec.container runs your own code)" in refused(jobs, no_data)
    no_image = user_manifest("noimage", container={"command": ["python"]})
    assert "spec.container.image: Required value" in refused(jobs, no_image)
    bad_grace = job_manifest("grace", runPolicy={"terminationGracePeriodSeconds": -1})
    assert "spec.runPolicy.terminationGracePeriodSeconds" in refused(jobs, bad_grace)


def test_user_code_pods_run_the_program_next_to_the_report_sidecar_and_succeed(jobs: Jobs, operator) -> None:
    jobs.apply(user_manifest("mine", runPolicy={"terminationGracePeriodSeconds": 45}))
    pods = jobs.wait_running_pods("mine", 2)
    rank0, rank1 = pods
    program = rank1["spec"]["containers"][0]
    assert (program["image"], program["command"], program["args"]) == (
        "registry.example/me/train:1", ["python", "/code/train.py"], ["--steps", "10"])
    env = {e["name"]: e.get("value") for e in program["env"]}
    assert (env["MASTER_ADDR"], env["WORLD_SIZE"], env["RANK"], env["PET_NODE_RANK"]) == (
        "mine-node-0.mine-nodes", "2", "1", "1")
    assert env["MODELFLEET_OUTPUT_DIR"] == f"/mnt/modelfleet/pvc/{CLAIM}/models/mine"
    assert rank1["spec"]["terminationGracePeriodSeconds"] == 45
    assert program["terminationMessagePolicy"] == "FallbackToLogsOnError"
    (sidecar,) = rank0["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["image"] == operator.env.get("MODELFLEET_TRAINER_IMAGE", sidecar["image"])
    assert jobs.get("service", "mine-nodes") and jobs.get("configmap", "mine-progress")
    assert jobs.get("configmap", "mine-config") is None  # no trainer configuration for user code
    # What the sidecar forwards: step and loss, and the model's digest (no Succeeded phase: it cannot know).
    jobs.report_progress("mine", {"step": 10, "totalSteps": 10, "loss": 0.25, "phase": "Training",
                                  "output": {"path": "/x", "digest": "sha256:feed"}})
    wait_for(lambda: jobs.status("mine").get("progress", {}).get("stepOfTotal") == "10/10", what="progress in status")
    jobs.end_pod("mine-node-1", 0)
    wait_for(lambda: jobs.pods("mine")[1]["status"].get("phase") == "Succeeded", what="rank 1 succeeded")
    jobs.end_pod("mine-node-0", 0)
    status = jobs.wait_phase("mine", "Succeeded")
    assert status["outputs"]["model"] == {"uri": f"pvc://{CLAIM}/models/mine", "digest": "sha256:feed"}


def test_an_evicted_pod_restarts_the_gang_without_using_the_backoff_limit(jobs: Jobs, operator) -> None:
    """kwok removes an evicted pod at once (no grace period to watch, unlike the real node, where the
    DisruptionTarget condition shows: tests/realnode/test_usercode.py): a rank seen running and now gone."""
    jobs.apply(job_manifest("evict", runPolicy={"backoffLimit": 0}))
    jobs.wait_running_pods("evict", 2)
    jobs.wait_phase("evict", "Running")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evict-node-1", "namespace": jobs.namespace}}
    jobs.kubectl("create", "--raw", f"/api/v1/namespaces/{jobs.namespace}/pods/evict-node-1/eviction", "-f", "-",
                 input=json.dumps(eviction))
    jobs.wait_running_pods("evict", 2, attempt=1, timeout=60)
    status = jobs.wait_phase("evict", "Running")
    assert (status["restartCount"], status["disruptions"]) == (1, 1)
    assert not status.get("failures")
    reasons = [e["reason"] for e in jobs.events("evict")]
    assert "Disrupted" in reasons
    # A real failure is still counted: with backoffLimit 0 it fails the job.
    jobs.end_pod("evict-node-1", 1)
    final = jobs.wait_phase("evict", "Failed")
    assert jobs.condition("evict", "Failed")["reason"] == "BackoffLimitExceeded" and final["restartCount"] == 1


def test_a_job_without_progress_is_marked_stalled_and_restarted(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("stall", runPolicy={"progressDeadlineSeconds": 3, "backoffLimit": 2}))
    jobs.wait_running_pods("stall", 2)
    jobs.report_progress("stall", {"step": 4, "totalSteps": 50})
    jobs.wait_running_pods("stall", 2, attempt=1, timeout=60)
    stalled = jobs.condition("stall", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ProgressDeadlineExceeded"
    assert "step 4 since" in stalled["message"]
    assert "Stalled" in [e["reason"] for e in jobs.events("stall")]
    assert jobs.status("stall").get("disruptions", 0) == 0
