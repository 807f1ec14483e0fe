"""One level-triggered reconcile of a TrainingJob: read the job and its pods, let ``status.decide`` plan, then
apply the plan (status first, then pod deletions, then creations, then Events).

Nothing is remembered between reconciles except what the API server stores, so the operator can be killed at
any point and the next reconcile (by this process or a newly elected leader) picks up where this one stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator import events, metrics, ownership
from modelfleet_operator.apierrors import UNPROCESSABLE, refusal_message
from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.controller import Key, Outcome
from modelfleet_operator.kube import Kube, error_message, namespace_terminating
from modelfleet_operator.labels import MANAGED_BY, MANAGER, TRAININGJOB, selector
from modelfleet_operator.trainingjob import admission, kueue, render
from modelfleet_operator.trainingjob.spec import SpecError, parse_spec
from modelfleet_operator.trainingjob.status import CreateFailure, Plan, creation_failed, decide

log = logging.getLogger(__name__)

KIND = "TrainingJob"
RESYNC_SECONDS = 300.0  # a safety net only: watch events trigger reconciles
RETRY_CREATE_SECONDS = 10.0
RETRY_INVALID_SECONDS = 60.0  # a refused spec needs an edit (which triggers a reconcile at once); retry rarely
LOG_LINES = 20


@dataclass
class Context:
    """What every TrainingJob reconcile needs; lives in kopf's memo."""

    kube: Kube
    config: OperatorConfig
    # Our last status patch's resourceVersion per job: its watch event needs no reconcile.
    written: dict[Key, str] = field(default_factory=dict)


async def reconcile(ctx: Context, namespace: str, name: str) -> Outcome | None:
    """One pass; None when the job is gone."""
    kube = ctx.kube
    job = await kube.get(KIND, namespace, name)
    if job is None or job["metadata"].get("deletionTimestamp"):
        ctx.written.pop((namespace, name), None)
        return None
    pods = await kube.list_objects("Pod", namespace, label_selector=selector({TRAININGJOB: name, MANAGED_BY: MANAGER}))
    queued = await admission.observe(kube, job, ctx.config.trainer_image, ctx.config.image_pull_policy)
    now = dt.datetime.now(dt.timezone.utc)
    plan = decide(job, pods, now, allow_host_paths=ctx.config.allow_host_paths,
                  admission=queued.admission if queued else None)
    await _attach_logs(kube, namespace, plan)

    # Status first: a restart or a finish is recorded before any pod is deleted, so a crash in between
    # cannot lose it (the next pass sees pods of an old attempt, or a finished job, and deletes them).
    job = await _patch_status(ctx, job, plan.status)
    await asyncio.gather(*(kube.delete("Pod", namespace, pod) for pod in plan.delete_pods))
    if queued:
        await admission.settle(kube, job, pods, queued, now)
        if queued.workload is None:
            plan.requeue(RETRY_CREATE_SECONDS)
    if plan.restart_reason:
        metrics.RESTARTS.labels(plan.restart_reason).inc()
    if plan.create_pods:
        update = await admission.pod_update(kube, queued) if queued else None
        failure = await _create_children(ctx, job, plan, update)
        if failure:
            job = await _patch_status(ctx, job, creation_failed(job.get("status") or {}, failure,
                                                                job["metadata"].get("generation"), now))
            await events.post(kube, job, events.Event("Warning", failure.reason, failure.message))
            plan.requeue(RETRY_INVALID_SECONDS if failure.invalid else RETRY_CREATE_SECONDS)
    for event in plan.events:
        await events.post(kube, job, event)
    phase = (job.get("status") or {}).get("phase")
    if plan.delete_job:
        await events.post(kube, job, events.Event(
            "Normal", "TTLExpired", "deleting the finished job (spec.runPolicy.ttlSecondsAfterFinished)"))
        await kube.delete(KIND, namespace, name)
        return None
    return Outcome(phase, plan.requeue_after if plan.requeue_after is not None else RESYNC_SECONDS)


