"""The state machine: observed pods + spec + stored status -> next status and actions."""

from __future__ import annotations

import datetime as dt

import pytest

from model_runtime.training import exitcodes
from modelfleet_operator.conditions import get_condition
from modelfleet_operator.trainingjob.status import (
    FINAL_REPORT_GRACE_SECONDS,
    PERMANENT_EXIT_REASONS,
    CreateFailure,
    creation_failed,
    decide,
)
from tj_builders import NOW, base_spec, make_job, make_pod


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def cond(plan, type_: str) -> dict:
    return get_condition(plan.status["conditions"], type_) or {}


def running_job(**status) -> dict:
    job = make_job(status={"phase": "Running", "restartCount": 0, "startTime": "2030-01-01T11:00:00Z", **status})
    return job


def test_new_job_creates_all_pods_and_records_start() -> None:
    plan = decide(make_job(), [], NOW)
    assert plan.create_pods == [0, 1] and plan.delete_pods == []
    assert plan.status["phase"] == "Pending" and plan.status["startTime"] == "2030-01-01T12:00:00Z"
    assert plan.status["restartCount"] == 0 and plan.status["observedGeneration"] == 1
    assert cond(plan, "Created")["status"] == "True"
    assert [e.reason for e in plan.events] == ["PodsCreated"]


def test_only_missing_ranks_are_created_after_a_crash_mid_creation() -> None:
    job = make_job(status={"phase": "Pending", "restartCount": 0})
    plan = decide(job, [make_pod(job, 0, phase="Pending")], NOW)
    assert plan.create_pods == [1]
    assert plan.events == []  # no duplicate "PodsCreated" for a partial re-creation


def test_all_pods_running_means_running_with_node_states() -> None:
    job = make_job(status={"phase": "Pending", "restartCount": 0})
    plan = decide(job, [make_pod(job, 0), make_pod(job, 1, node="gpu-node-1")], NOW)
    assert plan.create_pods == [] and plan.status["phase"] == "Running"
    assert cond(plan, "Running")["reason"] == "PodsRunning"
    assert plan.status["nodes"] == [{"rank": 0, "pod": "tj-node-0", "phase": "Running", "node": "gpu-node-0"},
                                    {"rank": 1, "pod": "tj-node-1", "phase": "Running", "node": "gpu-node-1"}]
    assert [e.reason for e in plan.events] == ["Running"]
    # Level-triggered: the same observation again changes nothing and posts nothing.
    again = decide(make_job(status=plan.status), [make_pod(job, 0), make_pod(job, 1, node="gpu-node-1")], later(5))
    assert again.status == plan.status and again.events == []


def test_unschedulable_pod_surfaces_the_schedulers_message_once() -> None:
    job = make_job(status={"phase": "Pending", "restartCount": 0})
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pods = [make_pod(job, 0, phase="Pending", unschedulable=message), make_pod(job, 1)]
    plan = decide(job, pods, NOW)
    running = cond(plan, "Running")
    assert (running["status"], running["reason"]) == ("False", "Unschedulable")
    assert message in running["message"] and "tj-node-0" in running["message"]
    assert plan.status["phase"] == "Pending"
    assert [e.reason for e in plan.events] == ["Unschedulable"]
    assert decide(make_job(status=plan.status), pods, later(1)).events == []


def test_retryable_failure_starts_a_gang_restart_recorded_before_deleting() -> None:
    job = running_job()
    pods = [make_pod(job, 0), make_pod(job, 1, phase="Failed", exit_code=1, node="gpu-node-1")]
    plan = decide(job, pods, NOW)
    assert plan.status["restartCount"] == 1 and plan.status["phase"] == "Restarting"
    assert sorted(plan.delete_pods) == ["tj-node-0", "tj-node-1"] and plan.create_pods == []
    assert plan.restart_reason == "Error"
    (failure,) = plan.status["failures"]
    assert failure == {"pod": "tj-node-1", "rank": 1, "attempt": 0, "node": "gpu-node-1", "exitCode": 1, "reason": "Error",
                       "message": "", "lastLogLines": [], "time": "2030-01-01T12:00:00Z"}
    assert plan.new_failures == [failure]
    assert cond(plan, "Restarting")["status"] == "True"
    assert {e.reason for e in plan.events} == {"PodFailed", "Restarting"}


def test_restart_waits_for_old_pods_to_go_then_recreates_the_same_ranks() -> None:
    old = running_job()
    failed = [make_pod(old, 0), make_pod(old, 1, phase="Failed", exit_code=1)]
    restarting = make_job(status=decide(old, failed, NOW).status)
    # Old-attempt pods still exist (one already terminating): delete the rest, create nothing yet.
    pods = [make_pod(old, 0, deleting=True), make_pod(old, 1, phase="Failed", exit_code=1)]
    plan = decide(restarting, pods, NOW)
    assert plan.delete_pods == ["tj-node-1"] and plan.create_pods == []
    assert plan.status["restartCount"] == 1 and plan.status["phase"] == "Restarting"
    # Once they are gone, both ranks come back with the new attempt.
    plan = decide(restarting, [], later(1))
    assert plan.create_pods == [0, 1]
    # New pods running: the restart is over.
    new = [make_pod(restarting, 0, attempt=1), make_pod(restarting, 1, attempt=1)]
    plan = decide(make_job(status=plan.status), new, later(2))
    assert plan.status["phase"] == "Running" and cond(plan, "Restarting")["status"] == "False"


