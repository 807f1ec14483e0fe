"""A ModelDeployment's status from what the operator observed (pure): phase, conditions, replica counts,
failures of pods that cannot be scheduled or keep failing, and the Events that the change from the old status deserves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modelfleet_operator import labels
from modelfleet_operator.conditions import get_condition, set_condition
from modelfleet_operator.events import Event
from modelfleet_operator.modeldeployment import canary as mdcanary
from modelfleet_operator.modeldeployment.autoscaling import autoscaling_events, autoscaling_status
from modelfleet_operator.modeldeployment.capacity import WAIT, Strategy
from modelfleet_operator.modeldeployment.render import CONTAINER, FETCH_CONTAINER, url
from modelfleet_operator.modeldeployment.resolve import Resolution, ResolvedModel
from modelfleet_operator.modeldeployment.spec import Autoscaling

MAX_FAILURES = 5
MAX_LOG_LINES = 20
_PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
_CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError")


@dataclass(frozen=True)
class Failure:
    pod: str
    node: str
    container: str
    reason: str
    message: str
    exit_code: int | None = None
    restart_count: int = 0
    last_log_lines: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.pod, self.container, self.reason, self.restart_count

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"pod": self.pod, "node": self.node, "container": self.container,
                                  "reason": self.reason, "message": self.message, "restartCount": self.restart_count,
                                  "lastLogLines": list(self.last_log_lines)}
        if self.exit_code is not None:
            status["exitCode"] = self.exit_code
        return status

    @property
    def summary(self) -> str:
        where = f"pod {self.pod}" + (f" on {self.node}" if self.node else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Observation:
    """Inputs of the status: the spec as parsed (or why it could not be), the model, and the children's state."""

    name: str
    namespace: str
    generation: int
    desired_replicas: int = 0
    served_name: str = ""
    spec_error: str | None = None
    resolution: Resolution | None = None
    serving: ResolvedModel | None = None  # the model rendered: resolved now, or kept from before
    strategy: Strategy | None = None
    deployment: dict[str, Any] | None = None
    failures: list[Failure] = field(default_factory=list)
    autoscaling: Autoscaling | None = None
    autoscaler: dict[str, Any] | None = None  # its HorizontalPodAutoscaler (KEDA's, with KEDA) as read
    canary: mdcanary.Decision | None = None


def pod_failures(pods: list[dict[str, Any]]) -> list[Failure]:
    """Unschedulable pods and containers that crashed, cannot pull their image or cannot be created."""
    failures: list[Failure] = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        node = (pod.get("spec") or {}).get("nodeName") or ""
        status = pod.get("status") or {}
        if status.get("phase") == "Failed" and status.get("reason"):
            continue  # ended by the node (Evicted, NodeShutdown, ...), not by the model: the ReplicaSet replaces it
        scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            message = scheduled.get("message") or "unschedulable"
            failures.append(Failure(name, node, CONTAINER, "Unschedulable", message))
            continue
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            failure = _container_failure(name, node, cs)
            if failure:
                failures.append(failure)
    return failures


def _container_failure(pod: str, node: str, cs: dict[str, Any]) -> Failure | None:
    container = cs.get("name", "")
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    restarts = int(cs.get("restartCount") or 0)
    crashed_reason = "ModelFetchFailed" if container == FETCH_CONTAINER else "ModelLoadFailed"
    terminated = state.get("terminated")
    if waiting.get("reason") == "CrashLoopBackOff":
        terminated = (cs.get("lastState") or {}).get("terminated") or {}
    elif waiting.get("reason") in _PULL_ERRORS + _CONFIG_ERRORS:
        reason = "ImagePullFailed" if waiting["reason"] in _PULL_ERRORS else "ContainerConfigError"
        return Failure(pod, node, container, reason, waiting.get("message") or waiting["reason"], None, restarts)
    if terminated is None or int(terminated.get("exitCode", 0)) == 0:
        return None
    code = int(terminated["exitCode"])
    text = (terminated.get("message") or "").strip()
    lines = tuple(text.splitlines()[-MAX_LOG_LINES:])
    message = f"container {container} exited with code {code} ({terminated.get('reason') or 'Error'})"
    if lines:
        message += f": {lines[-1]}"
    return Failure(pod, node, container, crashed_reason, message, code, restarts, lines)


def rollout_complete(deployment: dict[str, Any] | None, desired: int) -> bool:
    """kubectl rollout status' test: the latest spec observed, and exactly `desired` updated pods, all available."""
    if not deployment:
        return False
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return False
    counts = [int(status.get(k) or 0) for k in ("updatedReplicas", "replicas", "availableReplicas")]
    return all(count == desired for count in counts)