async def _attach_logs(kube: Kube, namespace: str, plan: Plan) -> None:
    """Fill failures[].lastLogLines from the pods' logs, best effort and bounded in time; where they cannot be read,
    the termination message's lines (FallbackToLogsOnError) that decide() put there stay."""
    if not plan.new_failures:
        return
    tails = await asyncio.gather(*(kube.log_tail(namespace, f["pod"], render.CONTAINER, LOG_LINES)
                                   for f in plan.new_failures))
    for failure, tail in zip(plan.new_failures, tails):
        if tail:
            failure["lastLogLines"] = tail


async def _patch_status(ctx: Context, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Write what changed (progress is the progress handler's); only if the job is unchanged since read."""
    old = {k: v for k, v in (job.get("status") or {}).items() if k != "progress"}
    patch = {k: v for k, v in status.items() if k != "progress" and old.get(k) != v}
    patch.update({k: None for k in old if k not in status})
    if not patch:
        return job
    meta = job["metadata"]
    updated = await ctx.kube.patch_status(KIND, meta["namespace"], meta["name"], patch, meta["resourceVersion"])
    if updated is None:
        return job
    ctx.written[(meta["namespace"], meta["name"])] = updated["metadata"]["resourceVersion"]
    return updated


async def _create_children(ctx: Context, job: dict[str, Any], plan: Plan,
                           update: kueue.PodUpdate | None) -> CreateFailure | None:
    """Create the supporting objects, then the missing pods. Says why not when the API server refuses one, or
    when an object of a child's name exists that this job does not own (its pods would otherwise run as someone
    else's ServiceAccount, or read someone else's configuration)."""
    kube, meta = ctx.kube, job["metadata"]
    try:
        spec = parse_spec(meta["name"], meta["namespace"], job.get("spec") or {})
    except SpecError as error:  # decide() already failed the job for this; nothing to create
        return CreateFailure(str(error), invalid=True)
    attempt = (job.get("status") or {}).get("restartCount", 0)
    # Pods need the ServiceAccount to exist (admission rejects them otherwise), so they come second.
    supporting = render.supporting_objects(spec, job)
    made, failure = await _create_all(kube, supporting)
    if failure:
        return failure
    existing = [child for child, new in zip(supporting, made) if not new]  # use them only if they are this job's
    found = await asyncio.gather(*(kube.get(c["kind"], meta["namespace"], c["metadata"]["name"]) for c in existing))
    for problem in (ownership.conflict(obj, KIND, meta["name"], meta["uid"]) for obj in found):
        if problem:
            log.warning("%s/%s: cannot use an existing child: %s", meta["namespace"], meta["name"], problem.message)
            return CreateFailure(problem.message, invalid=not problem.transient)
    pods = [render.pod(spec, job, rank, attempt, ctx.config.trainer_image, ctx.config.image_pull_policy)
            for rank in plan.create_pods]
    if update is not None:  # Kueue's admission: the assigned flavors' node labels and tolerations
        pods = [kueue.apply(pod, update) for pod in pods]
    created, failure = await _create_all(kube, pods)
    metrics.PODS_CREATED.labels(KIND).inc(sum(created))
    return failure


async def _create_all(kube: Kube, objects: list[dict[str, Any]]) -> tuple[list[bool], CreateFailure | None]:
    """Create concurrently: which ones are new, and the first refusal (422: the spec is at fault) or error."""
    results = await asyncio.gather(*(kube.create_if_absent(obj) for obj in objects), return_exceptions=True)
    failure = None
    for obj, result in zip(objects, results):
        if namespace_terminating(result):
            continue  # the namespace's deletion removes the job too: nothing to report
        if isinstance(result, ApiException) and failure is None:
            if result.status == UNPROCESSABLE:
                failure = CreateFailure(refusal_message(obj["kind"], obj["metadata"]["name"], result.body,
                                                        error_message(result)), invalid=True)
            else:
                failure = CreateFailure(error_message(result), invalid=False)
            log.warning("%s/%s: cannot create the job's children: %s", obj["metadata"]["namespace"],
                        obj["metadata"]["name"], failure.message)
        elif isinstance(result, BaseException) and not isinstance(result, ApiException):
            raise result
    return [result is True for result in results], failure
