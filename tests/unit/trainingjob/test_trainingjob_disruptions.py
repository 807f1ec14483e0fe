"""Disruptions (not counted against backoffLimit), stalls (counted) and the failed pod's last log lines."""

from __future__ import annotations

import datetime as dt

from modelfleet_operator.conditions import get_condition
from modelfleet_operator.trainingjob.status import decide
from tj_builders import NOW, make_job, make_pod


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def cond(plan, type_: str) -> dict:
    return get_condition(plan.status["conditions"], type_) or {}


def job_with(status: dict | None = None, **policy) -> dict:
    job = make_job(status={"phase": "Running", "restartCount": 0, "startTime": "2030-01-01T11:00:00Z", **(status or {})})
    job["spec"]["runPolicy"].update(policy)
    return job


def evicted(pod: dict) -> dict:
    pod["status"].setdefault("conditions", []).append(
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting"})
    pod["metadata"]["deletionTimestamp"] = "2030-01-01T11:59:00Z"
    return pod


def test_an_evicted_pod_restarts_the_gang_without_counting_against_backoff() -> None:
    job = job_with(backoffLimit=0)  # a counted restart would fail the job at once
    plan = decide(job, [evicted(make_pod(job, 0)), make_pod(job, 1)], NOW)
    assert plan.status["phase"] == "Restarting" and plan.status["restartCount"] == 1
    assert plan.status["disruptions"] == 1 and plan.restart_reason == "Disrupted"
    assert plan.delete_pods == ["tj-node-1"]  # the evicted one is already going
    assert cond(plan, "Restarting")["reason"] == "Disrupted"
    assert "EvictionByEvictionAPI" in cond(plan, "Restarting")["message"]
    assert [e.reason for e in plan.events] == ["Disrupted", "Restarting"]
    assert "failures" not in plan.status

    # The next attempt's pods then run; a real failure after it still gets its backoffLimit of 0 -> Failed.
    status = dict(plan.status, phase="Running")
    job2 = job_with(status, backoffLimit=0)
    failed = decide(job2, [make_pod(job2, 0, attempt=1, phase="Failed", exit_code=1), make_pod(job2, 1, attempt=1)],
                    later(60))
    assert failed.status["phase"] == "Failed" and cond(failed, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_pod_deleted_while_running_is_a_disruption() -> None:
    job = job_with(backoffLimit=1, status={"restartCount": 1})  # one counted restart already used
    plan = decide(job, [make_pod(job, 0, attempt=1, deleting=True), make_pod(job, 1, attempt=1)], NOW)
    assert plan.status["restartCount"] == 2 and plan.status["disruptions"] == 1
    assert "deleted while running" in cond(plan, "Restarting")["message"]
    # It then waits for both old pods to go before creating the next attempt's.
    after = decide(job_with(dict(plan.status), backoffLimit=1), [make_pod(job, 0, attempt=1, deleting=True)], later(1))
    assert after.create_pods == [] and after.status["phase"] == "Restarting"
    fresh = decide(job_with(dict(plan.status), backoffLimit=1), [], later(2))
    assert fresh.create_pods == [0, 1]


def test_a_node_pressure_eviction_without_deletion_is_a_disruption_too() -> None:
    job = job_with(backoffLimit=0)
    pod = make_pod(job, 1, phase="Failed")
    pod["status"]["reason"] = "Evicted"
    pod["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]
    plan = decide(job, [make_pod(job, 0), pod], NOW)
    assert plan.status["phase"] == "Restarting" and plan.status["disruptions"] == 1


def test_a_stalled_job_is_marked_and_restarted_counting_against_backoff() -> None:
    job = job_with({"progress": {"step": 7}}, progressDeadlineSeconds=60, backoffLimit=1)
    pods = [make_pod(job, 0), make_pod(job, 1)]
    first = decide(job, pods, NOW)
    assert first.status["lastProgress"] == {"attempt": 0, "step": 7, "time": "2030-01-01T12:00:00Z"}
    assert first.requeue_after == 60 and first.status["phase"] == "Running"
    # The step advances: the clock restarts.
    moved = decide(job_with({**first.status, "progress": {"step": 9}}, progressDeadlineSeconds=60, backoffLimit=1),
                   pods, later(50))
    assert moved.status["lastProgress"]["step"] == 9 and moved.requeue_after == 60
    # No change for the whole deadline: Stalled, an Event, a counted restart.
    job = job_with({**moved.status, "progress": {"step": 9}}, progressDeadlineSeconds=60, backoffLimit=1)
    stalled = decide(job, pods, later(111))
    assert stalled.status["phase"] == "Restarting" and stalled.status["restartCount"] == 1
    assert stalled.status.get("disruptions", 0) == 0 and stalled.restart_reason == "Stalled"
    stall = cond(stalled, "Stalled")
    assert stall["status"] == "True" and stall["reason"] == "ProgressDeadlineExceeded"
    assert "step 9 since 2030-01-01T12:00:50Z" in stall["message"]
    assert "Stalled" in [e.reason for e in stalled.events]
    assert sorted(stalled.delete_pods) == ["tj-node-0", "tj-node-1"]

    # The next attempt: its own clock; it stalls too, and backoffLimit 1 is used up -> Failed.
    status = dict(stalled.status, phase="Running")
    pods1 = [make_pod(job, 0, attempt=1), make_pod(job, 1, attempt=1)]
    job1 = job_with({**status, "progress": {"step": 9}}, progressDeadlineSeconds=60, backoffLimit=1)
    armed = decide(job1, pods1, later(200))
    assert armed.status["lastProgress"] == {"attempt": 1, "step": 9, "time": "2030-01-01T12:03:20Z"}
    job1 = job_with({**armed.status, "progress": {"step": 9}}, progressDeadlineSeconds=60, backoffLimit=1)
    failed = decide(job1, pods1, later(261))
    assert failed.status["phase"] == "Failed" and cond(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "no progress for 60s" in cond(failed, "Failed")["message"]


def test_progress_after_a_stall_clears_the_condition() -> None:
    job = job_with({"progress": {"step": 12}, "restartCount": 1,
                    "lastProgress": {"attempt": 1, "step": 9, "time": "2030-01-01T11:59:00Z"},
                    "conditions": [{"type": "Stalled", "status": "True", "reason": "ProgressDeadlineExceeded"}]},
                   progressDeadlineSeconds=60)
    plan = decide(job, [make_pod(job, 0, attempt=1), make_pod(job, 1, attempt=1)], NOW)
    assert cond(plan, "Stalled")["status"] == "False" and cond(plan, "Stalled")["reason"] == "Progressing"


def test_no_deadline_no_stall_tracking() -> None:
    job = job_with({"progress": {"step": 7}})
    plan = decide(job, [make_pod(job, 0), make_pod(job, 1)], NOW)
    assert "lastProgress" not in plan.status and plan.requeue_after is None


def test_a_failed_pods_termination_message_becomes_its_last_log_lines() -> None:
    job = job_with()
    pod = make_pod(job, 1, phase="Failed", exit_code=1)
    log = [f"line {i}" for i in range(30)] + ["RuntimeError: boom"]
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "\n".join(log) + "\n"
    plan = decide(job, [make_pod(job, 0), pod], NOW)
    (failure,) = plan.status["failures"]
    assert failure["lastLogLines"] == log[-20:] and failure["lastLogLines"][-1] == "RuntimeError: boom"
    assert plan.new_failures[0] is failure  # the handler may still replace them with the pod log's own tail


def test_a_pod_that_vanished_while_running_is_a_disruption() -> None:
    """Deleted with no grace period (or its node gone): no terminating pod to see, only a rank seen before and
    missing now."""
    job = job_with(backoffLimit=0)
    seen = decide(job, [make_pod(job, 0), make_pod(job, 1)], NOW)
    plan = decide(job_with(dict(seen.status), backoffLimit=0), [make_pod(job, 0)], later(1))
    assert plan.status["phase"] == "Restarting" and plan.status["disruptions"] == 1
    assert plan.delete_pods == ["tj-node-0"] and plan.create_pods == []
    assert "pod tj-node-1 was deleted while running (it is gone)" in cond(plan, "Restarting")["message"]
    # Ranks never seen (a first creation in progress) are simply created.
    fresh = make_job(status={"phase": "Pending", "restartCount": 0, "nodes": [
        {"rank": 0, "pod": "tj-node-0", "phase": "Missing"}, {"rank": 1, "pod": "tj-node-1", "phase": "Missing"}]})
    assert decide(fresh, [make_pod(fresh, 0, phase="Pending")], NOW).create_pods == [1]


def test_a_job_that_never_reports_stalls_from_when_its_pods_ran() -> None:
    job = job_with(progressDeadlineSeconds=30)
    pods = [make_pod(job, 0), make_pod(job, 1)]
    armed = decide(job, pods, NOW)
    assert armed.status["lastProgress"] == {"attempt": 0, "time": "2030-01-01T12:00:00Z"}  # no step key to drop
    again = decide(job_with(armed.status, progressDeadlineSeconds=30), pods, later(10))
    assert again.status["lastProgress"] == armed.status["lastProgress"] and again.requeue_after == 20
    stalled = decide(job_with(armed.status, progressDeadlineSeconds=30), pods, later(31))
    assert "no step reported since 2030-01-01T12:00:00Z" in cond(stalled, "Stalled")["message"]


def test_suspension_resets_the_progress_clock() -> None:
    job = job_with({"lastProgress": {"attempt": 0, "step": 3, "time": "2030-01-01T11:00:00Z"}},
                   progressDeadlineSeconds=30, suspend=True)
    assert "lastProgress" not in decide(job, [], NOW).status
