"""Status and Events computed from what the operator observed (pure)."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.conditions import get_condition
from modelfleet_operator.modeldeployment.capacity import Strategy
from modelfleet_operator.modeldeployment.resolve import Resolution, ResolvedModel
from modelfleet_operator.modeldeployment.status import (
    Failure,
    Observation,
    carry_log_lines,
    compute_status,
    events,
    pod_failures,
)

MODEL = ResolvedModel("pvc://models/tiny", "sha256:" + "ab" * 32)
RESOLVED = Resolution(MODEL, "ModelURI", "serving pvc://models/tiny")
NOW = "2026-01-01T00:00:00Z"


def deployment(replicas: int, updated: int, ready: int, available: int, generation: int = 2, observed: int = 2,
               conditions: list | None = None) -> dict:
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": available, "conditions": conditions or []}}


def observe(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(name="chat", namespace="ml", generation=3, desired_replicas=2, served_name="chat",
                                resolution=RESOLVED, serving=MODEL, strategy=Strategy(1, 0))
    base.update(kw)
    return Observation(**base)


def cond(status: dict, type_: str) -> tuple[str, str]:
    c = get_condition(status["conditions"], type_)
    assert c is not None and c["observedGeneration"] == 3
    return c["status"], c["reason"]


def pod(name: str, **status: Any) -> dict:
    return {"metadata": {"name": name}, "spec": {"nodeName": "gpu-node-0"}, "status": status}


def test_ready_when_every_updated_replica_is_available() -> None:
    status = compute_status(observe(deployment=deployment(2, 2, 2, 2)), None, NOW)
    assert status["phase"] == "Ready" and status["ready"] == "2/2"
    assert status["url"] == "http://chat.ml.svc.cluster.local:8000/v1"
    assert status["selector"] == ("app.kubernetes.io/managed-by=modelfleet,app.kubernetes.io/name=modelfleet-runtime,"
                                  "modelfleet.dev/modeldeployment=chat,modelfleet.dev/role=runtime")
    assert status["model"] == {"name": "chat", "uri": MODEL.uri, "digest": MODEL.digest}
    assert status["observedGeneration"] == 3 and status["replicas"] == 2 and status["updatedReplicas"] == 2
    assert cond(status, "ModelResolved") == ("True", "ModelURI")
    assert cond(status, "Progressing") == ("True", "RolloutComplete")
    assert cond(status, "Available") == ("True", "ReplicasAvailable")
    assert cond(status, "Ready") == ("True", "AllReplicasReady")


def test_rolling_while_old_pods_remain_or_generation_is_unobserved() -> None:
    for dep in (deployment(3, 1, 3, 2), deployment(2, 2, 2, 2, generation=3, observed=2)):
        status = compute_status(observe(deployment=dep), None, NOW)
        assert status["phase"] == "Progressing"
        assert cond(status, "Progressing") == ("True", "RollingUpdate")
        assert cond(status, "Ready")[0] == "False"
    without = compute_status(observe(deployment=deployment(2, 1, 1, 1), strategy=Strategy(0, 1, True, "no GPU", "Replace")),
                             None, NOW)
    assert cond(without, "Progressing") == ("True", "RollingWithoutSurge")
    assert without["rollout"] == {"maxSurge": 0, "maxUnavailable": 1, "withoutSurge": True, "whenNoRoom": "Replace",
                                  "message": "no GPU"}


def test_waiting_for_the_model() -> None:
    waiting = Resolution(None, "TrainingJobNotSucceeded", "waiting for TrainingJob tj to succeed (phase Running)")
    status = compute_status(observe(resolution=waiting, serving=None, strategy=None), None, NOW)
    assert status["phase"] == "Pending" and "model" not in status
    for type_ in ("ModelResolved", "Progressing", "Ready"):
        assert cond(status, type_) == ("False", "TrainingJobNotSucceeded")
    # A job that runs again leaves the previous model serving.
    status = compute_status(observe(resolution=waiting, deployment=deployment(2, 2, 2, 2)), None, NOW)
    assert status["phase"] == "Ready" and cond(status, "ModelResolved")[0] == "False"
    assert "still serving pvc://models/tiny" in get_condition(status["conditions"], "ModelResolved")["message"]


def test_crash_loop_is_reported_as_model_load_failed_with_log_lines() -> None:
    crashing = pod("chat-1", containerStatuses=[{
        "name": "runtime", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                     "message": "loading weights\ntorch.OutOfMemoryError: CUDA out of memory"}}}])
    failures = pod_failures([crashing, pod("chat-2", containerStatuses=[
        {"name": "runtime", "state": {"running": {}}, "restartCount": 0}])])
    assert failures == [Failure("chat-1", "gpu-node-0", "runtime", "ModelLoadFailed",
                                "container runtime exited with code 1 (Error): torch.OutOfMemoryError: "
                                "CUDA out of memory", 1, 4, ("loading weights",
                                                             "torch.OutOfMemoryError: CUDA out of memory"))]
    status = compute_status(observe(deployment=deployment(2, 2, 1, 1), failures=failures), None, NOW)
    assert status["phase"] == "Degraded"
    assert cond(status, "Progressing") == ("False", "ModelLoadFailed")
    assert cond(status, "Ready") == ("False", "ModelLoadFailed")
    assert cond(status, "Available") == ("True", "ReplicasAvailable")
    assert status["failures"][0]["lastLogLines"][-1] == "torch.OutOfMemoryError: CUDA out of memory"
    # Failed pods that linger once every replica is ready again are history, not a failure.
    healed = compute_status(observe(deployment=deployment(2, 2, 2, 2), failures=failures), status, NOW)
    assert healed["phase"] == "Ready" and healed["failures"] == []


def test_other_pod_failures() -> None:
    pods = [
        pod("a", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]),
        pod("b", containerStatuses=[{"name": "runtime", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                              "message": "not found"}}}]),
        pod("c", initContainerStatuses=[{"name": "model-fetch", "state": {"terminated": {"exitCode": 2}}}]),
        pod("d", containerStatuses=[{"name": "runtime", "state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "keys" not found'}}}]),
        pod("e", phase="Succeeded", containerStatuses=[{"name": "runtime", "state": {"terminated": {"exitCode": 0}}}]),
        pod("f", phase="Failed", reason="Evicted", containerStatuses=[
            {"name": "runtime", "state": {"terminated": {"exitCode": 137}}}]),
    ]
    assert [(f.pod, f.reason) for f in pod_failures(pods)] == [
        ("a", "Unschedulable"), ("b", "ImagePullFailed"), ("c", "ModelFetchFailed"), ("d", "ContainerConfigError")]
    status = compute_status(observe(deployment=deployment(2, 2, 0, 0), failures=pod_failures(pods)), None, NOW)
    assert cond(status, "Available") == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in get_condition(status["conditions"], "Ready")["message"]


def test_replica_failure_from_the_deployment() -> None:
    dep = deployment(0, 0, 0, 0, conditions=[{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                              "message": 'pods "chat-x" is forbidden: violates PodSecurity'}])
    status = compute_status(observe(deployment=dep), None, NOW)
    assert status["phase"] == "Degraded" and cond(status, "Progressing") == ("False", "ReplicaFailure")


def test_invalid_spec() -> None:
    status = compute_status(Observation("chat", "ml", 3, spec_error="spec.model: exactly one"), None, NOW)
    assert status["phase"] == "Invalid" and cond(status, "Ready") == ("False", "InvalidSpec")
    assert [e.reason for e in events(None, status)] == ["InvalidSpec"]
    assert events(status, compute_status(Observation("chat", "ml", 3, spec_error="spec.model: exactly one"), status,
                                         NOW)) == []  # once, not on every reconcile
    other = compute_status(Observation("chat", "ml", 4, spec_error="spec.affinity: the API server refused"), status, NOW)
    assert [(e.reason, e.message) for e in events(status, other)] == [("InvalidSpec", "spec.affinity: the API server refused")]


def test_conditions_keep_their_transition_time() -> None:
    first = compute_status(observe(deployment=deployment(2, 2, 2, 2)), None, "2026-01-01T00:00:00Z")
    again = compute_status(observe(deployment=deployment(2, 2, 2, 2)), first, "2026-01-01T01:00:00Z")
    assert again == first


def test_events_for_rollouts_scaling_model_changes_and_failures() -> None:
    rolling = compute_status(observe(deployment=deployment(1, 1, 0, 0)), None, NOW)
    assert [(e.type, e.reason) for e in events(None, rolling)] == [("Normal", "ModelURI"), ("Normal", "RolloutStarted")]
    ready = compute_status(observe(deployment=deployment(2, 2, 2, 2)), rolling, NOW)
    assert [e.reason for e in events(rolling, ready)] == ["RolloutComplete"]
    assert events(ready, ready) == []
    scaled = compute_status(observe(desired_replicas=3, deployment=deployment(3, 3, 3, 3)), ready, NOW)
    assert [(e.reason, e.message) for e in events(ready, scaled)] == [("Scaled", "scaled from 2 to 3 replicas")]
    new_model = ResolvedModel(MODEL.uri, "sha256:" + "ef" * 32)
    changed = compute_status(observe(serving=new_model, deployment=deployment(3, 1, 2, 2)), ready, NOW)
    assert [e.reason for e in events(ready, changed)] == ["ModelChanged", "RolloutStarted"]
    failure = Failure("chat-1", "n", "runtime", "ModelLoadFailed", "exited with code 1", 1, 0)
    failing = compute_status(observe(deployment=deployment(2, 2, 1, 1), failures=[failure]), ready, NOW)
    assert [(e.type, e.reason) for e in events(ready, failing)] == [("Warning", "ModelLoadFailed")]
    assert events(failing, failing) == []  # one event per crash, not per reconcile


def test_log_lines_are_fetched_once_per_crash() -> None:
    crash = Failure("chat-1", "n", "runtime", "ModelLoadFailed", "exited", 1, 2)
    old = {"failures": [{**crash.to_status(), "lastLogLines": ["OOM"]}]}
    carried, fetch = carry_log_lines([crash], old)
    assert carried[0].last_log_lines == ("OOM",) and fetch == []
    next_crash = Failure("chat-1", "n", "runtime", "ModelLoadFailed", "exited", 1, 3)
    assert carry_log_lines([next_crash], old)[1] == [next_crash]
    unschedulable = Failure("chat-2", "", "runtime", "Unschedulable", "no node")
    assert carry_log_lines([unschedulable], None)[1] == []
    with_message = Failure("chat-3", "n", "runtime", "ModelLoadFailed", "exited", 1, 0, ("OOM",))
    assert carry_log_lines([with_message], None) == ([with_message], [])


def test_scaled_to_zero() -> None:
    status = compute_status(observe(desired_replicas=0, deployment=deployment(0, 0, 0, 0)), None, NOW)
    assert status["phase"] == "ScaledToZero" and status["ready"] == "0/0"
    assert cond(status, "Ready") == ("False", "ScaledToZero")
    assert cond(status, "Available") == ("False", "ScaledToZero")
    assert cond(status, "Progressing") == ("True", "RolloutComplete")


def test_wait_for_room_while_the_old_pods_serve() -> None:
    unschedulable = pod_failures([pod("new", conditions=[{"type": "PodScheduled", "status": "False",
                                                          "reason": "Unschedulable",
                                                          "message": "0/1 nodes are available: 1 Insufficient cpu."}])])
    rolling = deployment(3, 1, 2, 2)  # 2 old pods serve, the surge pod is Pending
    status = compute_status(observe(deployment=rolling, failures=unschedulable), None, NOW)
    assert status["phase"] == "Progressing"
    assert cond(status, "Progressing") == ("True", "WaitingForRoom")
    assert "Insufficient cpu" in get_condition(status["conditions"], "Progressing")["message"]
    assert cond(status, "Available") == ("True", "ReplicasAvailable")
    assert "WaitingForRoom" in [e.reason for e in events({"conditions": []}, status)]
    # Not when old pods are missing too: then it is a failure.
    short = compute_status(observe(deployment=deployment(2, 1, 1, 1), failures=unschedulable), None, NOW)
    assert short["phase"] == "Degraded" and cond(short, "Progressing") == ("False", "Unschedulable")


def test_canary_states_in_conditions_and_phase() -> None:
    from modelfleet_operator.modeldeployment.canary import CANARY, ROLLED_BACK, Decision

    running = Decision(False, 1, {"phase": "Progressing", "message": "step 1/2: 50.0% of the pods run the canary"},
                       state=CANARY)
    status = compute_status(observe(deployment=deployment(2, 2, 2, 2), canary=running), None, NOW)
    assert status["phase"] == "Progressing" and status["canary"]["phase"] == "Progressing"
    assert cond(status, "Progressing") == ("True", "CanaryProgressing")
    assert cond(status, "Ready") == ("False", "CanaryProgressing")
    back = Decision(False, 0, {"phase": "RolledBack", "message": "rolled back: TimeToFirstTokenP95 0.49 > 0.2"},
                    state=ROLLED_BACK)
    status = compute_status(observe(deployment=deployment(2, 2, 2, 2), canary=back), status, NOW)
    assert status["phase"] == "Degraded"
    assert cond(status, "Progressing") == ("False", "CanaryRolledBack")
    assert cond(status, "Available") == ("True", "ReplicasAvailable")  # the stable version serves
    assert cond(status, "Ready") == ("False", "CanaryRolledBack")
    # A finished canary's record stays without changing the conditions.
    done = Decision(True, 0, {"phase": "Promoted", "message": "promoted"})
    status = compute_status(observe(deployment=deployment(2, 2, 2, 2), canary=done), status, NOW)
    assert status["phase"] == "Ready" and status["canary"]["phase"] == "Promoted"
