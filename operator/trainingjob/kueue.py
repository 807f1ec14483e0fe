"""Kueue admission for TrainingJobs, as pure functions (docs/kueue.md).

A job labelled `kueue.x-k8s.io/queue-name` gets a Kueue Workload (kueue.x-k8s.io/v1beta2) that the operator
creates and owns: one pod set, `count` = spec.nodes, the template = the rendered trainer pod, so Kueue reserves
quota for the whole gang at once. The job creates no pod until the Workload is Admitted; then its pods get the
node labels and tolerations of the ResourceFlavors Kueue assigned (and any admission check's podSetUpdates).
When the job ends, the Workload is marked Finished (Kueue releases the quota). When Kueue evicts the Workload
(preemption, a stopped queue), the pods are deleted and, once none is left, the quota reservation is cleared,
as Kueue's own job integrations do, so that Kueue can queue it again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from modelfleet_operator import labels
from modelfleet_operator.conditions import get_condition, set_condition
from modelfleet_operator.trainingjob.render import owner_reference

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
PLURAL = "workloads"
POD_SET = "main"
WAITING = "WaitingForKueue"
EVICTED = "EvictedByKueue"
# Kueue requeues an evicted Workload by itself (Requeued=True) only for these eviction reasons; as its job
# integrations do (jobframework's reconciler).
REQUEUED_REASONS = ("Preempted", "NodeFailures")

Obj = dict[str, Any]


def queue_name(job: Mapping[str, Any]) -> str | None:
    return ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL) or None


def workload_name(job: Mapping[str, Any]) -> str:
    """`trainingjob-<name>-<uid prefix>`: a new job of the same name never adopts an old job's Workload."""
    meta = job["metadata"]
    return f"trainingjob-{meta['name'][:220]}-{meta['uid'][:8]}"


def workload(job: Mapping[str, Any], queue: str, nodes: int, pod: Mapping[str, Any]) -> Obj:
    """The Workload for `job`; `pod` is a rendered trainer pod (any rank: they differ in env and names only)."""
    meta = job["metadata"]
    pod_labels = {k: v for k, v in (pod["metadata"].get("labels") or {}).items() if k != labels.NODE_RANK}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload",
        "metadata": {"name": workload_name(job), "namespace": meta["namespace"],
                     "labels": labels.trainer_labels(meta["name"]), "ownerReferences": [owner_reference(job)]},
        "spec": {"queueName": queue, "podSets": [
            {"name": POD_SET, "count": nodes,
             "template": {"metadata": {"labels": pod_labels}, "spec": copy.deepcopy(pod["spec"])}}]},
    }


@dataclass(frozen=True)
class Admission:
    """What the job's Workload says. `admitted`: the pods may run. `evicted`: Kueue took the admission back
    (the pods must go). `reason`/`message`: for the job's Suspended condition."""

    admitted: bool
    reason: str
    message: str
    evicted: bool = False
    flavors: tuple[str, ...] = ()  # ResourceFlavors assigned to the pod set
    pod_set_updates: tuple[Obj, ...] = ()  # from admission checks


def _true(workload: Mapping[str, Any], type_: str) -> Obj | None:
    cond = get_condition((workload.get("status") or {}).get("conditions"), type_)
    return cond if cond and cond.get("status") == "True" else None