def test_failures_past_the_backoff_limit_fail_the_job() -> None:
    spec = base_spec()
    spec["runPolicy"]["backoffLimit"] = 1
    job = make_job(spec, status={"phase": "Running", "restartCount": 1, "startTime": "2030-01-01T11:00:00Z"})
    pods = [make_pod(job, 0, attempt=1, phase="Failed", exit_code=137, reason="OOMKilled"), make_pod(job, 1, attempt=1)]
    plan = decide(job, pods, NOW)
    assert plan.status["phase"] == "Failed" and plan.status["restartCount"] == 1
    failed = cond(plan, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "exit code 137" in failed["message"]
    assert plan.status["failures"][-1]["exitCode"] == 137 and plan.status["failures"][-1]["reason"] == "OOMKilled"
    assert plan.status["completionTime"] == "2030-01-01T12:00:00Z"
    # Pods still running when a job fails are deleted whatever the cleanPodPolicy; failed ones stay (Running policy).
    assert plan.delete_pods == ["tj-node-1"]


@pytest.mark.parametrize("code", sorted(exitcodes.DO_NOT_RETRY))
def test_permanent_exit_codes_fail_at_once(code: int) -> None:
    job = running_job()
    plan = decide(job, [make_pod(job, 0, phase="Failed", exit_code=code), make_pod(job, 1)], NOW)
    assert plan.status["phase"] == "Failed" and plan.status["restartCount"] == 0
    assert cond(plan, "Failed")["reason"] == PERMANENT_EXIT_REASONS[code]
    assert plan.status["failures"][0]["exitCode"] == code


def test_permanent_reasons_cover_exactly_the_trainers_do_not_retry_codes() -> None:
    assert set(PERMANENT_EXIT_REASONS) == exitcodes.DO_NOT_RETRY
    assert PERMANENT_EXIT_REASONS[exitcodes.CONFIG_ERROR] == "ConfigurationError"


def test_success_waits_briefly_for_the_final_report_then_records_outputs() -> None:
    job = running_job()
    finished = NOW - dt.timedelta(seconds=1)
    pods = [make_pod(job, 0, phase="Succeeded", exit_code=0, finished_at=finished), make_pod(job, 1)]
    plan = decide(job, pods, NOW)
    assert plan.status["phase"] == "Running" and plan.requeue_after == pytest.approx(FINAL_REPORT_GRACE_SECONDS - 1)

    report = {"phase": "Succeeded", "step": 100, "totalSteps": 100, "outputDigest": "sha256:abc"}
    job = running_job(progress=report)
    plan = decide(job, pods, NOW)
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["outputs"] == {"model": {"uri": "pvc://models/runs/tiny", "digest": "sha256:abc"}}
    assert cond(plan, "Succeeded")["reason"] == "Completed"
    assert "progress" not in plan.status  # owned by the progress watcher
    assert plan.delete_pods == ["tj-node-1"]  # cleanPodPolicy Running


def test_success_without_a_report_after_the_grace_period() -> None:
    job = running_job()
    pods = [make_pod(job, 0, phase="Succeeded", exit_code=0, finished_at=NOW - dt.timedelta(seconds=60)),
            make_pod(job, 1, phase="Succeeded", exit_code=0)]
    plan = decide(job, pods, NOW)
    assert plan.status["phase"] == "Succeeded" and plan.status["outputs"] == {"model": {"uri": "pvc://models/runs/tiny"}}
    assert "NoFinalReport" in [e.reason for e in plan.events]
    assert plan.delete_pods == []


def test_deadline_fails_the_job_and_deletes_its_pods() -> None:
    spec = base_spec()
    spec["runPolicy"]["activeDeadlineSeconds"] = 60
    job = make_job(spec, status={"phase": "Running", "restartCount": 0, "startTime": "2030-01-01T11:59:30Z"})
    pods = [make_pod(job, 0), make_pod(job, 1)]
    plan = decide(job, pods, NOW)
    assert plan.status["phase"] == "Running" and plan.requeue_after == pytest.approx(30)
    plan = decide(job, pods, later(30))
    assert plan.status["phase"] == "Failed" and cond(plan, "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(plan.delete_pods) == ["tj-node-0", "tj-node-1"]


def test_suspend_deletes_pods_and_resume_restarts_the_clock() -> None:
    spec = base_spec()
    spec["runPolicy"]["suspend"] = True
    job = make_job(spec, status={"phase": "Running", "restartCount": 0, "startTime": "2030-01-01T11:00:00Z"})
    plan = decide(job, [make_pod(job, 0), make_pod(job, 1)], NOW)
    assert plan.status["phase"] == "Suspended" and sorted(plan.delete_pods) == ["tj-node-0", "tj-node-1"]
    assert "startTime" not in plan.status and plan.create_pods == []
    assert cond(plan, "Suspended")["status"] == "True"

    spec["runPolicy"]["suspend"] = False
    plan = decide(make_job(spec, status=plan.status, generation=2), [], later(10))
    assert plan.create_pods == [0, 1] and plan.status["startTime"] == "2030-01-01T12:00:10Z"
    assert cond(plan, "Suspended") | {"lastTransitionTime": None} == {
        "type": "Suspended", "status": "False", "reason": "Resumed", "message": "the job was resumed",
        "lastTransitionTime": None, "observedGeneration": 2}
    assert "Resumed" in [e.reason for e in plan.events]


def test_created_suspended_never_creates_pods() -> None:
    spec = base_spec()
    spec["runPolicy"]["suspend"] = True
    plan = decide(make_job(spec), [], NOW)
    assert plan.status["phase"] == "Suspended" and plan.create_pods == [] and plan.delete_pods == []


def test_ttl_deletes_the_job_after_it_finished() -> None:
    spec = base_spec()
    spec["runPolicy"]["ttlSecondsAfterFinished"] = 30
    job = make_job(spec, status={"phase": "Succeeded", "restartCount": 0, "completionTime": "2030-01-01T12:00:00Z"})
    plan = decide(job, [], later(10))
    assert not plan.delete_job and plan.requeue_after == pytest.approx(20)
    assert decide(job, [], later(30)).delete_job


@pytest.mark.parametrize("policy, succeeded, expected", [
    ("None", True, []),
    ("None", False, ["tj-node-1"]),  # a failed job's running pods always go
    ("Running", True, ["tj-node-1"]),
    ("All", True, ["tj-node-0", "tj-node-1"]),
])
def test_clean_pod_policy(policy: str, succeeded: bool, expected: list[str]) -> None:
    spec = base_spec()
    spec["runPolicy"]["cleanPodPolicy"] = policy
    job = make_job(spec, status={"phase": "Succeeded" if succeeded else "Failed", "restartCount": 0,
                                 "completionTime": "2030-01-01T12:00:00Z"})
    pods = [make_pod(job, 0, phase="Succeeded", exit_code=0), make_pod(job, 1)]
    assert sorted(decide(job, pods, NOW).delete_pods) == expected


def test_invalid_spec_fails_the_job_with_the_field_in_the_message() -> None:
    spec = base_spec()
    spec["data"]["uri"] = "s3://bucket/corpus"
    plan = decide(make_job(spec), [], NOW)
    assert plan.status["phase"] == "Failed" and plan.create_pods == []
    failed = cond(plan, "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith("spec.data.uri: s3:// URIs are not supported")


def test_pods_of_another_job_with_the_same_name_are_treated_as_stale() -> None:
    job = make_job(status={"phase": "Pending", "restartCount": 0})
    foreign = make_pod(job, 0)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "an-older-job"
    plan = decide(job, [foreign], NOW)
    assert plan.delete_pods == ["tj-node-0"] and plan.create_pods == []


def test_host_paths_fail_the_job_unless_the_operator_allows_them() -> None:
    spec = base_spec()
    spec["data"]["uri"] = "file:///srv/corpus/train.txt"
    plan = decide(make_job(spec), [], NOW)
    assert plan.status["phase"] == "Failed" and plan.create_pods == []
    assert (cond(plan, "Running")["status"], cond(plan, "Running")["reason"]) == ("False", "InvalidSpec")
    assert cond(plan, "Failed")["message"].startswith("spec.data.uri: file:// URIs mount a directory of the node")
    assert decide(make_job(spec), [], NOW, allow_host_paths=True).create_pods == [0, 1]


def test_a_refused_volume_type_fails_the_job_naming_the_field() -> None:
    spec = base_spec() | {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}
    plan = decide(make_job(spec), [], NOW, allow_host_paths=True)  # the flag is about file:// URIs only
    assert plan.status["phase"] == "Failed" and cond(plan, "Failed")["reason"] == "InvalidSpec"
    assert cond(plan, "Failed")["message"].startswith("spec.volumes[0]: hostPath is not allowed")


def test_a_refused_child_shows_as_invalid_not_as_an_empty_status() -> None:
    plan = decide(make_job(), [], NOW)
    message = "spec.affinity: the API server refused the Pod tj-node-0: ..."
    status = creation_failed(plan.status, CreateFailure(message, invalid=True), 1, NOW)
    conditions = {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}
    assert conditions["Created"] == conditions["Running"] == ("False", "InvalidSpec", message)
    retryable = creation_failed(plan.status, CreateFailure("exceeded quota", invalid=False), 1, NOW)
    assert get_condition(retryable["conditions"], "Created")["reason"] == "FailedCreate"
    assert get_condition(retryable["conditions"], "Running")["reason"] == "PodsPending"
