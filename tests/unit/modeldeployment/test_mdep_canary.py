"""The canary's decisions (pure): replica shares, PromQL, the checks, and the step machine from start through
analysis to promotion or rollback, with the Events each change posts."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from modelfleet_operator.modeldeployment.canary import (
    CANARY, ROLLED_BACK, Observed, decide, evaluate, events, pod_regex, query, split, value_of,
)
from modelfleet_operator.modeldeployment.spec import SpecError, parse_spec

T0 = datetime(2026, 1, 1, 12, 0, 0)
SPEC = parse_spec({"model": {"uri": "pvc://m/x"}, "rollout": {"canary": {
    "steps": [{"weight": 50, "pauseSeconds": 30}, {"weight": 75, "pauseSeconds": 20}],
    "analysis": {"metrics": [{"name": "TimeToFirstTokenP95", "max": 0.5, "maxRatioToStable": 2},
                             {"name": "ErrorRate", "max": 0.01}]}}}}).rollout.canary
assert SPEC is not None


def observed(at: float = 0, candidate: str = "new", stable: str | None = "old", ready: bool = True,
             stable_complete: bool = True, desired: int = 1) -> Observed:
    return Observed(candidate, stable, stable_complete, ready, desired, T0 + timedelta(seconds=at), 300)


def good() -> list:
    return [evaluate(SPEC.metrics[0], 0.05, 0.04), evaluate(SPEC.metrics[1], 0.0, 0.0)]


def test_split_by_replicas_keeps_the_stable_ones() -> None:
    assert split(1, 50) == (1, 50.0)
    assert split(1, 10) == (1, 50.0)  # one stable pod: the smallest canary is already half the pods
    assert split(3, 25) == (1, 25.0)
    assert split(4, 75) == (12, 75.0)
    assert split(2, 30) == (1, 33.3)


def test_queries_select_one_version_by_pod_name() -> None:
    assert pod_regex("chat", canary=True) == "chat-canary-[a-z0-9]+-[a-z0-9]+"
    q = query("ErrorRate", "ml", "chat", False, 30)
    assert 'namespace="ml",pod=~"chat-[a-z0-9]+-[a-z0-9]+",handler=~"/v1/.*",status="5xx"' in q and "[30s]" in q
    assert "or vector(0)" in q
    assert query("TimeToFirstTokenP95", "ml", "chat", True, 20).startswith("histogram_quantile(0.95, sum by (le)")
    assert value_of([]) is None and value_of([{"value": [0, "NaN"]}]) is None
    assert value_of([{"value": [0, "0.25"]}]) == 0.25


def test_checks_absolute_relative_and_no_data() -> None:
    ttft = SPEC.metrics[0]
    assert evaluate(ttft, 0.3, 0.2).passed
    too_slow = evaluate(ttft, 0.45, 0.1)
    assert not too_slow.passed and "0.45 > 2 x stable 0.1" in too_slow.message
    assert not evaluate(ttft, 0.6, 0.5).passed  # over the absolute bound
    assert evaluate(ttft, 0.3, 0.2).to_status() == {"metric": "TimeToFirstTokenP95", "value": "0.3",
                                                    "stableValue": "0.2", "threshold": "<= 0.5 and <= 2 x stable",
                                                    "passed": True, "message": "passed"}
    assert not evaluate(ttft, None, 0.2).passed
    assert not evaluate(ttft, 0.1, None).passed  # a relative bound needs stable data


def test_no_canary_without_a_change_or_a_stable_version() -> None:
    assert decide(None, None, observed()).apply_stable
    first = decide(SPEC, None, observed(stable=None))  # the first rollout: nothing to compare with
    assert first.apply_stable and first.canary_replicas == 0 and first.status is None
    same = decide(SPEC, None, observed(candidate="old"))
    assert same.apply_stable and same.status is None


def test_a_passing_canary_goes_step_by_step_then_promotes() -> None:
    d = decide(SPEC, None, observed(ready=False))
    assert (d.apply_stable, d.canary_replicas, d.state) == (False, 1, CANARY)
    assert d.status["phase"] == "Progressing" and d.status["step"] == 1 and d.status["actualWeight"] == 50.0
    assert [e.reason for e in events(None, d.status)] == ["CanaryStarted"]
    d = decide(SPEC, d.status, observed(5, ready=False))
    assert "waiting for 1 canary pod" in d.status["message"]
    d = decide(SPEC, d.status, observed(10))  # every canary pod ready: the window starts
    assert d.status["analysisStartTime"] == "2026-01-01T12:00:10Z" and d.requeue_after == 30
    d = decide(SPEC, d.status, observed(25))
    assert not d.analyze and d.requeue_after == 15
    d = decide(SPEC, d.status, observed(40))
    assert d.analyze and d.canary_replicas == 1
    old = d.status
    d = decide(SPEC, old, observed(40), good())
    assert d.status["step"] == 2 and d.canary_replicas == 3 and d.status["actualWeight"] == 75.0
    assert d.status["history"][0]["decision"] == "Passed" and d.status["history"][0]["analysis"][0]["value"] == "0.05"
    assert [e.reason for e in events(old, d.status)] == ["CanaryStepPassed"]
    d = decide(SPEC, d.status, observed(45, ready=False))  # 3 canary pods starting
    assert "analysisStartTime" not in d.status
    d = decide(SPEC, d.status, observed(50))
    d = decide(SPEC, d.status, observed(71), good())
    assert d.status["phase"] == "Promoting" and d.apply_stable and d.canary_replicas == 3
    promoting = d.status
    # The stable Deployment now runs the candidate; the canary serves until that rollout completes.
    d = decide(SPEC, promoting, observed(75, stable="new", stable_complete=False))
    assert d.apply_stable and d.canary_replicas == 3 and d.state is None
    d = decide(SPEC, promoting, observed(90, stable="new"))
    assert d.status["phase"] == "Promoted" and d.canary_replicas == 0
    assert [e.reason for e in events(promoting, d.status)] == ["CanaryPromoted"]
    assert len(d.status["history"]) == 2


def test_a_failing_analysis_rolls_back_and_holds_until_the_spec_changes() -> None:
    d = decide(SPEC, None, observed())
    d = decide(SPEC, d.status, observed(1))
    slow = [evaluate(SPEC.metrics[0], 0.49, 0.05), evaluate(SPEC.metrics[1], 0.0, 0.0)]
    before = d.status
    d = decide(SPEC, before, observed(40), slow)
    assert (d.apply_stable, d.canary_replicas, d.state) == (False, 0, ROLLED_BACK)
    assert d.status["phase"] == "RolledBack" and "TimeToFirstTokenP95 0.49" in d.status["message"]
    assert d.status["analysis"][0]["passed"] is False and d.status["history"][-1]["decision"] == "Failed"
    [event] = events(before, d.status)
    assert (event.type, event.reason) == ("Warning", "CanaryRolledBack") and "0.49" in event.message
    held = decide(SPEC, d.status, observed(100))
    assert (held.apply_stable, held.canary_replicas, held.state) == (False, 0, ROLLED_BACK)
    again = decide(SPEC, d.status, observed(110, candidate="newer"))
    assert again.status["revision"] == "newer" and again.status["phase"] == "Progressing"
    reverted = decide(SPEC, d.status, observed(120, candidate="old"))
    assert reverted.apply_stable and reverted.state is None


def test_canary_pods_that_never_get_ready_roll_back() -> None:
    d = decide(SPEC, None, observed(ready=False))
    d = decide(SPEC, d.status, observed(301, ready=False))
    assert d.state == ROLLED_BACK and "not ready within 300 s" in d.status["message"]


def test_going_back_to_the_stable_spec_aborts_the_canary() -> None:
    d = decide(SPEC, None, observed())
    d = decide(SPEC, d.status, observed(5, candidate="old"))
    assert d.apply_stable and d.canary_replicas == 0 and d.status["phase"] == "Aborted"
    restarted = decide(SPEC, d.status, observed(10))  # the same change again: a new canary
    assert restarted.status["phase"] == "Progressing"


def test_no_canary_starts_while_the_stable_version_still_rolls() -> None:
    d = decide(SPEC, None, observed(stable_complete=False))
    assert not d.apply_stable and d.canary_replicas == 0


@pytest.mark.parametrize("canary, field", [
    ({"steps": [], "analysis": {"metrics": [{"name": "ErrorRate", "max": 0}]}}, "steps"),
    ({"steps": [{"weight": 100}], "analysis": {"metrics": [{"name": "ErrorRate", "max": 0}]}}, "steps[0].weight"),
    ({"steps": [{"weight": 10}], "analysis": {"metrics": [{"name": "Bogus", "max": 0}]}}, "metrics[0].name"),
    ({"steps": [{"weight": 10}], "analysis": {"metrics": [{"name": "ErrorRate"}]}}, "metrics[0]"),
])
def test_bad_canary_specs_name_the_field(canary: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"spec.rollout.canary.*{field.replace('[', '.').replace(']', '.')}"):
        parse_spec({"model": {"uri": "pvc://m/x"}, "rollout": {"canary": canary}})
