"""Parse a ModelDeployment's spec (a plain dict, as the API server stores it) into typed values with defaults.

The CRD's schema and CEL rules reject bad specs at admission; parsing re-checks only what the renderer relies
on, so a spec that slipped past admission (an older CRD, a unit test) fails with a message naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

GPU = "nvidia.com/gpu"
RESERVED_ENV_PREFIX = "MODELFLEET_"

METRICS = {
    "WaitingRequests": "vllm:num_requests_waiting",
    "RunningRequests": "vllm:num_requests_running",
    "KVCacheUsage": "vllm:kv_cache_usage_perc",
}

_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SpecError(ValueError):
    """An invalid spec; the message starts with the offending field's path."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model URI: pvc (claim + path inside it), file (absolute host path) or s3 (bucket + prefix)."""

    uri: str
    scheme: str
    location: str  # claim name (pvc), host path (file) or bucket (s3)
    path: str = ""  # path inside the claim or key prefix in the bucket, without a leading slash


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    uri: str | None
    training_job: str | None
    digest: str | None
    served_name: str | None
    dtype: str = "auto"
    max_model_len: int | None = None
    s3: S3Options | None = None


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metric: str
    target: float
    prometheus_address: str | None = None
    scale_down_stabilization_seconds: int = 300  # Kubernetes' default for HPAs

    @property
    def metric_name(self) -> str:
        return METRICS[self.metric]


@dataclass(frozen=True)
class RuntimeOptions:
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    num_kv_blocks: int | None = None
    kv_cache_memory: int | str | None = None
    block_size: int = 16
    max_waiting_requests: int | None = None
    request_timeout_seconds: int | None = None
    drain_timeout_seconds: int = 30


CANARY_METRICS = ("TimeToFirstTokenP95", "RequestLatencyP95", "ErrorRate")
WHEN_NO_ROOM = ("Wait", "Replace")
# Test-only fault switches of the runtime (docs/runtime.md): the one exception to the reserved MODELFLEET_ prefix.
FAULT_ENV = ("MODELFLEET_FAULT_LATENCY_MS", "MODELFLEET_FAULT_ERROR_RATE")


@dataclass(frozen=True)
class CanaryStep:
    weight: int  # percent of the pods behind the Service that run the new version
    pause_seconds: int  # how long the step runs before its analysis; also the analysis' window


@dataclass(frozen=True)
class CanaryMetric:
    name: str
    max: float | None = None  # absolute bound on the canary's value
    max_ratio_to_stable: float | None = None  # bound on canary / stable


@dataclass(frozen=True)
class Canary:
    steps: tuple[CanaryStep, ...]
    metrics: tuple[CanaryMetric, ...]
    prometheus_address: str | None = None


@dataclass(frozen=True)
class Rollout:
    max_surge: int | str = 1
    max_unavailable: int | str = 0
    when_no_room: str = "Wait"
    canary: Canary | None = None

    @property
    def surges(self) -> bool:
        return str(self.max_surge) not in ("0", "0%")


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class DeploymentSpec:
    model: ModelSpec
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    image: str | None = None
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    pod_annotations: dict[str, str] = field(default_factory=dict)
    env: list[dict[str, Any]] = field(default_factory=list)
    runtime: RuntimeOptions = RuntimeOptions()
    api_key: SecretKey | None = None
    rollout: Rollout = Rollout()
    startup_timeout_seconds: int = 1800
    shm_size: int | str = "1Gi"

    @property
    def gpus_per_pod(self) -> int:
        """GPUs each runtime pod asks for (requests, else limits)."""
        for section in ("requests", "limits"):
            value = self.resources.get(section, {}).get(GPU)
            if value is not None:
                return int(str(value))
        return 0

    @property
    def desired_replicas(self) -> int:
        """spec.replicas, kept inside the autoscaler's bounds."""
        if self.autoscaling is None:
            return self.replicas
        return min(max(self.replicas, self.autoscaling.min_replicas), self.autoscaling.max_replicas)


