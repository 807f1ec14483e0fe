"""A TrainingJob's life against the real control plane: kwok ends pods with the exit codes tests choose."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.helpers import wait_for
from tests.operator.trainingjob.conftest import CLAIM, Jobs, job_manifest

pytestmark = pytest.mark.cluster

FINAL = {"step": 50, "totalSteps": 50, "loss": 1.25, "phase": "Succeeded",
         "output": {"path": "/mnt/modelfleet/pvc/store/models/x", "digest": "sha256:0123abcd"}}


def env_of(pod: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def succeed(jobs: Jobs, job: str, nodes: int = 2) -> dict:
    """What a successful trainer does: the final report, then every process exits 0 (rank 0 last: when it
    succeeds, the job does, and cleanPodPolicy deletes pods still running)."""
    jobs.report_progress(job, FINAL)
    for rank in range(1, nodes):
        jobs.end_pod(f"{job}-node-{rank}", 0)
    wait_for(lambda: all(p["status"].get("phase") == "Succeeded" for p in jobs.pods(job)[1:]), what="workers succeeded")
    jobs.end_pod(f"{job}-node-0", 0)
    return jobs.wait_phase(job, "Succeeded")


def test_children_are_rendered_with_the_designed_env_names_and_owners(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("render", env=[{"name": "NCCL_DEBUG", "value": "INFO"}]))
    pods = jobs.wait_running_pods("render", 2)
    job = jobs.get("trainingjob", "render")
    owner = {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "name": "render",
             "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    for rank, pod in enumerate(pods):
        assert pod["metadata"]["name"] == f"render-node-{rank}"
        assert pod["metadata"]["labels"]["modelfleet.dev/node-rank"] == str(rank)
        assert pod["metadata"]["ownerReferences"] == [owner]
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"render-node-{rank}", "render-nodes")
        assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["serviceAccountName"] == "render-trainer"
        assert pod["spec"]["containers"][0]["command"] == ["modelfleet", "train"]
        assert env_of(pod) == {
            "MASTER_ADDR": "render-node-0.render-nodes", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": str(rank),
            "NODE_RANK": str(rank), "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "render-node-0.render-nodes", "PET_MASTER_PORT": "29500",
            "MODELFLEET_TRAINER_CONFIG": "/etc/modelfleet/trainer.json", "MODELFLEET_PROGRESS_CONFIGMAP": "render-progress",
            "MODELFLEET_JOB_NAME": "render",
            "MODELFLEET_NAMESPACE": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            "NCCL_DEBUG": "INFO"}
    service = jobs.get("service", "render-nodes")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["ownerReferences"] == [owner]
    config = json.loads(jobs.get("configmap", "render-config")["data"]["trainer.json"])
    assert config["data"]["path"] == f"/mnt/modelfleet/pvc/{CLAIM}/data/train.txt"
    assert config["output"] == {"path": f"/mnt/modelfleet/pvc/{CLAIM}/models/render"}
    for kind, name in (("serviceaccount", "render-trainer"), ("role", "render-progress"), ("rolebinding", "render-progress"),
                       ("configmap", "render-progress")):
        assert jobs.get(kind, name)["metadata"]["ownerReferences"] == [owner], kind
    status = jobs.wait_phase("render", "Running")
    assert [n["phase"] for n in status["nodes"]] == ["Running", "Running"]
    assert all(n["node"].startswith(("gpu-node-", "cpu-node-")) for n in status["nodes"])
    reasons = {e["reason"] for e in jobs.events("render")}
    assert {"PodsCreated", "Running"} <= reasons
    table = jobs.kubectl("get", "trainingjob", "render").stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "AGE"]


def test_progress_reaches_status_with_least_privilege_and_success_records_the_model(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("progress"))
    jobs.wait_running_pods("progress", 2)
    jobs.report_progress("progress", {"step": 1200, "totalSteps": 5000, "loss": 2.5, "tokensPerSecond": 1000.0,
                                      "phase": "Training"})
    progress = wait_for(lambda: jobs.status("progress").get("progress", {}).get("step") == 1200 and
                        jobs.status("progress")["progress"], what="progress in status")
    assert progress["stepOfTotal"] == "1200/5000" and progress["loss"] == 2.5
    assert "1200/5000" in jobs.kubectl("get", "trainingjob", "progress").stdout

    # The trainer's identity can patch its own progress ConfigMap and nothing else.
    for target in ("progress-config", "kube-root-ca.crt"):
        denied = jobs.as_trainer("progress", "patch", "configmap", target, "--type", "merge", "-p", '{"data":{"x":"y"}}',
                                 check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    denied = jobs.as_trainer("progress", "create", "configmap", "sneaky", "--from-literal=a=b", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    denied = jobs.as_trainer("progress", "patch", "trainingjob", "progress", "--type", "merge", "-p", '{"spec":{"nodes":1}}',
                             check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    status = succeed(jobs, "progress")
    assert status["outputs"] == {"model": {"uri": f"pvc://{CLAIM}/models/progress", "digest": "sha256:0123abcd"}}
    assert status["completionTime"] and status["restartCount"] == 0
    assert next(c for c in status["conditions"] if c["type"] == "Succeeded")["status"] == "True"
    # cleanPodPolicy Running (the default) keeps completed pods for inspection.
    assert [p["status"]["phase"] for p in jobs.pods("progress")] == ["Succeeded", "Succeeded"]


def test_a_failed_pod_restarts_the_whole_gang_once_then_succeeds(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("gang"))
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.wait_running_pods("gang", 2)}
    jobs.end_pod("gang-node-1", 1)
    after = jobs.wait_running_pods("gang", 2, attempt=1)
    assert sorted(p["metadata"]["name"] for p in after) == ["gang-node-0", "gang-node-1"]
    assert all(p["metadata"]["uid"] != before[p["metadata"]["name"]] for p in after), "every rank must be recreated"
    status = jobs.wait_phase("gang", "Running")
    assert status["restartCount"] == 1
    (failure,) = status["failures"]
    assert failure | {"time": None, "node": None} == {
        "pod": "gang-node-1", "rank": 1, "attempt": 0, "exitCode": 1, "reason": "Error", "message": "", "lastLogLines": [],
        "time": None, "node": None}
    assert failure["node"].startswith(("gpu-node-", "cpu-node-"))
    restarting = jobs.condition("gang", "Restarting")
    assert (restarting["status"], restarting["reason"]) == ("False", "PodsRunning")
    assert {"PodFailed", "Restarting"} <= {e["reason"] for e in jobs.events("gang")}
    assert succeed(jobs, "gang")["restartCount"] == 1


def test_failures_past_the_backoff_limit_fail_the_job(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("backoff", runPolicy={"backoffLimit": 1}))
    jobs.wait_running_pods("backoff", 2)
    jobs.end_pod("backoff-node-0", 1)
    jobs.wait_running_pods("backoff", 2, attempt=1)
    jobs.end_pod("backoff-node-1", 2)
    status = jobs.wait_phase("backoff", "Failed")
    assert status["restartCount"] == 1
    assert [(f["pod"], f["exitCode"], f["attempt"]) for f in status["failures"]] == [
        ("backoff-node-0", 1, 0), ("backoff-node-1", 2, 1)]
    failed = jobs.condition("backoff", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "exit code 2" in failed["message"]
    # The surviving pod of a failed job is deleted; the failed one is kept (cleanPodPolicy Running).
    wait_for(lambda: [p["metadata"]["name"] for p in jobs.pods("backoff")] == ["backoff-node-1"], what="running pod deleted")


def test_configuration_error_fails_at_once_without_retry(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("config-error"))
    jobs.wait_running_pods("config-error", 2)
    jobs.end_pod("config-error-node-0", 78)
    status = jobs.wait_phase("config-error", "Failed")
    assert status["restartCount"] == 0 and status["failures"][0]["exitCode"] == 78
    assert jobs.condition("config-error", "Failed")["reason"] == "ConfigurationError"
    assert "Restarting" not in {e["reason"] for e in jobs.events("config-error")}


def test_active_deadline_fails_the_job_and_removes_its_pods(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("deadline", runPolicy={"activeDeadlineSeconds": 3}))
    jobs.wait_running_pods("deadline", 2)
    jobs.wait_phase("deadline", "Failed", timeout=20)
    assert jobs.condition("deadline", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: jobs.pods("deadline") == [], what="pods deleted after the deadline")


def test_suspend_removes_the_pods_and_resume_starts_them_again(jobs: Jobs, operator) -> None:
    manifest = job_manifest("suspend")
    jobs.apply(manifest)
    jobs.wait_running_pods("suspend", 2)
    jobs.kubectl("patch", "trainingjob", "suspend", "--type", "merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    jobs.wait_phase("suspend", "Suspended")
    wait_for(lambda: jobs.pods("suspend") == [], what="pods deleted on suspend")
    assert jobs.get("trainingjob", "suspend") is not None
    jobs.kubectl("patch", "trainingjob", "suspend", "--type", "merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    jobs.wait_running_pods("suspend", 2)
    jobs.wait_phase("suspend", "Running")
    suspended = jobs.condition("suspend", "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    assert jobs.status("suspend")["restartCount"] == 0


def test_a_job_created_suspended_runs_once_another_controller_admits_it(jobs: Jobs, operator) -> None:
    """Kueue-style: created suspended, then admitted by setting suspend=false (and injecting a node selector)."""
    jobs.apply(job_manifest("queued", runPolicy={"suspend": True}))
    jobs.wait_phase("queued", "Suspended")
    assert jobs.pods("queued") == []
    admit = {"spec": {"runPolicy": {"suspend": False}, "nodeSelector": {"nvidia.com/gpu.present": "true"}}}
    jobs.kubectl("patch", "trainingjob", "queued", "--type", "merge", "-p", json.dumps(admit))
    pods = jobs.wait_running_pods("queued", 2)
    assert all(p["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true" for p in pods)
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in pods)


def test_ttl_deletes_a_finished_job_and_its_children(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("ttl", runPolicy={"ttlSecondsAfterFinished": 1}))
    jobs.wait_running_pods("ttl", 2)
    jobs.end_pod("ttl-node-0", 65)
    wait_for(lambda: jobs.get("trainingjob", "ttl") is None, timeout=30, what="the job deleted by its TTL")
    wait_for(lambda: jobs.pods("ttl") == [] and jobs.get("service", "ttl-nodes") is None, timeout=30, what="children collected")


def test_deleting_a_job_cascades_to_every_child(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("cascade"))
    jobs.wait_running_pods("cascade", 2)
    jobs.kubectl("delete", "trainingjob", "cascade", "--wait=false")
    children = [("service", "cascade-nodes"), ("configmap", "cascade-config"), ("configmap", "cascade-progress"),
                ("serviceaccount", "cascade-trainer"), ("role", "cascade-progress"), ("rolebinding", "cascade-progress")]
    wait_for(lambda: jobs.get("trainingjob", "cascade") is None and jobs.pods("cascade") == []
             and all(jobs.get(kind, name) is None for kind, name in children), timeout=45, what="cascading deletion")


def test_too_many_gpus_shows_the_schedulers_message(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("greedy", nodes=1, processesPerNode=1, resources={"limits": {"nvidia.com/gpu": 16}}))
    running = wait_for(lambda: (c := jobs.condition("greedy", "Running")).get("reason") == "Unschedulable" and c,
                       what="Unschedulable condition")
    assert running["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in running["message"] and "greedy-node-0" in running["message"]
    assert jobs.status("greedy")["phase"] == "Pending"
    assert "Unschedulable" in {e["reason"] for e in jobs.events("greedy")}


def test_unsupported_uri_fails_the_job_naming_the_field(jobs: Jobs, operator) -> None:
    jobs.apply(job_manifest("s3", data={"uri": "s3://bucket/corpus"}))
    jobs.wait_phase("s3", "Failed")
    failed = jobs.condition("s3", "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith("spec.data.uri: s3:// URIs are not supported")
    assert jobs.pods("s3") == []


def test_operator_metrics_count_reconciles_pods_and_phases(jobs: Jobs, operator) -> None:
    def metric(text: str, line_start: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))

    def scrape() -> str:
        with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
            return response.read().decode()

    before = metric(scrape(), 'modelfleet_operator_pods_created_total{kind="TrainingJob"}')
    jobs.apply(job_manifest("metrics", nodes=3, training={"steps": 5, "globalBatchSize": 3}))
    jobs.wait_running_pods("metrics", 3)
    jobs.wait_phase("metrics", "Running")
    text = wait_for(lambda: (t := scrape()) and metric(t, 'modelfleet_operator_pods_created_total{kind="TrainingJob"}')
                    >= before + 3 and t, what="pods_created to grow by 3")
    assert metric(text, 'modelfleet_operator_reconciles_total{kind="TrainingJob",result="success"}') > 0
    assert metric(text, 'modelfleet_operator_reconcile_duration_seconds_count{kind="TrainingJob"}') > 0
    assert metric(text, 'modelfleet_operator_resources{kind="TrainingJob",phase="Running"}') >= 1
