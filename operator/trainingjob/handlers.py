"""kopf wiring for TrainingJobs: one level-triggered reconcile loop per job.

Each job gets an asyncio task that reconciles (read job + list its pods -> ``status.decide`` -> apply),
then sleeps until something relevant changes (the job, one of its pods) or a timer is due (deadline,
TTL). Watch handlers only start, wake or stop the right loop, so one job's reconciles never overlap.
Nothing essential lives in memory: on restart kopf lists every job, which starts its loop again.

Plain ``on.event`` handlers rather than ``kopf.daemon``: a daemon needs a finalizer on every job (an
extra write per job, and deletions that hang while the operator is down) and makes kopf diff every
job event; the children's ownerReferences already make deletion cascade without the operator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from modelfleet_operator import GROUP, VERSION, metrics, ownership
from modelfleet_operator.apierrors import UNPROCESSABLE, refusal_message
from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.labels import MANAGED_BY, MANAGER, TRAININGJOB, selector
from modelfleet_operator.trainingjob import admission, kueue, render
from modelfleet_operator.trainingjob.kube import Conflict, Kube, api_error_message
from modelfleet_operator.trainingjob.progress import parse_report
from modelfleet_operator.trainingjob.spec import SpecError, parse_spec
from modelfleet_operator.trainingjob.status import CreateFailure, Plan, creation_failed, decide

KIND = "TrainingJob"
RESYNC_SECONDS = 300.0  # a safety net only: watch events wake the loop
MAX_BACKOFF_SECONDS = 60.0
RETRY_CREATE_SECONDS = 10.0
RETRY_INVALID_SECONDS = 60.0  # a refused spec needs an edit (which wakes the loop at once); retry rarely
PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")

Key = tuple[str, str]


@dataclass
class _State:
    """Per-process plumbing, rebuilt on every start."""

    kube: Kube | None = None
    config: OperatorConfig = field(default_factory=OperatorConfig)
    loops: dict[Key, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    written: dict[Key, str] = field(default_factory=dict)  # our last status patch's resourceVersion: no need to wake
    phases: dict[Key, str] = field(default_factory=dict)


state = _State()


def _kube() -> Kube:
    if state.kube is None:
        state.kube = Kube.from_environment()
    return state.kube


def wake(namespace: str, name: str) -> None:
    loop = state.loops.get((namespace, name))
    if loop is not None:
        loop[1].set()


def _forget(key: Key) -> None:
    del state.loops[key]
    state.written.pop(key, None)
    _record_phase(key, None)


def _record_phase(key: Key, phase: str | None) -> None:
    if phase:
        state.phases[key] = phase
    else:
        state.phases.pop(key, None)
    for name in PHASES:
        metrics.RESOURCES.labels(KIND, name).set(sum(1 for p in state.phases.values() if p == name))


@kopf.on.startup()
def _configure(**_: Any) -> None:
    state.config = OperatorConfig.from_env()
    state.kube = Kube.from_environment()


async def trainingjob_loop(namespace: str, name: str, woken: asyncio.Event, logger: logging.Logger) -> None:
    key = (namespace, name)
    backoff = 1.0
    try:
        while True:
            woken.clear()
            started = time.perf_counter()
            try:
                delay, result, backoff = await reconcile(namespace, name, logger), "success", 1.0
            except Conflict:
                delay, result = 0.0, "retry"  # someone else wrote the job since we read it: read it again
            except Exception as error:  # noqa: BLE001 - the loop must survive API hiccups; retry with backoff
                logger.warning("reconcile failed, retrying in %.0fs: %s", backoff, error)
                delay, result, backoff = backoff, "error", min(backoff * 2, MAX_BACKOFF_SECONDS)
            # Not metrics.reconcile(): a conflict is an expected retry, not an error.
            metrics.RECONCILES.labels(KIND, result).inc()
            metrics.RECONCILE_DURATION.labels(KIND).observe(time.perf_counter() - started)
            if delay is None:
                return  # the job is gone
            if delay > 0:
                try:
                    await asyncio.wait_for(woken.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
    finally:
        if state.loops.get(key, (None,))[0] is asyncio.current_task():
            _forget(key)


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_changed(type: str, name: str, namespace: str, body: kopf.Body,  # noqa: A002 - kopf's name
                              logger: logging.Logger, **_: Any) -> None:
    """Start the job's loop (on creation, or for every job when the operator starts), wake or stop it."""
    key = (namespace, name)
    loop = state.loops.get(key)
    if type == "DELETED":
        if loop:  # forget it now: a new job of the same name may arrive before the task has unwound
            _forget(key)
            loop[0].cancel()
        return
    if loop is None or loop[0].done():
        woken = asyncio.Event()
        state.loops[key] = (asyncio.get_running_loop().create_task(trainingjob_loop(namespace, name, woken, logger)), woken)
    elif body.metadata.get("resourceVersion") != state.written.get(key):
        loop[1].set()


