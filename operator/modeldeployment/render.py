"""Render a ModelDeployment's children as plain dicts (pure): Deployment, Service, and when called for,
PodDisruptionBudget, HorizontalPodAutoscaler or KEDA ScaledObject, and PodMonitor.

The operator server-side-applies exactly these objects, so what a test reads back from the API is what is rendered here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from modelfleet_operator import API_VERSION, labels
from modelfleet_operator.security import container_security_context, pod_security_context
from modelfleet_operator.modeldeployment.capacity import Strategy
from modelfleet_operator.modeldeployment.resolve import ResolvedModel
from modelfleet_operator.modeldeployment.spec import Autoscaling, DeploymentSpec, parse_model_uri

PORT = 8000
PORT_NAME = "http"
CONTAINER = "runtime"
FETCH_CONTAINER = "model-fetch"
MODEL_MOUNT = "/models"
PRESTOP_SLEEP_SECONDS = 5
GRACE_MARGIN_SECONDS = 10
STARTUP_PERIOD_SECONDS = 10
DEFAULT_FETCH_IMAGE = "amazon/aws-cli:2.22.35"

MODEL_URI_ANNOTATION = "modelfleet.dev/model-uri"
MODEL_DIGEST_ANNOTATION = "modelfleet.dev/model-digest"
TEMPLATE_HASH_ANNOTATION = "modelfleet.dev/template-hash"  # on a Deployment: the version its pod template is
TRACK_LABEL = "modelfleet.dev/track"
CANARY_SUFFIX = "-canary"

KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_CRD = "scaledobjects.keda.sh"
PODMONITOR_API_VERSION = "monitoring.coreos.com/v1"
PODMONITOR_CRD = "podmonitors.monitoring.coreos.com"


@dataclass(frozen=True)
class RenderContext:
    """Everything besides the spec that the children depend on."""

    name: str
    namespace: str
    uid: str
    model: ResolvedModel
    strategy: Strategy
    image: str
    image_pull_policy: str
    keda: bool = False
    pod_monitor: bool = False
    prometheus_url: str = ""


def url(name: str, namespace: str) -> str:
    """The in-cluster base URL of the OpenAI API."""
    return f"http://{name}.{namespace}.svc.cluster.local:{PORT}/v1"


def served_name(spec: DeploymentSpec, name: str) -> str:
    return spec.model.served_name or name


def render_children(spec: DeploymentSpec, ctx: RenderContext) -> list[dict[str, Any]]:
    """All children that should exist, in the order they are applied."""
    children = [render_service(ctx), render_deployment(spec, ctx)]
    if spec.desired_replicas > 1:
        children.append(render_pdb(ctx))
    if spec.autoscaling:
        children.append(render_scaled_object(spec, ctx) if ctx.keda else render_hpa(spec, ctx))
    if ctx.pod_monitor:
        children.append(render_pod_monitor(ctx))
    return children


def render_deployment(spec: DeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    pod_labels = labels.runtime_labels(ctx.name)
    volumes, model_path, init_containers = _model_volume(spec, ctx.model, ctx.image_pull_policy)
    annotations = {
        **spec.pod_annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
        MODEL_URI_ANNOTATION: ctx.model.uri,
    }
    if ctx.model.digest:
        annotations[MODEL_DIGEST_ANNOTATION] = ctx.model.digest
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": (
            spec.runtime.drain_timeout_seconds + PRESTOP_SLEEP_SECONDS + GRACE_MARGIN_SECONDS
        ),
        "containers": [_runtime_container(spec, ctx, model_path)],
        "volumes": [
            *volumes,
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.shm_size)}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    template = {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_metadata(ctx), "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template)}},
        "spec": {
            "replicas": spec.desired_replicas,
            "selector": {"matchLabels": pod_labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": ctx.strategy.max_surge, "maxUnavailable": ctx.strategy.max_unavailable},
            },
            # Only report a stuck rollout after the slowest allowed model load (plus some slack).
            "progressDeadlineSeconds": spec.startup_timeout_seconds + 600,
            "revisionHistoryLimit": 5,
            "template": template,
        },
    }


def template_hash(template: dict[str, Any]) -> str:
    """A short digest of a rendered pod template: the version a Deployment runs, compared across reconciles."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def deployment_revision(deployment: dict[str, Any] | None) -> str | None:
    """The template hash a live Deployment was rendered with ("unknown" for one rendered before the annotation
    existed; None for no Deployment)."""
    if deployment is None:
        return None
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION, "unknown")


