"""The TrainingJob state machine: observed pods + spec + stored status -> the next status and actions.

Pure and level-triggered: every decision is recomputed from what exists now. The only state carried
between reconciles is in ``status`` (notably ``restartCount``, the current attempt) and in each pod's
attempt annotation, so a restarted operator continues exactly where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

from model_runtime.training import exitcodes
from modelfleet_operator import labels, policy
from modelfleet_operator.conditions import set_condition
from modelfleet_operator.events import Event
from modelfleet_operator.trainingjob.kueue import Admission
from modelfleet_operator.trainingjob.progress import final_digest
from modelfleet_operator.trainingjob.render import ATTEMPT_ANNOTATION, CONTAINER, Names
from modelfleet_operator.trainingjob.spec import JobSpec, SpecError, check_policy, parse_spec

PENDING, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED = (
    "Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
FINISHED = (SUCCEEDED, FAILED)
ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")

# Trainer exit codes that retrying cannot fix, and the job's Failed reason for each.
PERMANENT_EXIT_REASONS: dict[int, str] = {
    exitcodes.DATA_ERROR: "DataError",
    exitcodes.NONFINITE_LOSS: "NonFiniteLoss",
    exitcodes.OUTPUT_NOT_WRITABLE: "OutputNotWritable",
    exitcodes.CONFIG_ERROR: "ConfigurationError",
}
MAX_FAILURES = 10
LOG_LINES = 20
LOG_LINE_CHARS = 500
# How long to wait, after rank 0 succeeded, for its final progress report (which carries the model digest).
FINAL_REPORT_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class PodState:
    """What the state machine needs to know about one pod."""

    name: str
    rank: int | None
    attempt: int | None
    owner_uid: str | None
    phase: str
    node: str | None
    exit_code: int | None
    reason: str
    message: str
    finished_at: dt.datetime | None
    deleting: bool
    unschedulable: str | None  # the scheduler's message while it cannot place the pod
    disruption: str | None = None  # the DisruptionTarget condition's "reason: message" (eviction, preemption, drain)
    log_tail: tuple[str, ...] = ()  # the termination message's last lines (FallbackToLogsOnError: the log's)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_POD_PHASES


@dataclass
class Plan:
    """The outcome of one reconcile: apply deletes, then creates, then patch the status."""

    status: dict[str, Any]
    create_pods: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    new_failures: list[dict[str, Any]] = field(default_factory=list)  # also in status; logs are added before patching
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None
    restart_reason: str | None = None  # set when this reconcile starts a gang restart

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def observe_pod(pod: Mapping[str, Any]) -> PodState:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    terminated: Mapping[str, Any] = {}
    for container in status.get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            terminated = (container.get("state") or {}).get("terminated") or {}
    unschedulable = disruption = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            unschedulable = cond.get("message") or "the scheduler cannot place the pod"
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = ": ".join(str(cond[k]) for k in ("reason", "message") if cond.get(k)) or "DisruptionTarget"
    lines = str(terminated.get("message") or "").splitlines()
    return PodState(
        name=meta.get("name", ""),
        rank=_int((meta.get("labels") or {}).get(labels.NODE_RANK)),
        attempt=_int((meta.get("annotations") or {}).get(ATTEMPT_ANNOTATION)),
        owner_uid=owners[0].get("uid") if owners else None,
        phase=status.get("phase") or "Pending",
        node=(pod.get("spec") or {}).get("nodeName"),
        exit_code=terminated.get("exitCode"),
        reason=terminated.get("reason") or status.get("reason") or "",
        message=(terminated.get("message") or status.get("message") or "")[:1024],
        finished_at=parse_time(terminated.get("finishedAt")),
        deleting=bool(meta.get("deletionTimestamp")),
        unschedulable=unschedulable,
        disruption=disruption,
        log_tail=tuple(line[:LOG_LINE_CHARS] for line in lines[-LOG_LINES:]),
    )


def failure_record(pod: PodState, attempt: int, now: dt.datetime) -> dict[str, Any]:
    record: dict[str, Any] = {"pod": pod.name, "rank": pod.rank, "attempt": attempt, "reason": pod.reason or "Failed",
                              "message": pod.message, "lastLogLines": list(pod.log_tail), "time": iso(now)}
    if pod.node:
        record["node"] = pod.node
    if pod.exit_code is not None:
        record["exitCode"] = pod.exit_code
    return record


def describe(pod: PodState) -> str:
    code = f"exit code {pod.exit_code}" if pod.exit_code is not None else "no exit code"
    where = f" on {pod.node}" if pod.node else ""
    return f"pod {pod.name}{where} failed ({code}, {pod.reason or 'Failed'})" + (f": {pod.message}" if pod.message else "")


class _Decider:
    """One reconcile's decision; a class only to share the working status between small steps."""

    def __init__(self, job: Mapping[str, Any], pods: list[Mapping[str, Any]], now: dt.datetime,
                 allow_host_paths: bool, admission: Admission | None) -> None:
        self.job = job
        self.allow_host_paths = allow_host_paths
        self.admission = admission
        self.meta = job["metadata"]
        self.now = now
        self.generation = self.meta.get("generation")
        old = dict(job.get("status") or {})
        old.pop("progress", None)  # owned by the progress watcher, never written here
        self.old = old
        self.plan = Plan(status=dict(old))
        self.status = self.plan.status
        self.status["observedGeneration"] = self.generation
        self.status.setdefault("restartCount", 0)
        self.attempt: int = self.status["restartCount"]
        self.disruptions: int = self.status.get("disruptions") or 0
        self.pods = [observe_pod(p) for p in pods]
        self.progress = (job.get("status") or {}).get("progress")

    # --- helpers ---------------------------------------------------------------------------------------------------

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(
            self.status.get("conditions"), type_, status, reason, message, self.generation, iso(self.now))

    def has_condition(self, type_: str, status: str = "True", reason: str | None = None) -> bool:
        for cond in self.status.get("conditions") or []:
            if cond.get("type") == type_ and cond.get("status") == status and (reason is None or cond.get("reason") == reason):
                return True
        return False

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def enter(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        """Set the phase; post an Event only when it changes."""
        if self.status.get("phase") != phase:
            self.event("Warning" if warning else "Normal", reason, message)
        self.status["phase"] = phase

    def ours(self, spec: JobSpec, pod: PodState) -> bool:
        """A pod of this job's current attempt (terminating or not)."""
        return (pod.rank is not None and 0 <= pod.rank < spec.nodes and pod.attempt == self.attempt
                and pod.owner_uid == self.meta.get("uid"))

    def current(self, spec: JobSpec) -> dict[int, PodState]:
        """This attempt's pods by rank; any other pod of the job (older attempt, older job, terminating) is stale."""
        return {p.rank: p for p in self.pods if self.ours(spec, p) and not p.deleting}  # type: ignore[misc]

    def disrupted(self, spec: JobSpec) -> list[str]:
        """Why pods of this attempt are being taken away by something other than this controller: evicted,
        preempted or drained (the DisruptionTarget condition), deleted while running, or gone altogether (seen in
        this attempt by an earlier pass, status.nodes, and missing now). This controller deletes pods of the
        current attempt only when the job finishes or is suspended, which return before this is asked."""
        causes = []
        for p in sorted(self.pods, key=lambda p: p.rank or 0):
            if self.ours(spec, p) and p.phase != "Succeeded" and (p.deleting or p.disruption):
                where = f" on {p.node}" if p.node else ""
                why = f"disrupted ({p.disruption})" if p.disruption else "deleted while running"
                causes.append(f"pod {p.name}{where} was {why}")
        present = {p.rank for p in self.pods if self.ours(spec, p)}
        for node in self.old.get("nodes") or []:
            if node.get("phase") in ("Pending", "Running") and node.get("rank") not in present:
                causes.append(f"pod {node.get('pod')} was deleted while running (it is gone)")
        return causes

    @property
    def counted_restarts(self) -> int:
        """Restarts that count against backoffLimit: all but those after disruptions."""
        return self.attempt - self.disruptions

    def node_states(self, spec: JobSpec, pods: dict[int, PodState]) -> list[dict[str, Any]]:
        names = Names(spec.name)
        states = []
        for rank in range(spec.nodes):
            pod = pods.get(rank)
            state: dict[str, Any] = {"rank": rank, "pod": names.pod(rank), "phase": pod.phase if pod else "Missing"}
            if pod and pod.node:
                state["node"] = pod.node
            if pod and pod.exit_code is not None:
                state["exitCode"] = pod.exit_code
            states.append(state)
        return states

    # --- the decision ----------------------------------------------------------------------------------------------

    def decide(self) -> Plan:
        if self.old.get("phase") in FINISHED:
            self.cleanup_finished(self.safe_spec())
            return self.plan
        try:
            spec = parse_spec(self.meta["name"], self.meta.get("namespace", ""), self.job.get("spec") or {})
            check_policy(spec, self.allow_host_paths)
        except (SpecError, policy.PolicyError) as error:
            self.finish(None, FAILED, "InvalidSpec", str(error))
            return self.plan

        if spec.run_policy.suspend:
            self.suspend(spec)
            return self.plan
        if self.admission is not None and not self.admission.admitted:  # Kueue has not admitted it (kueue.py)
            self.suspend(spec, self.admission.reason, self.admission.message)
            return self.plan
        if self.has_condition("Suspended"):
            reason, message = (self.admission.reason, self.admission.message) if self.admission else (
                "Resumed", "the job was resumed")
            self.condition("Suspended", False, reason, message)
            self.event("Normal", reason, f"{message}; starting its pods")
        if self.deadline_exceeded(spec):
            return self.plan

        pods = self.current(spec)
        rank0_done = pods.get(0) is not None and pods[0].phase == "Succeeded"
        disrupted = [] if rank0_done else self.disrupted(spec)
        if disrupted:
            self.handle_disruption(spec, pods, disrupted)
            return self.plan
        stale = [p for p in self.pods if p not in pods.values()]
        if stale:
            self.plan.delete_pods = [p.name for p in stale if not p.deleting]
            self.status["nodes"] = self.node_states(spec, {})
            if self.status.get("phase") != RESTARTING:
                self.status["phase"] = RESTARTING if self.attempt else PENDING
            return self.plan  # the pods' deletion events wake the next reconcile

        self.status["nodes"] = self.node_states(spec, pods)
        failed = [p for p in pods.values() if p.phase == "Failed"]
        if failed:
            self.handle_failures(spec, pods, failed)
        elif rank0_done:
            self.handle_rank0_succeeded(spec, pods[0])
        else:
            self.run(spec, pods)
        return self.plan

    def safe_spec(self) -> JobSpec | None:
        try:
            return parse_spec(self.meta["name"], self.meta.get("namespace", ""), self.job.get("spec") or {})
        except SpecError:
            return None

    def suspend(self, spec: JobSpec, reason: str = "Suspended",
                message: str = "spec.runPolicy.suspend is true; the job's pods are deleted") -> None:
        self.plan.delete_pods = [p.name for p in self.pods if not p.deleting]
        self.status["nodes"] = []
        self.status.pop("startTime", None)  # the deadline clock restarts on resume, as for a Kubernetes Job
        self.status.pop("lastProgress", None)  # and so does the progress deadline's
        self.condition("Suspended", True, reason, message)
        self.condition("Running", False, reason, "the job is suspended")
        self.enter(SUSPENDED, reason, message, warning=bool(self.admission and self.admission.evicted))

    def deadline_exceeded(self, spec: JobSpec) -> bool:
        limit = spec.run_policy.active_deadline_seconds
        started = parse_time(self.status.get("startTime"))
        if not limit or not started:
            return False
        left = limit - (self.now - started).total_seconds()
        if left > 0:
            self.plan.requeue(left)
            return False
        self.finish(spec, FAILED, "DeadlineExceeded", f"the job ran longer than spec.runPolicy.activeDeadlineSeconds ({limit}s)")
        return True

    def handle_failures(self, spec: JobSpec, pods: dict[int, PodState], failed: list[PodState]) -> None:
        records = [failure_record(p, self.attempt, self.now) for p in sorted(failed, key=lambda p: p.rank or 0)]
        self.plan.new_failures = records
        self.status["failures"] = (list(self.status.get("failures") or []) + records)[-MAX_FAILURES:]
        for pod in failed:
            self.event("Warning", "PodFailed", describe(pod))
        permanent = [p for p in failed if p.exit_code in PERMANENT_EXIT_REASONS]
        if permanent:
            pod = permanent[0]
            reason = PERMANENT_EXIT_REASONS[pod.exit_code]
            self.finish(spec, FAILED, reason, f"{describe(pod)}; exit code {pod.exit_code} is not retried")
        else:
            self.restart_counted(spec, pods, "PodFailed", failed[0].reason or "Failed", describe(failed[0]))

    def restart_counted(self, spec: JobSpec, pods: dict[int, PodState], reason: str, metric_reason: str,
                        cause: str) -> None:
        """A gang restart that counts against backoffLimit, or the job's failure once the limit is reached."""
        limit = spec.run_policy.backoff_limit
        if self.counted_restarts >= limit:
            self.finish(spec, FAILED, "BackoffLimitExceeded",
                        f"{cause}; {self.counted_restarts} restart(s) reached spec.runPolicy.backoffLimit ({limit})")
            return
        self.restart(spec, pods, reason, metric_reason,
                     f"{cause}; restarting all {spec.nodes} pod(s) (restart {self.counted_restarts + 1} of at most {limit})")

    def restart(self, spec: JobSpec, pods: dict[int, PodState], reason: str, metric_reason: str, message: str) -> None:
        """Delete every pod of this attempt; the next reconcile creates the next attempt's once they are gone."""
        self.attempt += 1
        self.status["restartCount"] = self.attempt
        self.plan.restart_reason = metric_reason
        self.plan.delete_pods = [p.name for p in pods.values()]
        self.status["nodes"] = self.node_states(spec, {})  # the next attempt's pods are yet to be seen
        self.condition("Restarting", True, reason, message)
        self.condition("Running", False, "Restarting", "the pods are being recreated")
        self.status["phase"] = RESTARTING
        self.event("Warning", "Restarting", message)

    def handle_disruption(self, spec: JobSpec, pods: dict[int, PodState], causes: list[str]) -> None:
        """Eviction, preemption, drain or deletion: restart the gang without counting against backoffLimit."""
        cause = causes[0]
        self.disruptions += 1
        self.status["disruptions"] = self.disruptions
        self.event("Warning", "Disrupted", cause)
        self.restart(spec, pods, "Disrupted", "Disrupted",
                     f"{cause}; restarting all {spec.nodes} pod(s) (disruption {self.disruptions}; disruptions do not "
                     "count against spec.runPolicy.backoffLimit)")

    def check_stall(self, spec: JobSpec, pods: dict[int, PodState]) -> bool:
        """spec.runPolicy.progressDeadlineSeconds: restart (counted) when the reported step has not changed for that
        long since this attempt's pods all ran. True when it restarted or failed the job."""
        limit = spec.run_policy.progress_deadline_seconds
        if not limit:
            return False
        step = (self.progress or {}).get("step")
        seen = self.status.get("lastProgress") or {}
        if seen.get("attempt") != self.attempt or seen.get("step") != step:
            if seen.get("attempt") == self.attempt and self.has_condition("Stalled"):
                self.condition("Stalled", False, "Progressing", f"step {step} reported")
            # No "step": null (a merge patch would drop it, and every pass would write it again).
            self.status["lastProgress"] = {"attempt": self.attempt, "time": iso(self.now),
                                           **({"step": step} if step is not None else {})}
            self.plan.requeue(limit)
            return False
        since = parse_time(seen.get("time")) or self.now
        left = limit - (self.now - since).total_seconds()
        if left > 0:
            self.plan.requeue(left)
            return False
        at = f"step {step}" if step is not None else "no step reported"
        message = (f"no progress for {limit}s (spec.runPolicy.progressDeadlineSeconds): {at} since {iso(since)}")
        self.condition("Stalled", True, "ProgressDeadlineExceeded", message)
        self.event("Warning", "Stalled", message)
        self.restart_counted(spec, pods, "Stalled", "Stalled", f"the job stalled: {message}")
        return True

    def handle_rank0_succeeded(self, spec: JobSpec, rank0: PodState) -> None:
        if spec.output is None:  # user code without spec.output: nothing to record
            self.finish(spec, SUCCEEDED, "Completed", "training finished")
            return
        # The built-in trainer's final report says Succeeded; user code's reports come from the sidecar, which
        # cannot know how the program ended, so its last reported model digest is the one.
        digest = (self.progress or {}).get("outputDigest") if spec.user_code else final_digest(self.progress)
        if digest is None and rank0.finished_at is not None:
            waited = (self.now - rank0.finished_at).total_seconds()
            if waited < FINAL_REPORT_GRACE_SECONDS:
                self.plan.requeue(FINAL_REPORT_GRACE_SECONDS - waited)
                return  # the progress watcher's status update wakes the next reconcile
        model: dict[str, Any] = {"uri": spec.output.uri}
        if digest:
            model["digest"] = digest
        else:
            self.event("Warning", "NoFinalReport", "the trainer reported no model digest; status.outputs.model.digest is unset")
        self.status["outputs"] = {"model": model}
        self.finish(spec, SUCCEEDED, "Completed", f"training finished; the model is at {spec.output.uri}")

    def run(self, spec: JobSpec, pods: dict[int, PodState]) -> None:
        missing = [rank for rank in range(spec.nodes) if rank not in pods]
        if missing:
            self.plan.create_pods = missing
            self.condition("Created", True, "PodsCreated", f"created the pods of attempt {self.attempt}")
            if len(missing) == spec.nodes:
                self.event("Normal", "PodsCreated", f"creating {spec.nodes} pod(s) (attempt {self.attempt})")
        self.status.setdefault("startTime", iso(self.now))
        if not missing and all(p.phase in ("Running", "Succeeded") for p in pods.values()):
            if self.check_stall(spec, pods):
                return
            if self.has_condition("Restarting"):
                self.condition("Restarting", False, "PodsRunning", f"all pods of attempt {self.attempt} are running")
            self.condition("Running", True, "PodsRunning", f"all {spec.nodes} pod(s) are running")
            self.enter(RUNNING, "Running", f"all {spec.nodes} pod(s) are running (attempt {self.attempt})")
            return
        unschedulable = next((p for p in pods.values() if p.unschedulable), None)
        if unschedulable is not None:
            message = f"pod {unschedulable.name}: {unschedulable.unschedulable}"
            if not self.has_condition("Running", "False", "Unschedulable"):
                self.event("Warning", "Unschedulable", message)
            self.condition("Running", False, "Unschedulable", message)
        else:
            self.condition("Running", False, "PodsPending", "waiting for the pods to start")
        if self.status.get("phase") not in (RESTARTING, PENDING):
            self.status["phase"] = PENDING

    def finish(self, spec: JobSpec | None, phase: str, reason: str, message: str) -> None:
        self.status["completionTime"] = iso(self.now)
        self.condition(phase, True, reason, message)
        self.condition("Running", False, reason, message)
        if self.has_condition("Restarting"):
            self.condition("Restarting", False, reason, "the job finished")
        self.enter(phase, reason, message, warning=phase == FAILED)
        self.cleanup_finished(spec)

    def cleanup_finished(self, spec: JobSpec | None) -> None:
        """Apply cleanPodPolicy (active pods of a failed job always go) and the TTL."""
        policy = spec.run_policy.clean_pod_policy if spec else "All"
        failed = self.status.get("phase") == FAILED
        self.plan.delete_pods = [
            p.name for p in self.pods if not p.deleting and (
                policy == "All" or (p.active and (policy == "Running" or failed)))]
        ttl = spec.run_policy.ttl_seconds_after_finished if spec else None
        finished = parse_time(self.status.get("completionTime"))
        if ttl is not None and finished is not None:
            left = ttl - (self.now - finished).total_seconds()
            if left <= 0:
                self.plan.delete_job = True
            else:
                self.plan.requeue(left)


def decide(job: Mapping[str, Any], pods: list[Mapping[str, Any]], now: dt.datetime,
           allow_host_paths: bool = False, admission: Admission | None = None) -> Plan:
    """The next status and actions for `job` given its pods (all pods labelled with its name) and, for a job
    queued in Kueue, what its Workload says."""
    return _Decider(job, pods, now, allow_host_paths, admission).decide()


@dataclass(frozen=True)
class CreateFailure:
    """Why the children could not be created. `invalid`: the spec is at fault (the API server answered 422, or a
    child's name is taken), so retrying without an edit cannot help; otherwise (quota, Pod Security) it may."""

    message: str
    invalid: bool

    @property
    def reason(self) -> str:
        return "InvalidSpec" if self.invalid else "FailedCreate"


def creation_failed(status: dict[str, Any], failure: CreateFailure, generation: int | None,
                    now: dt.datetime) -> dict[str, Any]:
    """The status after a child could not be created: Created=False, and for an invalid spec Running=False, both
    with the reason and the message naming the field."""
    status = dict(status)
    conditions = set_condition(status.get("conditions"), "Created", False, failure.reason, failure.message,
                               generation, iso(now))
    if failure.invalid:
        conditions = set_condition(conditions, "Running", False, failure.reason, failure.message, generation, iso(now))
    status["conditions"] = conditions
    return status
