"""Canary releases with automatic rollback (pure): what the next step is, given what the operator observed and
what Prometheus measured.

Without a service mesh the traffic is split by replica shares behind the one Service: the stable Deployment keeps
its replicas and a Deployment `<name>-canary` with the new pod template gets enough replicas that the canary's
share of the pods is closest to the step's weight. kube-proxy picks a pod per connection, so the canary receives
about that share of new connections (see docs/modeldeployment.md for the precision).

The state lives in `status.canary` (the API server keeps it), so a restarted operator continues where it stopped:

    Progressing (step i: scale the canary, wait until its pods are ready, run pauseSeconds, analyse)
      -> next step, or after the last step Promoting (the stable Deployment gets the new template, a normal
         zero-downtime rollout; the canary keeps serving meanwhile) -> Promoted (canary deleted)
      -> RolledBack when an analysis fails or the canary pods are not ready in time (canary deleted, stable kept,
         until the spec changes again)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelfleet_operator.modeldeployment.render import CANARY_SUFFIX
from modelfleet_operator.modeldeployment.spec import Canary, CanaryMetric

PROGRESSING, PROMOTING, PROMOTED, ROLLED_BACK, ABORTED = "Progressing", "Promoting", "Promoted", "RolledBack", "Aborted"
CANARY = "Canary"  # Decision.state while a canary runs
MAX_HISTORY = 10
_TIME = "%Y-%m-%dT%H:%M:%SZ"

# PromQL per metric: {sel} is the series selector of one version's pods, {w} the window in seconds.
QUERIES = {
    "TimeToFirstTokenP95": "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[{w}s])))",
    "RequestLatencyP95": "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{{{sel}}}[{w}s])))",
    # Failed (5xx) over all generation requests; `or vector(0)` so that no failure at all reads as 0, not no data.
    "ErrorRate": ('(sum(rate(http_requests_total{{{sel},handler=~"/v1/.*",status="5xx"}}[{w}s])) or vector(0))'
                  ' / sum(rate(http_requests_total{{{sel},handler=~"/v1/.*"}}[{w}s]))'),
}


def canary_name(name: str) -> str:
    return name + CANARY_SUFFIX


def pod_regex(name: str, canary: bool) -> str:
    """Names of one version's pods (`<deployment>-<replicaset hash>-<suffix>`); the stable regex excludes canaries."""
    return f"{canary_name(name) if canary else name}-[a-z0-9]+-[a-z0-9]+"


def query(metric: str, namespace: str, name: str, canary: bool, window_seconds: int) -> str:
    selector = f'namespace="{namespace}",pod=~"{pod_regex(name, canary)}"'
    return QUERIES[metric].format(sel=selector, w=window_seconds)


def split(desired: int, weight: int) -> tuple[int, float]:
    """Canary replicas next to `desired` stable ones so that the canary's share of pods is closest to `weight`
    percent (at least 1), and the share that gives (percent)."""
    canary = max(1, round(desired * weight / (100 - weight))) if desired > 0 else 1
    return canary, round(100 * canary / (desired + canary), 1)


@dataclass(frozen=True)
class Check:
    """One metric of one analysis: the canary's and the stable version's value, the bound and the verdict."""

    metric: str
    value: float | None
    stable_value: float | None
    threshold: str
    passed: bool
    message: str

    def to_status(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": _number(self.value), "stableValue": _number(self.stable_value),
                "threshold": self.threshold, "passed": self.passed, "message": self.message}


def evaluate(metric: CanaryMetric, value: float | None, stable_value: float | None) -> Check:
    """Compare the canary's value with the absolute bound and/or `maxRatioToStable` x the stable version's value.
    Without data the check fails: a canary that served nothing in the window is not promoted, and a relative
    bound without stable data cannot be judged."""
    bounds = []
    if metric.max is not None:
        bounds.append(f"<= {metric.max:g}")
    if metric.max_ratio_to_stable is not None:
        bounds.append(f"<= {metric.max_ratio_to_stable:g} x stable")
    threshold = " and ".join(bounds)
    if value is None:
        return Check(metric.name, None, stable_value, threshold, False, "no data: the canary served no requests "
                     "in the window (or Prometheus does not scrape its pods)")
    failures = []
    if metric.max is not None and value > metric.max:
        failures.append(f"{value:.4g} > {metric.max:g}")
    if metric.max_ratio_to_stable is not None:
        if stable_value is None:
            failures.append("no stable data to compare with")
        else:
            limit = metric.max_ratio_to_stable * stable_value
            if value > limit:
                failures.append(f"{value:.4g} > {metric.max_ratio_to_stable:g} x stable {stable_value:.4g}")
    passed = not failures
    return Check(metric.name, value, stable_value, threshold, passed,
                 "passed" if passed else "; ".join(failures))


