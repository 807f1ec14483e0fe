"""What a ModelDeployment's autoscaler decided and why, read from its HorizontalPodAutoscaler's status (pure):
`status.autoscaling` and the Events that a new scale decision or a failing autoscaler deserve.

The HPA records, at each rescale, the replicas it found (currentReplicas), the replicas it set
(desiredReplicas), the metric value that led there (currentMetrics) and when (lastScaleTime). The operator
watches the HPA (its status changes trigger a reconcile), reads it when it reconciles, and keeps the last
decision in `status.autoscaling.lastScale` until the next one.
"""

from __future__ import annotations

from typing import Any

from modelfleet_operator.modeldeployment.render import quantity
from modelfleet_operator.modeldeployment.spec import Autoscaling

KEDA_HPA_PREFIX = "keda-hpa-"  # KEDA names the HPA it creates for a ScaledObject keda-hpa-<name>


def hpa_name(name: str, keda: bool) -> str:
    return KEDA_HPA_PREFIX + name if keda else name


def metric_value(hpa_status: dict[str, Any]) -> str | None:
    """The first metric's current value as the HPA last measured it (a quantity string), if any."""
    for metric in hpa_status.get("currentMetrics") or []:
        source = metric.get(_SOURCES.get(metric.get("type", ""), "")) or {}
        current = source.get("current") or {}
        value = current.get("averageValue") or current.get("value")
        if value is not None:
            return str(value)
    return None


_SOURCES = {"Pods": "pods", "External": "external", "Object": "object", "Resource": "resource"}


def _condition(hpa_status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in hpa_status.get("conditions") or [] if c.get("type") == type_), {})


def _explain(hpa_status: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of the HPA's state: why it cannot scale, what limits it, or that it works."""
    active, limited, able = (_condition(hpa_status, t) for t in ("ScalingActive", "ScalingLimited", "AbleToScale"))
    for condition, bad in ((able, "False"), (active, "False"), (limited, "True")):
        if condition.get("status") == bad:
            return condition.get("reason", ""), condition.get("message", "")
    if active:
        return active.get("reason", ""), active.get("message", "")
    return "Pending", "the HorizontalPodAutoscaler has not computed a decision yet"


def scale_message(scaling: Autoscaling, before: int, after: int, value: str | None, limit: str) -> str:
    """Why the HPA went from `before` to `after` replicas, e.g.
    'scaled 1 -> 2: vllm:num_requests_waiting 6 per pod (average) > target 2'."""
    text = f"scaled {before} -> {after}: {scaling.metric_name}"
    target = quantity(scaling.target)
    if value is None:
        text += f" (no current value) vs target {target}"
    else:
        text += f" {value} per pod (average) {'>' if after > before else '<'} target {target}"
    if after < before:
        text += f", below target for the {scaling.scale_down_stabilization_seconds}s scale-down stabilization window"
    return text + (f"; {limit}" if limit else "")


def autoscaling_status(scaling: Autoscaling, hpa: dict[str, Any] | None,
                       old: dict[str, Any] | None) -> dict[str, Any]:
    """status.autoscaling from the HPA as read now and the previous status.autoscaling."""
    old = old or {}
    status: dict[str, Any] = {"metric": scaling.metric_name, "target": quantity(scaling.target),
                              "minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas}
    if hpa is None:
        status.update(reason="Pending", message="the autoscaler does not exist yet")
        return status
    hpa_status = hpa.get("status") or {}
    current, desired = hpa_status.get("currentReplicas"), hpa_status.get("desiredReplicas")
    value = metric_value(hpa_status)
    reason, message = _explain(hpa_status)
    status.update(reason=reason, message=message)
    if value is not None:
        status["currentValue"] = value
    if desired is not None:
        status["desiredReplicas"] = int(desired)
    last = old.get("lastScale")
    scaled_at = hpa_status.get("lastScaleTime")
    if scaled_at and (not last or last.get("time") != scaled_at):
        # Read after the scale took effect (current == desired): the replicas before are the HPA's previous wish.
        before = int(current) if current is not None and current != desired else int(old.get("desiredReplicas") or 0)
        after = int(desired or 0)
        limited = _condition(hpa_status, "ScalingLimited")
        limit = limited.get("message", "") if limited.get("status") == "True" else ""
        if before and before != after:
            last = {"time": scaled_at, "fromReplicas": before, "toReplicas": after,
                    "message": scale_message(scaling, before, after, value, limit)}
            if value is not None:
                last["metricValue"] = value
    if last:
        status["lastScale"] = last
    return status


def autoscaling_events(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events for a change of status.autoscaling: a Normal `Scaled` per new scale
    decision, a Warning when the autoscaler stops working (e.g. FailedGetPodsMetric: no metrics API)."""
    old = old or {}
    events: list[tuple[str, str, str]] = []
    last, before = new.get("lastScale"), old.get("lastScale") or {}
    if last and last.get("time") != before.get("time"):
        events.append(("Normal", "Scaled", last["message"]))
    if new.get("reason", "").startswith(("Failed", "Invalid")) and new.get("reason") != old.get("reason"):
        events.append(("Warning", new["reason"], new.get("message", "")))
    return events