def parse_model_uri(uri: str, field_path: str = "spec.model.uri") -> ModelSource:
    """Split a model URI into its parts; raises SpecError naming `field_path` when it is malformed."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("pvc", "file", "s3"):
        raise SpecError(f"{field_path}: {uri!r} must start with pvc://, file:// or s3://")
    if scheme == "file":
        parts = rest.split("/")
        if not rest.startswith("/") or ".." in parts:
            raise SpecError(f"{field_path}: {uri!r} must be file:// followed by an absolute path without '..'")
        return ModelSource(uri, scheme, rest.rstrip("/") or "/")
    location, _, path = rest.partition("/")
    pattern = _CLAIM if scheme == "pvc" else _BUCKET
    if not pattern.match(location):
        what = "a PersistentVolumeClaim name" if scheme == "pvc" else "a bucket name"
        raise SpecError(f"{field_path}: {uri!r} must be {scheme}:// followed by {what}")
    path = path.strip("/")
    if ".." in path.split("/"):
        raise SpecError(f"{field_path}: {uri!r} must not contain '..'")
    return ModelSource(uri, scheme, location, path)


def parse_spec(spec: dict[str, Any]) -> DeploymentSpec:
    """Typed spec with the schema's defaults applied."""
    model = _model(spec.get("model") or {})
    scaling = spec.get("autoscaling")
    rollout = spec.get("rollout") or {}
    api_key = spec.get("apiKeySecretRef")
    for i, var in enumerate(spec.get("env") or []):
        if str(var.get("name", "")).startswith(RESERVED_ENV_PREFIX) and var.get("name") not in FAULT_ENV:
            raise SpecError(f"spec.env[{i}].name: {var.get('name')!r} is reserved for the operator")
    return DeploymentSpec(
        model=model,
        replicas=int(spec.get("replicas", 1)),
        autoscaling=_autoscaling(scaling) if scaling else None,
        image=spec.get("image"),
        image_pull_policy=spec.get("imagePullPolicy"),
        image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or []),
        resources=_resources(spec.get("resources") or {}),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
        affinity=spec.get("affinity"),
        priority_class_name=spec.get("priorityClassName"),
        pod_annotations=dict(spec.get("podAnnotations") or {}),
        env=list(spec.get("env") or []),
        runtime=_runtime(spec.get("runtime") or {}),
        api_key=SecretKey(api_key["name"], api_key.get("key", "api-key")) if api_key else None,
        rollout=_rollout(rollout),
        startup_timeout_seconds=int((spec.get("probes") or {}).get("startupTimeoutSeconds", 1800)),
        shm_size=spec.get("shmSize", "1Gi"),
    )


def _rollout(rollout: dict[str, Any]) -> Rollout:
    when = rollout.get("whenNoRoom", "Wait")
    if when not in WHEN_NO_ROOM:
        raise SpecError(f"spec.rollout.whenNoRoom: {when!r} is not one of {', '.join(WHEN_NO_ROOM)}")
    canary = rollout.get("canary")
    return Rollout(rollout.get("maxSurge", 1), rollout.get("maxUnavailable", 0), when,
                   _canary(canary) if canary else None)


def _canary(canary: dict[str, Any]) -> Canary:
    steps = tuple(CanaryStep(int(s["weight"]), int(s.get("pauseSeconds", 60))) for s in canary.get("steps") or [])
    if not steps:
        raise SpecError("spec.rollout.canary.steps: at least one step is required")
    for i, step in enumerate(steps):
        if not 1 <= step.weight <= 99:
            raise SpecError(f"spec.rollout.canary.steps[{i}].weight: must be from 1 to 99 (percent), got {step.weight}")
        if step.pause_seconds < 10:
            raise SpecError(f"spec.rollout.canary.steps[{i}].pauseSeconds: must be at least 10, got {step.pause_seconds}")
    analysis = canary.get("analysis") or {}
    metrics = []
    for i, metric in enumerate(analysis.get("metrics") or []):
        name = metric.get("name")
        if name not in CANARY_METRICS:
            raise SpecError(f"spec.rollout.canary.analysis.metrics[{i}].name: {name!r} is not one of "
                            f"{', '.join(CANARY_METRICS)}")
        bound = metric.get("max")
        ratio = metric.get("maxRatioToStable")
        if bound is None and ratio is None:
            raise SpecError(f"spec.rollout.canary.analysis.metrics[{i}]: give max, maxRatioToStable or both")
        metrics.append(CanaryMetric(name, None if bound is None else float(bound),
                                    None if ratio is None else float(ratio)))
    if not metrics:
        raise SpecError("spec.rollout.canary.analysis.metrics: at least one metric is required")
    return Canary(steps, tuple(metrics), analysis.get("prometheusAddress"))