def render_canary(deployment: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The canary Deployment `<name>-canary`: the rendered (new) Deployment with `replicas` pods that also carry
    `modelfleet.dev/track: canary`, so the Service (which selects the common labels) sends them their share."""
    canary = copy.deepcopy(deployment)
    canary["metadata"]["name"] += CANARY_SUFFIX
    canary["metadata"]["labels"][TRACK_LABEL] = "canary"
    canary["spec"]["replicas"] = replicas
    canary["spec"]["selector"]["matchLabels"][TRACK_LABEL] = "canary"
    canary["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] = "canary"
    return canary


def render_service(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx),
        "spec": {
            "type": "ClusterIP",
            "selector": labels.runtime_labels(ctx.name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_pdb(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ctx),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels.runtime_labels(ctx.name)},
            # A pod that never became ready (e.g. a model that fails to load) may always be evicted.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_hpa(spec: DeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """An autoscaling/v2 HPA scaling the ModelDeployment (its scale subresource) on a per-pod runtime metric."""
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(ctx),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "ModelDeployment", "name": ctx.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": scaling.metric_name},
                    "target": {"type": "AverageValue", "averageValue": quantity(scaling.target)},
                },
            }],
            "behavior": _behavior(scaling),
        },
    }


def _behavior(scaling: Autoscaling) -> dict[str, Any]:
    """Scale in only after the metric stayed low for the stabilization window (scale out stays immediate)."""
    return {"scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}}


def render_scaled_object(spec: DeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """A KEDA ScaledObject with a prometheus trigger on the runtime metric of this deployment's pods."""
    scaling = spec.autoscaling
    assert scaling is not None
    selector = f'namespace="{ctx.namespace}",pod=~"{ctx.name}-[a-z0-9]+-[a-z0-9]+"'
    if scaling.metric == "KVCacheUsage":  # a fraction per pod: compare the average as is
        query, metric_type = f"avg({scaling.metric_name}{{{selector}}})", "Value"
    else:  # a count: the total, which the HPA behind KEDA divides by the replica count
        query, metric_type = f"sum({scaling.metric_name}{{{selector}}})", "AverageValue"
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": _metadata(ctx),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "ModelDeployment", "name": ctx.name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(scaling)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": metric_type,
                "metadata": {
                    "serverAddress": scaling.prometheus_address or ctx.prometheus_url,
                    "query": query,
                    "threshold": _number(scaling.target),
                },
            }],
        },
    }


def render_pod_monitor(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": PODMONITOR_API_VERSION,
        "kind": "PodMonitor",
        "metadata": _metadata(ctx),
        "spec": {
            "selector": {"matchLabels": labels.runtime_labels(ctx.name)},
            "podMetricsEndpoints": [{"port": PORT_NAME, "path": "/metrics", "interval": "15s"}],
        },
    }