@kopf.on.event("", "v1", "pods", labels={TRAININGJOB: kopf.PRESENT, MANAGED_BY: MANAGER})
async def trainer_pod_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    wake(namespace, labels[TRAININGJOB])


@kopf.on.event(kueue.GROUP, kueue.VERSION, kueue.PLURAL, labels={TRAININGJOB: kopf.PRESENT, MANAGED_BY: MANAGER})
async def workload_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """Kueue admitted, evicted or requeued a job's Workload (kopf skips this where Kueue's CRDs are missing)."""
    wake(namespace, labels[TRAININGJOB])


def _is_progress_map(name: str, labels: kopf.Labels, **_: Any) -> bool:
    job = labels.get(TRAININGJOB)
    return bool(job) and name == render.Names(job).progress


@kopf.on.event("", "v1", "configmaps", labels={TRAININGJOB: kopf.PRESENT, MANAGED_BY: MANAGER}, when=_is_progress_map)
async def progress_reported(type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:  # noqa: A002
    """Copy the trainer's report into status.progress (the trainer itself cannot write the job)."""
    if type == "DELETED":
        return
    report = parse_report((body.get("data") or {}).get(render.PROGRESS_KEY))
    if report is not None:
        await _kube().patch_job_status(namespace, labels[TRAININGJOB], {"progress": report})


async def reconcile(namespace: str, name: str, logger: logging.Logger) -> float | None:
    """One pass; returns seconds until the next one (0: at once; None: the job is gone)."""
    kube = _kube()
    job = await kube.get_job(namespace, name)
    if job is None or job["metadata"].get("deletionTimestamp"):
        return None
    pods = await kube.list_pods(namespace, selector({TRAININGJOB: name, MANAGED_BY: MANAGER}))
    queued = await admission.observe(kube, job, state.config.trainer_image, state.config.image_pull_policy)
    now = dt.datetime.now(dt.timezone.utc)
    plan = decide(job, pods, now, allow_host_paths=state.config.allow_host_paths,
                  admission=queued.admission if queued else None)
    await _attach_logs(kube, namespace, plan)

    # Status first: a restart or a finish is recorded before any pod is deleted, so a crash in between
    # cannot lose it (the next pass sees pods of an old attempt, or a finished job, and deletes them).
    job = await _patch_status(kube, job, plan.status)
    await asyncio.gather(*(kube.delete_pod(namespace, pod) for pod in plan.delete_pods))
    if queued:
        await admission.settle(kube, job, pods, queued, now)
        if queued.workload is None:
            plan.requeue(RETRY_CREATE_SECONDS)
    if plan.restart_reason:
        metrics.RESTARTS.labels(plan.restart_reason).inc()
    if plan.create_pods:
        update = await admission.pod_update(kube, queued) if queued else None
        failure = await _create_children(kube, job, plan, logger, update)
        if failure:
            job = await _patch_status(kube, job, creation_failed(job.get("status") or {}, failure,
                                                                 job["metadata"].get("generation"), now))
            kopf.warn(job, reason=failure.reason, message=failure.message)
            plan.requeue(RETRY_INVALID_SECONDS if failure.invalid else RETRY_CREATE_SECONDS)
    for event in plan.events:
        kopf.event(job, type=event.type, reason=event.reason, message=event.message)
    _record_phase((namespace, name), (job.get("status") or {}).get("phase"))
    if plan.delete_job:
        kopf.info(job, reason="TTLExpired", message="deleting the finished job (spec.runPolicy.ttlSecondsAfterFinished)")
        await kube.delete_job(namespace, name)
        return None
    return plan.requeue_after if plan.requeue_after is not None else RESYNC_SECONDS


async def _attach_logs(kube: Kube, namespace: str, plan: Plan) -> None:
    """Fill failures[].lastLogLines from the pods' logs, best effort and bounded in time; where they cannot be read,
    the termination message's lines (FallbackToLogsOnError) that decide() put there stay."""
    if not plan.new_failures:
        return
    tails = await asyncio.gather(*(kube.pod_log_tail(namespace, f["pod"], render.CONTAINER) for f in plan.new_failures))
    for failure, tail in zip(plan.new_failures, tails):
        if tail:
            failure["lastLogLines"] = tail


async def _patch_status(kube: Kube, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    old = {k: v for k, v in (job.get("status") or {}).items() if k != "progress"}
    patch = {k: v for k, v in status.items() if k != "progress" and old.get(k) != v}
    patch.update({k: None for k in old if k not in status})
    if not patch:
        return job
    meta = job["metadata"]
    updated = await kube.patch_job_status(meta["namespace"], meta["name"], patch, meta["resourceVersion"])
    if updated is None:
        return job
    state.written[(meta["namespace"], meta["name"])] = updated["metadata"]["resourceVersion"]
    return updated


async def _create_children(kube: Kube, job: dict[str, Any], plan: Plan, logger: logging.Logger,
                           update: kueue.PodUpdate | None) -> CreateFailure | None:
    """Create the supporting objects, then the missing pods. Says why not when the API server refuses one, or
    when an object of a child's name exists that this job does not own (its pods would otherwise run as someone
    else's ServiceAccount, or read someone else's configuration)."""
    meta = job["metadata"]
    try:
        spec = parse_spec(meta["name"], meta["namespace"], job.get("spec") or {})
    except SpecError as error:  # decide() already failed the job for this; nothing to create
        return CreateFailure(str(error), invalid=True)
    attempt = (job.get("status") or {}).get("restartCount", 0)
    # Pods need the ServiceAccount to exist (admission rejects them otherwise), so they come second.
    supporting = render.supporting_objects(spec, job)
    made, failure = await _create_all(kube, supporting, logger)
    if failure:
        return failure
    existing = [child for child, new in zip(supporting, made) if not new]  # use them only if they are this job's
    found = await asyncio.gather(*(kube.read(c["kind"], meta["namespace"], c["metadata"]["name"]) for c in existing))
    for problem in (ownership.conflict(obj, KIND, meta["name"], meta["uid"]) for obj in found):
        if problem:
            logger.warning("cannot use an existing child: %s", problem.message)
            return CreateFailure(problem.message, invalid=not problem.transient)
    pods = [render.pod(spec, job, rank, attempt, state.config.trainer_image, state.config.image_pull_policy)
            for rank in plan.create_pods]
    if update is not None:  # Kueue's admission: the assigned flavors' node labels and tolerations
        pods = [kueue.apply(pod, update) for pod in pods]
    created, failure = await _create_all(kube, pods, logger)
    metrics.PODS_CREATED.labels(KIND).inc(sum(created))
    return failure


async def _create_all(kube: Kube, objects: list[dict[str, Any]],
                      logger: logging.Logger) -> tuple[list[bool], CreateFailure | None]:
    """Create concurrently: which ones are new, and the first refusal (422: the spec is at fault) or error."""
    results = await asyncio.gather(*(kube.create(obj) for obj in objects), return_exceptions=True)
    failure = None
    for obj, result in zip(objects, results):
        if isinstance(result, ApiException) and failure is None:
            if result.status == UNPROCESSABLE:
                failure = CreateFailure(refusal_message(obj["kind"], obj["metadata"]["name"], result.body,
                                                        api_error_message(result)), invalid=True)
            else:
                failure = CreateFailure(api_error_message(result), invalid=False)
            logger.warning("cannot create the job's children: %s", failure.message)
        elif isinstance(result, BaseException) and not isinstance(result, ApiException):
            raise result
    return [result is True for result in results], failure