@dataclass(frozen=True)
class Observed:
    """What the reconcile saw: the pod template hash the spec renders (candidate) and the live stable
    Deployment's (None without a stable Deployment), whether that Deployment's rollout is complete, whether the
    canary Deployment runs all its replicas, ready, for the candidate."""

    candidate: str
    stable: str | None
    stable_complete: bool
    canary_ready: bool
    desired: int
    now: datetime
    ready_timeout_seconds: int = 1800


@dataclass(frozen=True)
class Decision:
    """What to do: apply the candidate to the stable Deployment (else leave its template alone), how many canary
    replicas to run (0: delete the canary Deployment), whether Prometheus must be asked first, the new
    status.canary (None: no canary state; a finished canary's record stays), what the conditions should say
    (`state`: None, CANARY while one runs, ROLLED_BACK while the spec's version is held back), and when to look
    again."""

    apply_stable: bool
    canary_replicas: int
    status: dict[str, Any] | None
    analyze: bool = False
    requeue_after: float | None = None
    state: str | None = None


def decide(spec: Canary | None, old: dict[str, Any] | None, obs: Observed,
           checks: list[Check] | None = None) -> Decision:
    """The next step of the canary. Called once per reconcile; when the result asks for an analysis, the caller
    measures and calls again with `checks`."""
    old = old or None
    if spec is None or obs.stable is None or obs.candidate == obs.stable:
        return _no_canary(old, obs)
    if old and old.get("revision") == obs.candidate:
        if old.get("phase") == ROLLED_BACK:
            return Decision(False, 0, old, state=ROLLED_BACK)  # hold the stable version until the spec changes
        if old.get("phase") == PROGRESSING:
            return _progress(spec, old, obs, checks)
    if not obs.stable_complete:  # the stable version is still rolling: start once it is settled
        status = {**(old or {}), "message": "waiting for the stable Deployment's rollout to finish before the canary "
                  f"of {obs.candidate} starts"} if old else None
        return Decision(False, 0, status, requeue_after=10)
    return _start(spec, old, obs)


def _no_canary(old: dict[str, Any] | None, obs: Observed) -> Decision:
    if old and old.get("phase") == PROMOTING and old.get("revision") == obs.candidate:
        if not obs.stable_complete:  # the stable rollout of the promoted version: the canary serves meanwhile
            return Decision(True, int(old.get("canaryReplicas") or 1), old)
        return Decision(True, 0, {**old, "phase": PROMOTED, "canaryReplicas": 0,
                                  "message": f"promoted {obs.candidate}: the stable Deployment runs it; canary removed"})
    if old and old.get("phase") == PROGRESSING:
        return Decision(True, 0, {**old, "phase": ABORTED, "canaryReplicas": 0,
                                  "message": "the spec went back to the stable version; canary removed"})
    return Decision(True, 0, old)


def _start(spec: Canary, old: dict[str, Any] | None, obs: Observed) -> Decision:
    replicas, share = split(obs.desired, spec.steps[0].weight)
    history: list[dict[str, Any]] = []
    status = {
        "revision": obs.candidate, "stableRevision": obs.stable, "phase": PROGRESSING, "step": 1,
        "steps": len(spec.steps), "weight": spec.steps[0].weight, "actualWeight": share,
        "canaryReplicas": replicas, "stableReplicas": obs.desired, "stepStartTime": _time(obs.now),
        "analysis": [], "history": history,
        "message": f"step 1/{len(spec.steps)}: starting {replicas} canary pod(s) ({share}% of the pods)",
    }
    if old and old.get("phase") == PROGRESSING:
        status["message"] += f"; the canary of {old.get('revision')} was replaced by this newer spec"
    return Decision(False, replicas, status, requeue_after=5, state=CANARY)


