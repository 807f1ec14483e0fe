"""The Kueue steps of a TrainingJob reconcile: the API calls around the decisions in kueue.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator.conditions import get_condition
from modelfleet_operator.kube import CONFLICT, Kube, error_message
from modelfleet_operator.trainingjob import kueue, render
from modelfleet_operator.trainingjob.spec import SpecError, parse_spec
from modelfleet_operator.trainingjob.status import FINISHED, SUCCEEDED, iso

Obj = dict[str, Any]
WORKLOAD = "Workload"


@dataclass(frozen=True)
class Queued:
    """A job under Kueue: its Workload as stored (None when it could not be made) and what that says."""

    workload: Obj | None
    admission: kueue.Admission


async def observe(kube: Kube, job: Mapping[str, Any], image: str, pull_policy: str) -> Queued | None:
    """None for a job without the queue-name label; otherwise its Workload, created first if missing."""
    queue = kueue.queue_name(job)
    if queue is None:
        return None
    meta = job["metadata"]
    stored = await kube.get(WORKLOAD, meta["namespace"], kueue.workload_name(job))
    if stored is None and (job.get("status") or {}).get("phase") not in FINISHED:
        try:
            spec = parse_spec(meta["name"], meta["namespace"], job.get("spec") or {})
        except SpecError:  # decide() fails the job, naming the field
            return Queued(None, kueue.observe(None, queue))
        pod = render.pod(spec, job, 0, 0, image, pull_policy)
        try:
            stored = await _create_workload(kube, kueue.workload(job, queue, spec.nodes, pod))
        except ApiException as error:  # 404: Kueue's CRDs are not installed; 403: the operator may not
            return Queued(None, kueue.Admission(False, kueue.WAITING,
                                                f"cannot create its Kueue Workload: {error_message(error)}"))
    return Queued(stored, kueue.observe(stored, queue))


async def _create_workload(kube: Kube, workload: Mapping[str, Any]) -> Obj | None:
    """Create it; when it exists already (an earlier pass made it), return what is stored."""
    try:
        return await kube.create(workload)
    except ApiException as error:
        if error.status != CONFLICT:
            raise
    meta = workload["metadata"]
    return await kube.get(WORKLOAD, meta["namespace"], meta["name"])


async def pod_update(kube: Kube, queued: Queued) -> kueue.PodUpdate:
    flavors = await asyncio.gather(*(kube.get("ResourceFlavor", None, name) for name in queued.admission.flavors))
    return kueue.pod_update(queued.admission, [f for f in flavors if f is not None])


async def settle(kube: Kube, job: Mapping[str, Any], pods: list[Obj], queued: Queued, now: dt.datetime) -> None:
    """A finished job's Workload is marked Finished; an evicted one releases its quota once no pod is left."""
    workload, status = queued.workload, job.get("status") or {}
    if workload is None:
        return
    if status.get("phase") in FINISHED:
        condition = get_condition(status.get("conditions"), status["phase"]) or {}
        patch = kueue.finished_status(workload, status["phase"] == SUCCEEDED,
                                      condition.get("message") or status["phase"], iso(now))
    elif queued.admission.evicted and not pods:
        patch = kueue.release_status(workload, iso(now))
    else:
        return
    if patch:
        # A conditions list replaces Kueue's, so only if the Workload is unchanged since read (else Conflict:
        # the reconcile reads everything again).
        meta = workload["metadata"]
        await kube.patch_status(WORKLOAD, meta["namespace"], meta["name"], patch, meta["resourceVersion"])
