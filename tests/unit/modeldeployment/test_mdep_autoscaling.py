"""status.autoscaling and the Scaled Events, from the HorizontalPodAutoscaler's status (pure)."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.modeldeployment.autoscaling import autoscaling_events, autoscaling_status, hpa_name
from modelfleet_operator.modeldeployment.spec import Autoscaling
from modelfleet_operator.modeldeployment.status import Observation, compute_status, events
from tests.unit.modeldeployment.test_mdep_status import RESOLVED, MODEL, deployment

SCALING = Autoscaling(min_replicas=1, max_replicas=2, metric="WaitingRequests", target=2,
                      scale_down_stabilization_seconds=10)
T1, T2 = "2026-01-01T00:00:10Z", "2026-01-01T00:01:00Z"


def hpa(current: int, desired: int, value: str | None, scaled_at: str | None = None, limited: bool = False,
        active: tuple[str, str] = ("True", "ValidMetricFound")) -> dict[str, Any]:
    status: dict[str, Any] = {"currentReplicas": current, "desiredReplicas": desired, "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "message": "able"},
        {"type": "ScalingActive", "status": active[0], "reason": active[1], "message": f"{active[1]} message"},
        {"type": "ScalingLimited", "status": "True" if limited else "False",
         "reason": "TooManyReplicas" if limited else "DesiredWithinRange",
         "message": "the desired replica count is more than the maximum replica count" if limited else "within range"}]}
    if value is not None:
        status["currentMetrics"] = [{"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_waiting"},
                                                              "current": {"averageValue": value}}}]
    if scaled_at:
        status["lastScaleTime"] = scaled_at
    return {"status": status}


def test_a_scale_out_records_from_to_and_the_metric_against_the_target() -> None:
    steady = autoscaling_status(SCALING, hpa(1, 1, "0"), None)
    assert (steady["currentValue"], steady["target"], steady["reason"]) == ("0", "2", "ValidMetricFound")
    assert "lastScale" not in steady and autoscaling_events(None, steady) == []

    scaled = autoscaling_status(SCALING, hpa(1, 2, "6", scaled_at=T1), steady)
    assert scaled["lastScale"] == {
        "time": T1, "fromReplicas": 1, "toReplicas": 2, "metricValue": "6",
        "message": "scaled 1 -> 2: vllm:num_requests_waiting 6 per pod (average) > target 2"}
    assert autoscaling_events(steady, scaled) == [("Normal", "Scaled", scaled["lastScale"]["message"])]

    # Later reads of the same decision keep it and post nothing more.
    later = autoscaling_status(SCALING, hpa(2, 2, "3", scaled_at=T1, limited=True), scaled)
    assert later["lastScale"] == scaled["lastScale"] and autoscaling_events(scaled, later) == []
    assert later["reason"] == "TooManyReplicas" and later["currentValue"] == "3"


def test_a_scale_in_names_the_stabilization_window() -> None:
    before = autoscaling_status(SCALING, hpa(2, 2, "0", scaled_at=T1), None)
    scaled = autoscaling_status(SCALING, hpa(2, 1, "0", scaled_at=T2), before)
    assert scaled["lastScale"]["message"] == (
        "scaled 2 -> 1: vllm:num_requests_waiting 0 per pod (average) < target 2, below target for the "
        "10s scale-down stabilization window")
    assert [e[1] for e in autoscaling_events(before, scaled)] == ["Scaled"]


def test_a_decision_read_after_it_took_effect_takes_the_replicas_before_from_the_old_status() -> None:
    old = autoscaling_status(SCALING, hpa(1, 1, "0"), None)
    scaled = autoscaling_status(SCALING, hpa(2, 2, "4", scaled_at=T1), old)
    assert (scaled["lastScale"]["fromReplicas"], scaled["lastScale"]["toReplicas"]) == (1, 2)


def test_a_failing_autoscaler_says_why_once() -> None:
    failing = autoscaling_status(SCALING, hpa(1, 1, None, active=("False", "FailedGetPodsMetric")), None)
    assert failing["reason"] == "FailedGetPodsMetric" and "currentValue" not in failing
    assert autoscaling_events(None, failing) == [("Warning", "FailedGetPodsMetric", "FailedGetPodsMetric message")]
    assert autoscaling_events(failing, failing) == []
    assert autoscaling_status(SCALING, None, None)["reason"] == "Pending"


def test_status_and_events_of_the_modeldeployment_use_the_autoscaler() -> None:
    def observe(autoscaler: dict[str, Any], desired: int) -> Observation:
        return Observation("chat", "ml", 3, desired, "chat", resolution=RESOLVED, serving=MODEL,
                           deployment=deployment(desired, desired, desired, desired),
                           autoscaling=SCALING, autoscaler=autoscaler)

    one = compute_status(observe(hpa(1, 1, "0"), 1), None)
    two = compute_status(observe(hpa(1, 2, "6", scaled_at=T1), 2), one)
    assert two["autoscaling"]["lastScale"]["toReplicas"] == 2
    # One Scaled event, the autoscaler's (not the generic "scaled from 1 to 2 replicas").
    assert [(e.reason, e.message) for e in events(one, two)] == [
        ("Scaled", "scaled 1 -> 2: vllm:num_requests_waiting 6 per pod (average) > target 2")]


def test_keda_names_its_hpa_after_the_scaledobject() -> None:
    assert hpa_name("chat", keda=False) == "chat" and hpa_name("chat", keda=True) == "keda-hpa-chat"