def _progress(spec: Canary, old: dict[str, Any], obs: Observed, checks: list[Check] | None) -> Decision:
    index = int(old["step"]) - 1
    step = spec.steps[min(index, len(spec.steps) - 1)]
    replicas, share = split(obs.desired, step.weight)
    status = {**old, "steps": len(spec.steps), "weight": step.weight, "actualWeight": share,
              "canaryReplicas": replicas, "stableReplicas": obs.desired}
    where = f"step {index + 1}/{len(spec.steps)}"
    started = _parse(old.get("analysisStartTime"))
    if not obs.canary_ready:
        waited = (obs.now - _parse(old["stepStartTime"])).total_seconds()
        if waited > obs.ready_timeout_seconds:
            return _rolled_back(status, obs, [], f"{where}: the canary pods were not ready within "
                                f"{obs.ready_timeout_seconds} s")
        status.pop("analysisStartTime", None)  # the window starts once every canary pod serves
        return Decision(False, replicas, {**status, "message": f"{where}: waiting for {replicas} canary pod(s) to be "
                                          "ready"}, requeue_after=5, state=CANARY)
    if started is None:
        return Decision(False, replicas, {**status, "analysisStartTime": _time(obs.now),
                                          "message": f"{where}: {share}% of the pods run the canary; analysis in "
                                          f"{step.pause_seconds} s"}, requeue_after=step.pause_seconds, state=CANARY)
    remaining = step.pause_seconds - (obs.now - started).total_seconds()
    if remaining > 0:
        return Decision(False, replicas, status, requeue_after=max(1.0, remaining), state=CANARY)
    if checks is None:
        return Decision(False, replicas, status, analyze=True, state=CANARY)
    analysis = [c.to_status() for c in checks]
    passed = all(c.passed for c in checks)
    record = {"step": index + 1, "weight": step.weight, "actualWeight": share, "decision": "Passed" if passed else
              "Failed", "time": _time(obs.now), "analysis": analysis}
    status = {**status, "analysis": analysis, "history": [*(old.get("history") or []), record][-MAX_HISTORY:]}
    summary = "; ".join(f"{c.metric} {_text(c.value)} (stable {_text(c.stable_value)}, {c.threshold}): "
                        f"{'passed' if c.passed else c.message}" for c in checks)
    if not passed:
        return _rolled_back(status, obs, analysis, f"{where} failed its analysis: {summary}")
    if index + 1 >= len(spec.steps):
        return Decision(True, replicas, {**status, "phase": PROMOTING, "message": f"{where} passed ({summary}): "
                                         "promoting, the stable Deployment rolls out the new version"})
    nxt = spec.steps[index + 1]
    replicas, share = split(obs.desired, nxt.weight)
    status = {**status, "step": index + 2, "weight": nxt.weight, "actualWeight": share, "canaryReplicas": replicas,
              "stepStartTime": _time(obs.now),
              "message": f"{where} passed ({summary}); step {index + 2}/{len(spec.steps)}: {replicas} canary pod(s)"}
    status.pop("analysisStartTime", None)
    return Decision(False, replicas, status, requeue_after=5, state=CANARY)


def _rolled_back(status: dict[str, Any], obs: Observed, analysis: list[dict[str, Any]], why: str) -> Decision:
    status = {**status, "phase": ROLLED_BACK, "canaryReplicas": 0,
              "message": f"rolled back: {why}; the stable version keeps serving until the spec changes"}
    status.pop("analysisStartTime", None)
    return Decision(False, 0, status, state=ROLLED_BACK)


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


def events(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Event]:
    """Events for a canary's changes: started, each step's decision (with the measured values), promoted,
    rolled back, aborted."""
    old, new = old or {}, new or {}
    if not new or (old.get("revision"), old.get("phase"), old.get("step")) == \
            (new.get("revision"), new.get("phase"), new.get("step")):
        return []
    same = old.get("revision") == new.get("revision")
    result = []
    if not same and new.get("phase") == PROGRESSING:
        result.append(Event("Normal", "CanaryStarted", f"canary of {new['revision']} (stable {new.get('stableRevision')})"
                            f": {new['message']}"))
    elif new.get("phase") == ROLLED_BACK:
        result.append(Event("Warning", "CanaryRolledBack", new["message"]))
    elif new.get("phase") == PROMOTING:
        result.append(Event("Normal", "CanaryPromoting", new["message"]))
    elif new.get("phase") == PROMOTED:
        result.append(Event("Normal", "CanaryPromoted", new["message"]))
    elif new.get("phase") == ABORTED:
        result.append(Event("Normal", "CanaryAborted", new["message"]))
    elif same and new.get("step") != old.get("step"):
        result.append(Event("Normal", "CanaryStepPassed", new["message"]))
    return result


def value_of(result: list[dict[str, Any]]) -> float | None:
    """The number an instant query returned; None for no series or NaN (e.g. a quantile of no observations)."""
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


def _text(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def _time(when: datetime) -> str:
    return when.strftime(_TIME)


def _parse(text: str | None) -> datetime | None:
    return datetime.strptime(text, _TIME).replace(tzinfo=None) if text else None

