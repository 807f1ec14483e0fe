"""kopf wiring for ModelDeployments. Handlers only queue keys (operator/controller.py): every change that matters
(the ModelDeployment, its Deployment, pods and HorizontalPodAutoscaler, a referenced TrainingJob) triggers the same
level-triggered reconcile (modeldeployment/reconcile.py).

No finalizer is needed or added: children carry ownerReferences, so deleting a ModelDeployment cascades
even while the operator is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf

from modelfleet_operator import GROUP, VERSION
from modelfleet_operator import labels as mflabels
from modelfleet_operator.controller import Key
from modelfleet_operator.modeldeployment.render import KEDA_CRD, PODMONITOR_CRD

PHASES = ("Pending", "Progressing", "Ready", "ScaledToZero", "Degraded", "Invalid")
OPTIONAL_API_SETTLE_SECONDS = 3.0
# The optional APIs the rendering depends on: installing or removing one re-renders every ModelDeployment.
OPTIONAL_CRDS = {KEDA_CRD, PODMONITOR_CRD}
RUNTIME = {mflabels.ROLE: "runtime", mflabels.MODELDEPLOYMENT: kopf.PRESENT}


@dataclass
class Index:
    """Which ModelDeployments exist, and which TrainingJob each references. Rebuilt from the watch's initial
    listing after a (re)start, so it is a cache, not state; lives in kopf's memo."""

    keys: set[Key] = field(default_factory=set)
    references: dict[Key, str] = field(default_factory=dict)  # (namespace, name) -> TrainingJob name


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def modeldeployment_event(event: kopf.RawEvent, namespace: str | None, name: str, spec: kopf.Spec,
                                memo: kopf.Memo, **_: Any) -> None:
    key = (namespace or "", name)
    index: Index = memo.modeldeployment_index
    if event["type"] == "DELETED":
        memo.modeldeployments.forget(key)
        index.keys.discard(key)
        index.references.pop(key, None)
        return
    job = ((spec.get("model") or {}).get("trainingJobRef") or {}).get("name")
    if job:
        index.references[key] = job
    else:
        index.references.pop(key, None)
    index.keys.add(key)
    memo.modeldeployments.add(key)


# Deployments, HorizontalPodAutoscalers and pods are filtered by the API server (main.py's label selectors); see trainingjob/handlers.py.
@kopf.on.event("apps", "v1", "deployments", labels=RUNTIME)
async def deployment_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.modeldeployments.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=RUNTIME)
async def autoscaler_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """The HPA measured or decided something: status.autoscaling says so."""
    memo.modeldeployments.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event("", "v1", "pods", labels=RUNTIME)
async def pod_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.modeldeployments.add((namespace or "", labels[mflabels.MODELDEPLOYMENT]))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    for key, job in list(memo.modeldeployment_index.references.items()):
        if key[0] == namespace and job == name:
            memo.modeldeployments.add(key)


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               when=lambda name, **_: name in OPTIONAL_CRDS)
async def optional_api_event(memo: kopf.Memo, **_: Any) -> None:
    # Once more a little later: a new CRD becomes Established a moment after it is created.
    for key in sorted(memo.modeldeployment_index.keys):
        memo.modeldeployments.add(key)
        memo.modeldeployments.add(key, OPTIONAL_API_SETTLE_SECONDS)
