"""Rendering a ModelDeployment's children (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet_operator.modeldeployment.capacity import Strategy
from modelfleet_operator.modeldeployment.render import (
    RenderContext,
    quantity,
    render_children,
    render_deployment,
    url,
)
from modelfleet_operator.modeldeployment.resolve import ResolvedModel
from modelfleet_operator.modeldeployment.spec import parse_spec

DIGEST = "sha256:" + "cd" * 32
RUNTIME_LABELS = {"app.kubernetes.io/name": "modelfleet-runtime", "app.kubernetes.io/managed-by": "modelfleet",
                  "modelfleet.dev/modeldeployment": "chat", "modelfleet.dev/role": "runtime"}


def ctx(uri: str = "pvc://models/tiny", digest: str | None = DIGEST, **kw: Any) -> RenderContext:
    return RenderContext(name="chat", namespace="ml", uid="u-1", model=ResolvedModel(uri, digest),
                         strategy=kw.pop("strategy", Strategy(1, 0)), image="img:1", image_pull_policy="IfNotPresent",
                         **kw)


def spec(**fields: Any) -> Any:
    return parse_spec({"model": {"uri": "pvc://models/tiny"}, **fields})


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env(deployment: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_deployment_runs_the_runtime_with_probes_security_and_drain() -> None:
    dep = render_deployment(spec(runtime={"drainTimeoutSeconds": 45}, probes={"startupTimeoutSeconds": 3600}), ctx())
    assert dep["metadata"]["labels"] == RUNTIME_LABELS
    assert dep["metadata"]["ownerReferences"] == [{"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
                                                   "name": "chat", "uid": "u-1", "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert dep["spec"]["selector"] == {"matchLabels": RUNTIME_LABELS}
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == RUNTIME_LABELS
    c = container(dep)
    assert c["command"] == ["modelfleet", "serve"] and c["ports"][0]["containerPort"] == 8000
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] == 3600  # slow loads are not killed
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["spec"]["terminationGracePeriodSeconds"] > 45 + 5  # drain finishes before SIGKILL
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/models", "/dev/shm", "/tmp"}
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert pod["metadata"]["annotations"]["modelfleet.dev/model-digest"] == DIGEST


def test_runtime_env_follows_the_runtime_contract() -> None:
    dep = render_deployment(spec(
        model={"uri": "pvc://models/tiny", "servedModelName": "tiny-chat", "dtype": "bfloat16", "maxModelLen": 4096},
        runtime={"maxNumSeqs": 64, "maxNumBatchedTokens": 8192, "kvCacheMemory": "2Gi", "maxWaitingRequests": 100,
                 "requestTimeoutSeconds": 600},
        resources={"limits": {"nvidia.com/gpu": 1}},
        apiKeySecretRef={"name": "keys"},
        env=[{"name": "HOME", "value": "/home/app"}, {"name": "HF_HUB_OFFLINE", "value": "1"}],
    ), ctx())
    values = env(dep)
    assert values["MODELFLEET_MODEL"] == "/models/tiny"
    assert values["MODELFLEET_SERVED_MODEL_NAME"] == "tiny-chat"
    assert values["MODELFLEET_PORT"] == "8000" and values["MODELFLEET_HOST"] == "0.0.0.0"
    assert values["MODELFLEET_DTYPE"] == "bfloat16" and values["MODELFLEET_DEVICE"] == "cuda"
    assert values["MODELFLEET_MAX_MODEL_LEN"] == "4096" and values["MODELFLEET_MAX_NUM_SEQS"] == "64"
    assert values["MODELFLEET_MAX_NUM_BATCHED_TOKENS"] == "8192"
    assert values["MODELFLEET_KV_CACHE_MEMORY"] == str(2 * 1024**3)
    assert values["MODELFLEET_MAX_WAITING_REQUESTS"] == "100" and values["MODELFLEET_REQUEST_TIMEOUT"] == "600"
    assert values["MODELFLEET_DRAIN_TIMEOUT"] == "30" and values["MODELFLEET_BLOCK_SIZE"] == "16"
    assert "MODELFLEET_NUM_KV_BLOCKS" not in values
    # The API key only ever arrives through the Secret.
    assert values["MODELFLEET_API_KEY"] == {"secretKeyRef": {"name": "keys", "key": "api-key"}}
    assert values["HOME"] == "/home/app" and values["HF_HUB_OFFLINE"] == "1"
    names = [e["name"] for e in container(dep)["env"]]
    assert len(names) == len(set(names))
    assert container(dep)["resources"] == {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}


def test_served_name_defaults_to_the_resource_name_and_cpu_device() -> None:
    values = env(render_deployment(spec(), ctx()))
    assert values["MODELFLEET_SERVED_MODEL_NAME"] == "chat" and values["MODELFLEET_DEVICE"] == "cpu"
    assert "MODELFLEET_API_KEY" not in values and values["HOME"] == "/tmp"


def test_model_volumes_per_scheme() -> None:
    pvc = render_deployment(spec(), ctx("pvc://models/a/b"))["spec"]["template"]["spec"]
    assert pvc["volumes"][0] == {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    assert "initContainers" not in pvc

    dep = render_deployment(spec(model={"uri": "file:///srv/models/tiny"}), ctx("file:///srv/models/tiny"))
    assert dep["spec"]["template"]["spec"]["volumes"][0] == {
        "name": "model", "hostPath": {"path": "/srv/models/tiny", "type": "Directory"}}
    assert env(dep)["MODELFLEET_MODEL"] == "/models"

    s3_spec = spec(model={"uri": "s3://bucket/llama/v2", "s3": {"endpoint": "http://minio:9000", "region": "eu-1",
                                                                "credentialsSecretRef": {"name": "s3-creds"}}})
    dep = render_deployment(s3_spec, ctx("s3://bucket/llama/v2"))
    pod = dep["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "model", "emptyDir": {}}
    fetch = pod["initContainers"][0]
    assert fetch["command"][-2:] == ["s3://bucket/llama/v2", "/models"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"} in fetch["env"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is False
    assert env(dep)["MODELFLEET_MODEL"] == "/models"


def test_a_new_digest_changes_the_pod_template() -> None:
    one = render_deployment(spec(), ctx(digest=DIGEST))["spec"]["template"]
    two = render_deployment(spec(), ctx(digest="sha256:" + "ef" * 32))["spec"]["template"]
    assert one != two and one["spec"] == two["spec"]


def test_gpu_constrained_strategy_is_rendered() -> None:
    dep = render_deployment(spec(), ctx(strategy=Strategy(0, 1, True, "no GPUs")))
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def kinds(children: list[dict]) -> list[str]:
    return [c["kind"] for c in children]


def test_children_depend_on_replicas_autoscaling_and_optional_apis() -> None:
    assert kinds(render_children(spec(), ctx())) == ["Service", "Deployment"]
    assert kinds(render_children(spec(replicas=2), ctx())) == ["Service", "Deployment", "PodDisruptionBudget"]
    scaled = spec(autoscaling={"minReplicas": 2, "maxReplicas": 4, "target": 5})
    assert kinds(render_children(scaled, ctx())) == ["Service", "Deployment", "PodDisruptionBudget",
                                                     "HorizontalPodAutoscaler"]
    assert kinds(render_children(scaled, ctx(keda=True, pod_monitor=True))) == [
        "Service", "Deployment", "PodDisruptionBudget", "ScaledObject", "PodMonitor"]


def test_service_pdb_hpa_scaledobject_and_podmonitor() -> None:
    children = {c["kind"]: c for c in render_children(
        spec(autoscaling={"maxReplicas": 4, "target": 0.8, "metric": "KVCacheUsage", "minReplicas": 2}),
        ctx(pod_monitor=True))}
    service = children["Service"]["spec"]
    assert service["selector"] == RUNTIME_LABELS and service["ports"][0]["port"] == 8000
    assert children["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
                                     "name": "chat"}
    assert hpa["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": "vllm:kv_cache_usage_perc"},
                                                        "target": {"type": "AverageValue", "averageValue": "800m"}}}]
    assert hpa["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}  # Kubernetes' default
    assert children["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "http"

    keda = {c["kind"]: c for c in render_children(
        spec(autoscaling={"maxReplicas": 4, "target": 5}), ctx(keda=True, prometheus_url="http://prom:9090"))}
    trigger = keda["ScaledObject"]["spec"]["triggers"][0]
    assert keda["ScaledObject"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 300}}
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prom:9090", "threshold": "5",
        "query": 'sum(vllm:num_requests_waiting{namespace="ml",pod=~"chat-[a-z0-9]+-[a-z0-9]+"})'}


def test_hpa_scale_down_window_comes_from_the_spec() -> None:
    scaled = spec(autoscaling={"maxReplicas": 2, "target": 2, "scaleDownStabilizationSeconds": 10})
    [hpa] = [c for c in render_children(scaled, ctx()) if c["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 10}}


@pytest.mark.parametrize("value, expected", [(5, "5"), (5.0, "5"), (0.8, "800m"), (2.5, "2500m")])
def test_quantity(value: float, expected: str) -> None:
    assert quantity(value) == expected


def test_url() -> None:
    assert url("chat", "ml") == "http://chat.ml.svc.cluster.local:8000/v1"


def test_the_runtime_accepts_the_rendered_environment() -> None:
    """The contract with `modelfleet serve`: every rendered MODELFLEET_* variable parses into its setting."""
    from model_runtime.serving.cli import parse_config

    dep = render_deployment(spec(
        model={"uri": "pvc://models/tiny", "servedModelName": "tiny-chat", "dtype": "bfloat16", "maxModelLen": 4096},
        runtime={"maxNumSeqs": 64, "maxNumBatchedTokens": 8192, "kvCacheMemory": "2Gi", "blockSize": 32,
                 "maxWaitingRequests": 100, "requestTimeoutSeconds": 600, "drainTimeoutSeconds": 45},
        apiKeySecretRef={"name": "keys"},
    ), ctx())
    environ = {e["name"]: e.get("value", "sk-from-secret") for e in container(dep)["env"]}
    config = parse_config([], environ)
    assert (str(config.model), config.served_model_name, config.dtype, config.device) == (
        "/models/tiny", "tiny-chat", "bfloat16", "cpu")
    assert (config.host, config.port, config.max_model_len, config.max_num_seqs) == ("0.0.0.0", 8000, 4096, 64)
    assert (config.max_num_batched_tokens, config.kv_cache_memory, config.block_size) == (8192, 2 * 1024**3, 32)
    assert (config.max_waiting_requests, config.request_timeout, config.drain_timeout) == (100, 600, 45)
    assert list(config.api_keys) == ["sk-from-secret"]