def compute_status(obs: Observation, old: dict[str, Any] | None, now: str | None = None) -> dict[str, Any]:
    """The new status; conditions keep their lastTransitionTime unless their status flips."""
    old = old or {}
    dep_status = (obs.deployment or {}).get("status") or {}
    desired = obs.desired_replicas
    counts = {k: int(dep_status.get(k) or 0)
              for k in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")}
    complete = rollout_complete(obs.deployment, desired)
    all_ready = complete and counts["readyReplicas"] == desired
    failures = [] if all_ready else obs.failures[:MAX_FAILURES]
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "url": url(obs.name, obs.namespace),
        "selector": labels.selector(labels.runtime_labels(obs.name)),
        "desiredReplicas": desired,
        **counts,
        "ready": f"{counts['readyReplicas']}/{desired}",
        "failures": [f.to_status() for f in failures],
    }
    if obs.serving:
        status["model"] = obs.serving.to_status(obs.served_name)
    if obs.strategy:
        status["rollout"] = obs.strategy.to_status()
    if obs.autoscaling and not obs.spec_error:
        status["autoscaling"] = autoscaling_status(obs.autoscaling, obs.autoscaler, old.get("autoscaling"))
    if obs.canary and obs.canary.status:
        status["canary"] = obs.canary.status
    canary_state = obs.canary.state if obs.canary else None

    conditions = old.get("conditions")

    def put(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, obs.generation, now)

    if obs.spec_error:
        for type_ in ("ModelResolved", "Progressing", "Available", "Ready"):
            put(type_, False, "InvalidSpec", obs.spec_error)
        status.update(phase="Invalid", conditions=conditions)
        return status

    assert obs.resolution is not None
    blocked = _blocked(obs, failures, complete)  # (reason, message) of whatever keeps the rollout from finishing
    waiting = _waiting_for_room(obs, failures, complete, counts["availableReplicas"]) if blocked else None
    if waiting:
        blocked = None
    if canary_state == mdcanary.ROLLED_BACK:
        blocked = ("CanaryRolledBack", obs.canary.status["message"])
    resolution_message = obs.resolution.message
    if not obs.resolution.resolved and obs.serving:
        resolution_message += f"; still serving {obs.serving.uri}"
    put("ModelResolved", obs.resolution.resolved, obs.resolution.reason, resolution_message)

    progress = (f"{counts['updatedReplicas']} of {desired} replicas updated, "
                f"{counts['availableReplicas']} available")
    if blocked:
        put("Progressing", False, *blocked)
    elif waiting:
        put("Progressing", True, "WaitingForRoom", waiting)
    elif canary_state == mdcanary.CANARY:
        put("Progressing", True, "CanaryProgressing", obs.canary.status["message"])
    elif complete:
        done = f"all {desired} replicas run the current spec"
        if obs.strategy and obs.strategy.without_surge:
            done += f"; {obs.strategy.message}"
        put("Progressing", True, "RolloutComplete", done)
    elif obs.strategy and obs.strategy.without_surge:
        put("Progressing", True, "RollingWithoutSurge", f"{progress}; {obs.strategy.message}")
    else:
        put("Progressing", True, "RollingUpdate", progress)

    available = counts["availableReplicas"]
    if desired == 0:
        put("Available", False, "ScaledToZero", "spec.replicas is 0")
    elif available > 0:
        put("Available", True, "ReplicasAvailable", f"{available} replica(s) serve {obs.served_name}")
    else:
        put("Available", False, blocked[0] if blocked else "NoReplicasAvailable",
            blocked[1] if blocked else "no replica is available yet")

    if canary_state == mdcanary.CANARY and desired > 0:
        put("Ready", False, "CanaryProgressing", obs.canary.status["message"])
    elif all_ready and desired > 0 and not blocked:
        put("Ready", True, "AllReplicasReady", f"{desired}/{desired} replicas ready")
    elif desired == 0 and obs.serving:
        put("Ready", False, "ScaledToZero", "spec.replicas is 0")
    else:
        put("Ready", False, blocked[0] if blocked else "ReplicasNotReady",
            blocked[1] if blocked else f"{counts['readyReplicas']}/{desired} replicas ready; {progress}")

    if not obs.serving:
        phase = "Pending"
    elif blocked:
        phase = "Degraded"
    elif all_ready and canary_state is None:
        phase = "Ready" if desired > 0 else "ScaledToZero"
    else:
        phase = "Progressing"
    status.update(phase=phase, conditions=conditions)
    return status


def _waiting_for_room(obs: Observation, failures: list[Failure], complete: bool, available: int) -> str | None:
    """With whenNoRoom Wait, a rollout whose new pods only lack room while the old ones serve is waiting, not
    failing: the message for Progressing, else None."""
    if complete or not obs.strategy or obs.strategy.when_no_room != WAIT or obs.strategy.without_surge:
        return None
    if not failures or any(f.reason != "Unschedulable" for f in failures) or available < obs.desired_replicas:
        return None
    return (f"{failures[0].summary}; spec.rollout.whenNoRoom is Wait: the {available} old replica(s) keep serving "
            "and the rollout continues when room appears")


