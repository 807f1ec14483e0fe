"""One level-triggered reconcile of a ModelDeployment: read everything it depends on, apply what the pure
functions render, delete children no longer wanted, write the status and post Events for what changed.

Nothing is remembered between reconciles except what the API server stores (the object, its children and its
status), so the operator can be killed at any point and the next reconcile picks up where this one stopped.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from modelfleet_operator import events, labels, ownership, policy
from modelfleet_operator.apierrors import UNPROCESSABLE, refusal_message
from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.controller import Outcome
from modelfleet_operator.kube import Kube, is_not_found, namespace_terminating
from modelfleet_operator.modeldeployment import canary as mdcanary
from modelfleet_operator.modeldeployment import capacity
from modelfleet_operator.modeldeployment import status as mdstatus
from modelfleet_operator.modeldeployment.autoscaling import hpa_name
from modelfleet_operator.modeldeployment.render import (
    KEDA_CRD,
    PODMONITOR_CRD,
    RenderContext,
    deployment_revision,
    render_canary,
    render_children,
    served_name,
    template_hash,
)
from modelfleet_operator.modeldeployment.resolve import ResolvedModel, resolve_model
from modelfleet_operator.modeldeployment.spec import DeploymentSpec, SpecError, parse_spec

KIND = "ModelDeployment"
OPTIONAL_KINDS = ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "PodMonitor")
# Events trigger reconciles; resyncs only catch what no watched event reports (e.g. a deleted Service).
SETTLED_RESYNC_SECONDS = 120.0
UNSETTLED_RESYNC_SECONDS = 10.0  # and one that is rolling, waiting or failing more often


class ChildRefused(Exception):
    """A child cannot be applied because of the spec: the API server refused it (422), or its name is taken by
    an object this ModelDeployment does not own. The message names the field."""


PROMETHEUS_TIMEOUT_SECONDS = 5


async def reconcile(kube: Kube, namespace: str, name: str, config: OperatorConfig) -> Outcome | None:
    """Bring one ModelDeployment's children and status up to date; None when it no longer exists."""
    try:
        return await _reconcile(kube, namespace, name, config)
    except ApiException as error:
        if namespace_terminating(error):
            return None  # the namespace's deletion removes the ModelDeployment too
        if is_not_found(error) and await kube.get(KIND, namespace, name) is None:
            return None  # deleted while we worked on it
        raise


