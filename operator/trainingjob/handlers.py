"""kopf wiring for TrainingJobs: watch events only queue the job's key (operator/controller.py); the reconcile
itself lives in trainingjob/reconcile.py.

Plain ``on.event`` handlers rather than ``kopf.daemon`` or change handlers: those need a finalizer on every job
(an extra write per job, and deletions that hang while the operator is down) and make kopf diff every job event;
the children's ownerReferences already make deletion cascade without the operator.
"""

from __future__ import annotations

from typing import Any

import kopf

from modelfleet_operator import GROUP, VERSION
from modelfleet_operator.labels import TRAININGJOB
from modelfleet_operator.trainingjob import kueue, render
from modelfleet_operator.trainingjob.progress import parse_report
from modelfleet_operator.trainingjob.reconcile import KIND

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_changed(type: str, name: str, namespace: str, body: kopf.Body,  # noqa: A002 - kopf's name
                              memo: kopf.Memo, **_: Any) -> None:
    """Queue the job (on every change, and for every job when the operator starts), or forget a deleted one."""
    key = (namespace, name)
    if type == "DELETED":
        memo.trainingjobs.forget(key)
        memo.trainingjob_context.written.pop(key, None)
    elif body.metadata.get("resourceVersion") != memo.trainingjob_context.written.get(key):
        memo.trainingjobs.add(key)


# The pod, ConfigMap and Workload watches are filtered by the API server (main.py's label selectors): unrelated
# objects never reach the operator. The handlers' own label filters only split those children between the two kinds.
@kopf.on.event("", "v1", "pods", labels={TRAININGJOB: kopf.PRESENT})
async def trainer_pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.trainingjobs.add((namespace, labels[TRAININGJOB]))


@kopf.on.event(kueue.GROUP, kueue.VERSION, kueue.PLURAL, labels={TRAININGJOB: kopf.PRESENT})
async def workload_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Kueue admitted, evicted or requeued a job's Workload (kopf skips this where Kueue's CRDs are missing)."""
    memo.trainingjobs.add((namespace, labels[TRAININGJOB]))


def _is_progress_map(name: str, labels: kopf.Labels, **_: Any) -> bool:
    job = labels.get(TRAININGJOB)
    return bool(job) and name == render.Names(job).progress


@kopf.on.event("", "v1", "configmaps", labels={TRAININGJOB: kopf.PRESENT}, when=_is_progress_map)
async def progress_reported(type: str, body: kopf.Body, namespace: str, labels: kopf.Labels,  # noqa: A002
                            memo: kopf.Memo, **_: Any) -> None:
    """Copy the trainer's report into status.progress (the trainer itself cannot write the job)."""
    if type == "DELETED":
        return
    report = parse_report((body.get("data") or {}).get(render.PROGRESS_KEY))
    if report is not None:
        await memo.kube.patch_status(KIND, namespace, labels[TRAININGJOB], {"progress": report})