def observe(workload: Mapping[str, Any] | None, queue: str) -> Admission:
    """Admitted (and not evicted or finished) -> the pods may run; otherwise why not, in Kueue's words."""
    if workload is None:
        return Admission(False, WAITING, f"creating a Kueue Workload for LocalQueue {queue}")
    name, status = workload["metadata"]["name"], workload.get("status") or {}
    evicted = _true(workload, "Evicted")
    if evicted:
        return Admission(False, EVICTED, f"Kueue evicted Workload {name} ({evicted.get('reason')}): "
                                         f"{evicted.get('message', '')}", evicted=True)
    finished = _true(workload, "Finished")
    if finished:
        return Admission(False, WAITING, f"Workload {name} is Finished ({finished.get('reason')}): "
                                         f"{finished.get('message', '')}")
    if _true(workload, "Admitted"):
        admission = status.get("admission") or {}
        assignment = next((a for a in admission.get("podSetAssignments") or [] if a.get("name") == POD_SET), {})
        updates = tuple(u for check in status.get("admissionChecks") or [] for u in check.get("podSetUpdates") or []
                        if u.get("name") == POD_SET)
        return Admission(True, "Admitted",
                         f"admitted by Kueue: Workload {name}, ClusterQueue {admission.get('clusterQueue', '?')}",
                         flavors=tuple(sorted(set((assignment.get("flavors") or {}).values()))),
                         pod_set_updates=updates)
    reserved = get_condition(status.get("conditions"), "QuotaReserved")
    if reserved and reserved.get("status") == "True":
        why = "quota is reserved; waiting for its admission checks"
    elif reserved:
        why = f"{reserved.get('reason')}: {reserved.get('message', '')}"
    else:
        why = "not processed by Kueue yet (is Kueue running, and does the LocalQueue exist?)"
    return Admission(False, WAITING, f"waiting for Kueue to admit Workload {name} (LocalQueue {queue}): {why}")


@dataclass(frozen=True)
class PodUpdate:
    """What an admission adds to the pods (Kueue's podset.PodSetInfo)."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Obj] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def pod_update(admission: Admission, flavors: list[Mapping[str, Any]]) -> PodUpdate:
    """The assigned ResourceFlavors' nodeLabels and tolerations, then the admission checks' podSetUpdates."""
    update = PodUpdate()
    sources = [{"nodeSelector": (f.get("spec") or {}).get("nodeLabels") or {},
                "tolerations": (f.get("spec") or {}).get("tolerations") or []} for f in flavors]
    for source in sources + list(admission.pod_set_updates):
        update.node_selector.update(source.get("nodeSelector") or {})
        update.labels.update(source.get("labels") or {})
        update.annotations.update(source.get("annotations") or {})
        update.tolerations.extend(t for t in source.get("tolerations") or [] if t not in update.tolerations)
    return update


def apply(pod: Mapping[str, Any], update: PodUpdate) -> Obj:
    """The pod with the admission's scheduling added; the operator's own labels and annotations win."""
    pod = copy.deepcopy(dict(pod))
    meta, spec = pod["metadata"], pod["spec"]
    meta["labels"] = {**update.labels, **(meta.get("labels") or {})}
    meta["annotations"] = {**update.annotations, **(meta.get("annotations") or {})}
    if update.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **update.node_selector}
    tolerations = list(spec.get("tolerations") or [])
    tolerations.extend(t for t in update.tolerations if t not in tolerations)
    if tolerations:
        spec["tolerations"] = tolerations
    return pod


def finished_status(workload: Mapping[str, Any], succeeded: bool, message: str, now: str) -> Obj | None:
    """The status patch that marks the Workload Finished (Kueue then releases its quota), or None if it is."""
    if _true(workload, "Finished"):
        return None
    conditions = set_condition((workload.get("status") or {}).get("conditions"), "Finished", True,
                               "Succeeded" if succeeded else "Failed", message[:32768],
                               workload["metadata"].get("generation"), now)
    return {"conditions": conditions}


def release_status(workload: Mapping[str, Any], now: str) -> Obj | None:
    """After an eviction, once the job has no pod left: the patch that clears the quota reservation (and says
    whether Kueue requeues the Workload by itself), or None when there is nothing to release."""
    evicted = _true(workload, "Evicted")
    status = workload.get("status") or {}
    if not evicted or not (status.get("admission") or _true(workload, "QuotaReserved")):
        return None
    generation = workload["metadata"].get("generation")
    reason, message = evicted.get("reason") or "Evicted", evicted.get("message") or "evicted"
    conditions = set_condition(status.get("conditions"), "Requeued", reason in REQUEUED_REASONS, reason, message,
                               generation, now)
    conditions = set_condition(conditions, "QuotaReserved", False, "Pending", message, generation, now)
    conditions = set_condition(conditions, "Admitted", False, "NoReservation", "The workload has no reservation",
                               generation, now)
    return {"conditions": conditions, "admission": None}