def _model(model: dict[str, Any]) -> ModelSpec:
    uri = model.get("uri")
    ref = (model.get("trainingJobRef") or {}).get("name")
    if bool(uri) == bool(ref):
        raise SpecError("spec.model: exactly one of spec.model.uri and spec.model.trainingJobRef must be set")
    if uri:
        parse_model_uri(uri)
    s3 = model.get("s3")
    if s3 and not (uri or "").startswith("s3://"):
        raise SpecError("spec.model.s3: only allowed with an s3:// spec.model.uri")
    return ModelSpec(
        uri=uri,
        training_job=ref,
        digest=model.get("digest"),
        served_name=model.get("servedModelName"),
        dtype=model.get("dtype", "auto"),
        max_model_len=model.get("maxModelLen"),
        s3=S3Options(
            endpoint=s3.get("endpoint"),
            region=s3.get("region"),
            credentials_secret=(s3.get("credentialsSecretRef") or {}).get("name"),
            image=s3.get("image"),
        ) if s3 else None,
    )


def _autoscaling(scaling: dict[str, Any]) -> Autoscaling:
    result = Autoscaling(
        min_replicas=int(scaling.get("minReplicas", 1)),
        max_replicas=int(scaling["maxReplicas"]),
        metric=scaling.get("metric", "WaitingRequests"),
        target=float(scaling["target"]),
        prometheus_address=scaling.get("prometheusAddress"),
        scale_down_stabilization_seconds=int(scaling.get("scaleDownStabilizationSeconds", 300)),
    )
    if not 0 <= result.scale_down_stabilization_seconds <= 3600:
        raise SpecError("spec.autoscaling.scaleDownStabilizationSeconds must be between 0 and 3600")
    if result.metric not in METRICS:
        raise SpecError(f"spec.autoscaling.metric: {result.metric!r} is not one of {', '.join(METRICS)}")
    if result.min_replicas > result.max_replicas:
        raise SpecError("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas")
    return result


def is_extended_resource(name: str) -> bool:
    """An extended resource (nvidia.com/gpu, ...): whole numbers only, and the API wants equal requests and limits."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


def _resources(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Copy of resources in which an extended resource (a GPU count) given in requests or limits appears in both
    (the API requires it)."""
    result = {section: dict(resources.get(section) or {}) for section in ("requests", "limits")}
    for name in {*result["requests"], *result["limits"]}:
        if is_extended_resource(name):
            result["requests"][name] = result["limits"][name] = result["requests"].get(name, result["limits"].get(name))
    return {section: values for section, values in result.items() if values}


def _runtime(runtime: dict[str, Any]) -> RuntimeOptions:
    return RuntimeOptions(
        max_num_seqs=runtime.get("maxNumSeqs"),
        max_num_batched_tokens=runtime.get("maxNumBatchedTokens"),
        num_kv_blocks=runtime.get("numKvBlocks"),
        kv_cache_memory=runtime.get("kvCacheMemory"),
        block_size=int(runtime.get("blockSize", 16)),
        max_waiting_requests=runtime.get("maxWaitingRequests"),
        request_timeout_seconds=runtime.get("requestTimeoutSeconds"),
        drain_timeout_seconds=int(runtime.get("drainTimeoutSeconds", 30)),
    )