def _blocked(obs: Observation, failures: list[Failure], complete: bool) -> tuple[str, str] | None:
    if not obs.serving:
        assert obs.resolution is not None
        return obs.resolution.reason, obs.resolution.message
    if complete:
        return None
    if failures:
        return failures[0].reason, failures[0].summary
    conditions = ((obs.deployment or {}).get("status") or {}).get("conditions")
    replica_failure = get_condition(conditions, "ReplicaFailure")
    if replica_failure and replica_failure.get("status") == "True":
        return "ReplicaFailure", replica_failure.get("message") or "pods cannot be created"
    progressing = get_condition(conditions, "Progressing")
    if progressing and progressing.get("status") == "False":
        return progressing.get("reason") or "ProgressDeadlineExceeded", progressing.get("message") or ""
    return None


def events(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Event]:
    """Events for what changed between two statuses: model resolution, model changes, rollouts, scaling, failures."""
    old = old or {}
    result: list[Event] = []
    old_conditions, new_conditions = old.get("conditions"), new.get("conditions")

    def changed(type_: str) -> dict[str, Any] | None:
        before = get_condition(old_conditions, type_) or {}
        after = get_condition(new_conditions, type_)
        if after and (before.get("status"), before.get("reason")) != (after["status"], after["reason"]):
            return after
        return None

    resolved = changed("ModelResolved")
    if resolved and resolved["reason"] != "InvalidSpec":
        bad = resolved["reason"] in ("TrainingJobFailed", "TrainingJobNoOutput")
        result.append(Event("Warning" if bad else "Normal", resolved["reason"], resolved["message"]))
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    if old_model.get("uri") and _model_text(old_model) != _model_text(new_model):
        result.append(Event("Normal", "ModelChanged",
                            f"rolling out {_model_text(new_model)} (was {_model_text(old_model)})"))
    progressing = changed("Progressing")
    if progressing and progressing["status"] == "True" and progressing["reason"] != "CanaryProgressing":
        reason = "RolloutStarted" if progressing["reason"] == "RollingUpdate" else progressing["reason"]
        result.append(Event("Normal", reason, progressing["message"]))
    elif progressing and progressing["reason"] in ("ReplicaFailure", "ProgressDeadlineExceeded"):
        result.append(Event("Warning", progressing["reason"], progressing["message"]))
    if "autoscaling" in new:  # the autoscaler's decisions, with its reasons
        result += [Event(*event) for event in autoscaling_events(old.get("autoscaling"), new["autoscaling"])]
    elif "desiredReplicas" in old and old["desiredReplicas"] != new.get("desiredReplicas"):
        result.append(Event("Normal", "Scaled",
                            f"scaled from {old['desiredReplicas']} to {new['desiredReplicas']} replicas"))
    result += [Event(e.type, e.reason, e.message) for e in mdcanary.events(old.get("canary"), new.get("canary"))]
    seen = {_failure_key(f) for f in old.get("failures") or []}
    for failure in new.get("failures") or []:
        if _failure_key(failure) not in seen:
            result.append(Event("Warning", failure["reason"], f"pod {failure['pod']}: {failure['message']}"))
    if new.get("phase") == "Invalid":  # once, and again whenever the reason given changes
        message = get_condition(new_conditions, "Ready")["message"]
        if old.get("phase") != "Invalid" or message != (get_condition(old_conditions, "Ready") or {}).get("message"):
            result.append(Event("Warning", "InvalidSpec", message))
    return result


def carry_log_lines(failures: list[Failure], old: dict[str, Any] | None) -> tuple[list[Failure], list[Failure]]:
    """Failures with the log lines the old status already holds for them, and the crashes still to fetch logs for:
    new ones (logs are read once per crash, not on every reconcile) whose termination message held none."""
    known = {_failure_key(f): tuple(f.get("lastLogLines") or ()) for f in (old or {}).get("failures") or []}
    result, fetch = [], []
    for failure in failures:
        lines = known.get(failure.key)
        if lines is not None and not failure.last_log_lines:
            failure = replace(failure, last_log_lines=lines)
        elif lines is None and failure.exit_code is not None and not failure.last_log_lines:
            fetch.append(failure)
        result.append(failure)
    return result, fetch


def _failure_key(failure: dict[str, Any]) -> tuple[Any, ...]:
    return failure.get("pod"), failure.get("container"), failure.get("reason"), failure.get("restartCount")


def _model_text(model: dict[str, Any]) -> str:
    return model.get("uri", "?") + (f"@{model['digest']}" if model.get("digest") else "")