def quantity(value: float) -> str:
    """A Kubernetes quantity for a metric target: whole numbers as is, fractions in milli-units (0.8 -> 800m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _metadata(ctx: RenderContext) -> dict[str, Any]:
    return {
        "name": ctx.name,
        "namespace": ctx.namespace,
        "labels": labels.runtime_labels(ctx.name),
        "ownerReferences": [{
            "apiVersion": API_VERSION,
            "kind": "ModelDeployment",
            "name": ctx.name,
            "uid": ctx.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def _runtime_container(spec: DeploymentSpec, ctx: RenderContext, model_path: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["modelfleet", "serve"],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "env": _env(spec, ctx, model_path),
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": PORT_NAME},
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(spec.startup_timeout_seconds / STARTUP_PERIOD_SECONDS),
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # Keep serving while the endpoint removal propagates; then SIGTERM makes the runtime drain.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": container_security_context(read_only_root=True),
        # A container that dies while loading leaves its last log lines where the operator can read them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if spec.resources:
        container["resources"] = spec.resources
    return container


def _env(spec: DeploymentSpec, ctx: RenderContext, model_path: str) -> list[dict[str, Any]]:
    runtime = spec.runtime
    values: dict[str, Any] = {
        "MODELFLEET_MODEL": model_path,
        "MODELFLEET_SERVED_MODEL_NAME": served_name(spec, ctx.name),
        "MODELFLEET_HOST": "0.0.0.0",
        "MODELFLEET_PORT": PORT,
        "MODELFLEET_DTYPE": spec.model.dtype,
        "MODELFLEET_DEVICE": "cuda" if spec.gpus_per_pod > 0 else "cpu",
        "MODELFLEET_MAX_MODEL_LEN": spec.model.max_model_len,
        "MODELFLEET_MAX_NUM_SEQS": runtime.max_num_seqs,
        "MODELFLEET_MAX_NUM_BATCHED_TOKENS": runtime.max_num_batched_tokens,
        "MODELFLEET_NUM_KV_BLOCKS": runtime.num_kv_blocks,
        "MODELFLEET_KV_CACHE_MEMORY": (
            int(parse_quantity(runtime.kv_cache_memory)) if runtime.kv_cache_memory is not None else None
        ),
        "MODELFLEET_BLOCK_SIZE": runtime.block_size,
        "MODELFLEET_MAX_WAITING_REQUESTS": runtime.max_waiting_requests,
        "MODELFLEET_REQUEST_TIMEOUT": runtime.request_timeout_seconds,
        "MODELFLEET_DRAIN_TIMEOUT": runtime.drain_timeout_seconds,
    }
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]
    if spec.api_key:
        env.append({"name": "MODELFLEET_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": spec.api_key.name, "key": spec.api_key.key}}})
    user_names = {var["name"] for var in spec.env}
    if "HOME" not in user_names:  # the root filesystem is read-only; caches go to the /tmp emptyDir
        env.append({"name": "HOME", "value": "/tmp"})
    return env + [dict(var) for var in spec.env]


def _model_volume(
    spec: DeploymentSpec, model: ResolvedModel, pull_policy: str
) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """The `model` volume, the model directory's path in the runtime container, and init containers (s3 fetch)."""
    source = parse_model_uri(model.uri, "status.model.uri" if spec.model.training_job else "spec.model.uri")
    if source.scheme == "pvc":
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": source.location, "readOnly": True}}
        return [volume], "/".join(p for p in (MODEL_MOUNT, source.path) if p), []
    if source.scheme == "file":
        return [{"name": "model", "hostPath": {"path": source.location, "type": "Directory"}}], MODEL_MOUNT, []
    s3 = spec.model.s3
    fetch_env = [{"name": "HOME", "value": "/tmp"}]
    if s3 and s3.endpoint:
        fetch_env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    if s3 and s3.region:
        fetch_env.append({"name": "AWS_REGION", "value": s3.region})
    fetch: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": (s3.image if s3 and s3.image else DEFAULT_FETCH_IMAGE),
        "imagePullPolicy": pull_policy,
        "command": ["aws", "s3", "sync", "--no-progress", "--only-show-errors",
                    f"s3://{'/'.join(p for p in (source.location, source.path) if p)}", MODEL_MOUNT],
        "env": fetch_env,
        "securityContext": container_security_context(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if s3 and s3.credentials_secret:
        fetch["envFrom"] = [{"secretRef": {"name": s3.credentials_secret}}]
    return [{"name": "model", "emptyDir": {}}], MODEL_MOUNT, [fetch]
