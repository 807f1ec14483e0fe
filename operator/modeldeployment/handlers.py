"""kopf wiring for ModelDeployments. Handlers only queue keys: every change that matters (the ModelDeployment,
its Deployment, pods and HorizontalPodAutoscaler, a referenced TrainingJob) triggers the same level-triggered
reconcile.

No finalizer is needed or added: children carry ownerReferences, so deleting a ModelDeployment cascades
even while the operator is down.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import kopf

from modelfleet_operator import GROUP, VERSION, metrics
from modelfleet_operator import labels as mflabels
from modelfleet_operator.modeldeployment import kube, reconcile
from modelfleet_operator.modeldeployment.render import KEDA_CRD, PODMONITOR_CRD
from modelfleet_operator.modeldeployment.workqueue import WorkQueue

Key = tuple[str, str]  # (namespace, name)

RUNTIME_CHILDREN = {mflabels.MANAGED_BY: mflabels.MANAGER, mflabels.ROLE: "runtime",
                    mflabels.MODELDEPLOYMENT: kopf.PRESENT}
OPTIONAL_API_SETTLE_SECONDS = 3.0
PHASES = ("Pending", "Progressing", "Ready", "ScaledToZero", "Degraded", "Invalid")

# The optional APIs the rendering depends on: installing or removing one re-renders every ModelDeployment.
OPTIONAL_CRDS = {KEDA_CRD, PODMONITOR_CRD}

_settings = reconcile.Settings.from_env()
_keys: set[Key] = set()
_phases: dict[Key, str] = {}
# Which TrainingJob each ModelDeployment references: (namespace, name) -> job. Rebuilt from the watch's
# initial listing after a restart, so it is a cache, not state.
_references: dict[Key, str] = {}


async def _work(key: Key) -> float | None:
    def run() -> reconcile.Outcome | None:
        with metrics.reconcile("ModelDeployment"):
            return reconcile.reconcile(kube.shared(), key[0], key[1], _settings)

    outcome = await asyncio.to_thread(run)
    if outcome is None:  # gone (its DELETED event clears the rest; a re-created one is queued by its own event)
        _phases.pop(key, None)
    else:
        _phases[key] = outcome.phase
    _publish_phases()
    return outcome.requeue_after if outcome else None


queue: WorkQueue[Key] = WorkQueue(_work)


def _forget(key: Key) -> None:
    """The ModelDeployment was deleted: drop everything kept about it."""
    queue.forget(key)
    _keys.discard(key)
    _references.pop(key, None)
    _phases.pop(key, None)
    _publish_phases()


def _publish_phases() -> None:
    counts = Counter(_phases.values())
    for phase in PHASES:
        metrics.RESOURCES.labels("ModelDeployment", phase).set(counts.get(phase, 0))


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def modeldeployment_event(event: kopf.RawEvent, namespace: str | None, name: str, spec: kopf.Spec,
                                **_: Any) -> None:
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        _forget(key)
        return
    job = ((spec.get("model") or {}).get("trainingJobRef") or {}).get("name")
    if job:
        _references[key] = job
    else:
        _references.pop(key, None)
    _keys.add(key)
    queue.add(key)


@kopf.on.event("apps", "v1", "deployments", labels=RUNTIME_CHILDREN)
async def deployment_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    queue.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=RUNTIME_CHILDREN)
async def autoscaler_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """The HPA measured or decided something: status.autoscaling says so."""
    queue.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event("v1", "pods", labels=RUNTIME_CHILDREN)
async def pod_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    queue.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_event(namespace: str | None, name: str, **_: Any) -> None:
    for key, job in list(_references.items()):
        if key[0] == namespace and job == name:
            queue.add(key)


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               when=lambda name, **_: name in OPTIONAL_CRDS)
async def optional_api_event(**_: Any) -> None:
    # Once more a little later: a new CRD becomes Established a moment after it is created.
    for key in sorted(_keys):
        queue.add(key)
        queue.add(key, OPTIONAL_API_SETTLE_SECONDS)