async def _reconcile(kube: Kube, namespace: str, name: str, config: OperatorConfig) -> Outcome | None:
    obj = await kube.get(KIND, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None  # ownerReferences let the garbage collector remove the children
    meta = obj["metadata"]
    generation = int(meta.get("generation") or 0)
    old = obj.get("status") or {}
    try:
        spec = parse_spec(obj.get("spec") or {})
        policy.check_env(spec.env)
    except (SpecError, policy.PolicyError) as error:
        return await _finish(kube, obj, mdstatus.Observation(name, namespace, generation, spec_error=str(error)), old)

    trainingjob = await kube.get("TrainingJob", namespace, spec.model.training_job) if spec.model.training_job else None
    resolution = resolve_model(spec.model, trainingjob)
    # While the model cannot be resolved (a job re-running, a new reference not done yet), keep serving the last one.
    serving = resolution.model or ResolvedModel.from_status(old.get("model"))
    obs = mdstatus.Observation(name, namespace, generation, spec.desired_replicas, served_name(spec, name),
                               resolution=resolution, serving=serving)
    if serving is not None:
        try:
            policy.check_host_paths(_host_path_fields(spec, serving), config.allow_host_paths)
        except policy.PolicyError as error:
            return await _finish(kube, obj, replace(obs, spec_error=str(error)), old)
        live = await kube.get("Deployment", namespace, name)
        strategy = await _strategy(kube, spec, live, old.get("rollout"))
        keda = await kube.crd_established(KEDA_CRD)
        pod_monitor = await kube.crd_established(PODMONITOR_CRD)
        ctx = RenderContext(name, namespace, meta["uid"], serving, strategy, spec.image or config.runtime_image,
                            spec.image_pull_policy or config.image_pull_policy, keda, pod_monitor,
                            config.prometheus_url)
        children = render_children(spec, ctx)
        deployment = next(child for child in children if child["kind"] == "Deployment")
        decision = await _canary_decision(kube, spec, old.get("canary"), deployment, live, namespace, name,
                                          spec.rollout.canary and (spec.rollout.canary.prometheus_address
                                                                   or config.prometheus_url))
        try:
            applied = {child["kind"]: await _apply_owned(kube, child, meta)
                       if child is not deployment or decision.apply_stable else await _hold(kube, live, child)
                       for child in children}
            if decision.canary_replicas:
                await _apply_owned(kube, render_canary(deployment, decision.canary_replicas), meta)
            else:
                await _delete_owned(kube, "Deployment", namespace, mdcanary.canary_name(name), meta["uid"])
        except ChildRefused as error:
            return await _finish(kube, obj, replace(obs, spec_error=str(error)), old)
        served = {"ScaledObject": keda, "PodMonitor": pod_monitor}
        for kind in OPTIONAL_KINDS:
            if kind not in applied and served.get(kind, True):
                await _delete_owned(kube, kind, namespace, name, meta["uid"])
        pods = await kube.list_objects("Pod", namespace, label_selector=labels.selector(labels.runtime_labels(name)))
        obs = replace(obs, strategy=strategy, deployment=applied["Deployment"],
                      failures=await _with_logs(kube, namespace, mdstatus.pod_failures(pods), old),
                      autoscaling=spec.autoscaling,
                      autoscaler=await kube.get("HorizontalPodAutoscaler", namespace, hpa_name(name, keda))
                      if spec.autoscaling else None,
                      canary=decision)
        outcome = await _finish(kube, obj, obs, old)
        if decision.requeue_after is not None:
            return replace(outcome, requeue_after=min(outcome.requeue_after, decision.requeue_after))
        return outcome
    return await _finish(kube, obj, obs, old)


def _host_path_fields(spec: DeploymentSpec, serving: ResolvedModel) -> list[str]:
    """The field behind a file:// model (a hostPath volume), if the model is one."""
    if not serving.uri.startswith("file://"):
        return []
    return [f"spec.model.trainingJobRef (TrainingJob {spec.model.training_job} wrote {serving.uri})"
            if spec.model.training_job else "spec.model.uri"]


async def _apply_owned(kube: Kube, child: dict[str, Any], owner_meta: dict[str, Any]) -> dict[str, Any]:
    """Server-side-apply a child, unless an object of its name exists that this ModelDeployment does not control
    (a forced apply would take it over). Raises ChildRefused when the spec is at fault."""
    meta = child["metadata"]
    problem = ownership.conflict(await kube.get(child["kind"], meta["namespace"], meta["name"]), KIND,
                                 owner_meta["name"], owner_meta["uid"])
    if problem and problem.transient:
        raise RuntimeError(problem.message)  # retried with backoff by the work queue
    if problem:
        raise ChildRefused(problem.message)
    try:
        return await kube.apply(child)
    except ApiException as error:
        if error.status == UNPROCESSABLE:
            raise ChildRefused(refusal_message(child["kind"], meta["name"], error.body, str(error.reason))) from None
        raise


async def _finish(kube: Kube, obj: dict[str, Any], obs: mdstatus.Observation, old: dict[str, Any]) -> Outcome:
    new = mdstatus.compute_status(obs, old)
    if new != old:
        await kube.patch_status(KIND, obs.namespace, obs.name, merge_patch(old, new))
    for event in mdstatus.events(old, new):
        await events.post(kube, obj, event)
    settled = new["phase"] in ("Ready", "ScaledToZero", "Invalid")
    return Outcome(new["phase"], SETTLED_RESYNC_SECONDS if settled else UNSETTLED_RESYNC_SECONDS)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`: a merge patch keeps keys it does not mention, so the ones `new` no
    longer has are set to null (in nested objects too)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        patch[key] = merge_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
    return patch


async def _strategy(kube: Kube, spec: DeploymentSpec, live: dict[str, Any] | None,
                    old: dict[str, Any] | None) -> capacity.Strategy:
    requests = capacity.container_requests(spec.resources)
    if not capacity.needs_capacity_check(spec.rollout, requests):
        return capacity.choose_strategy(spec.rollout, requests, True)
    if live and not mdstatus.rollout_complete(live, int(live["spec"].get("replicas") or 0)):
        kept = capacity.keep_decision(spec.rollout, old)  # a rollout in flight keeps what was decided for it
        if kept:
            return kept
    nodes = await kube.list_objects("Node")
    pods = await kube.list_objects("Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed,spec.nodeName!=")
    room = capacity.surge_fits(requests, nodes, pods, spec.node_selector, spec.tolerations)
    return capacity.choose_strategy(spec.rollout, requests, room)


async def _canary_decision(kube: Kube, spec: DeploymentSpec, old: dict[str, Any] | None,
                           deployment: dict[str, Any], live: dict[str, Any] | None, namespace: str, name: str,
                           prometheus: str | None) -> mdcanary.Decision:
    """Observe the stable and canary Deployments, decide the canary's next step, and measure when it asks."""
    live_canary = await kube.get("Deployment", namespace, mdcanary.canary_name(name))
    candidate = template_hash(deployment["spec"]["template"])
    replicas = int((live_canary or {}).get("spec", {}).get("replicas") or 0)
    obs = mdcanary.Observed(
        candidate=candidate,
        stable=deployment_revision(live),
        stable_complete=mdstatus.rollout_complete(live, int((live or {}).get("spec", {}).get("replicas") or 0)),
        canary_ready=(deployment_revision(live_canary) == candidate and replicas == int((old or {}).get("canaryReplicas") or 0)
                      and mdstatus.rollout_complete(live_canary, replicas)),
        desired=spec.desired_replicas,
        now=datetime.now(timezone.utc).replace(tzinfo=None),
        ready_timeout_seconds=spec.startup_timeout_seconds,
    )
    decision = mdcanary.decide(spec.rollout.canary, old, obs)
    if not decision.analyze:
        return decision
    assert spec.rollout.canary is not None and prometheus
    window = spec.rollout.canary.steps[int(decision.status["step"]) - 1].pause_seconds
    try:
        checks = []
        for metric in spec.rollout.canary.metrics:
            canary, stable = [await asyncio.to_thread(_prometheus_value, prometheus, mdcanary.query(
                metric.name, namespace, name, is_canary, window)) for is_canary in (True, False)]
            checks.append(mdcanary.evaluate(metric, canary, stable))
    except (OSError, ValueError, KeyError) as error:  # Prometheus down or odd: retry, never judge on no answer
        message = f"cannot query Prometheus at {prometheus}: {error}; retrying"
        return replace(decision, analyze=False, requeue_after=UNSETTLED_RESYNC_SECONDS,
                       status={**decision.status, "message": message})
    return mdcanary.decide(spec.rollout.canary, old, obs, checks)


def _prometheus_value(base: str, promql: str) -> float | None:
    """One instant query (blocking: the reconcile runs it on a thread)."""
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=PROMETHEUS_TIMEOUT_SECONDS) as response:
        answer = json.loads(response.read())
    if answer.get("status") != "success":
        raise ValueError(f"{promql}: {answer.get('error', answer)}")
    return mdcanary.value_of(answer["data"]["result"])


async def _hold(kube: Kube, live: dict[str, Any] | None, rendered: dict[str, Any]) -> dict[str, Any]:
    """Keep the stable Deployment's pod template (a canary runs, or was rolled back); only its replicas follow."""
    assert live is not None
    replicas = rendered["spec"]["replicas"]
    if live["spec"].get("replicas") == replicas:
        return live
    return await kube.patch("Deployment", live["metadata"]["namespace"], live["metadata"]["name"],
                            {"spec": {"replicas": replicas}})


async def _delete_owned(kube: Kube, kind: str, namespace: str, name: str, uid: str) -> None:
    """Delete a child this ModelDeployment no longer wants; objects of the same name that it does not own stay."""
    child = await kube.get(kind, namespace, name)
    if child and any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences") or []):
        await kube.delete(kind, namespace, name, uid=child["metadata"]["uid"])


async def _with_logs(kube: Kube, namespace: str, failures: list[mdstatus.Failure],
                     old: dict[str, Any]) -> list[mdstatus.Failure]:
    failures, fetch = mdstatus.carry_log_lines(failures, old)
    fetched = {}
    for failure in fetch[:mdstatus.MAX_FAILURES]:
        lines = await kube.log_tail(namespace, failure.pod, failure.container, mdstatus.MAX_LOG_LINES,
                                    previous=failure.restart_count > 0)
        if lines:
            fetched[failure.key] = tuple(lines)
    return [replace(f, last_log_lines=fetched[f.key]) if f.key in fetched else f for f in failures]
