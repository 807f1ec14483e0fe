"""The ModelDeployment controller against a real control plane (kube-apiserver, controller-manager, scheduler,
kwok nodes) with the operator running as a process."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.modeldeployment.capacity import Strategy, free_gpus
from tests.kubeclient import SyncKube as Kube
from modelfleet_operator.modeldeployment.render import RenderContext, render_children
from modelfleet_operator.modeldeployment.resolve import ResolvedModel
from modelfleet_operator.modeldeployment.spec import parse_spec
from tests.helpers import ON_FAKE_NODES, restricted_pod, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
FIXTURE_CRDS = REPO / "tests" / "fixtures" / "crds"
DIGEST_1 = "sha256:" + "11" * 32
DIGEST_2 = "sha256:" + "22" * 32
KIND = "ModelDeployment"


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    # An s3:// model needs no PersistentVolumeClaim (kwok "runs" the fetching init container); tests about the model
    # volume itself use pvc:// with the models_pvc fixture.
    spec.setdefault("model", {"uri": "s3://models/tiny", "digest": DIGEST_1})
    for key, value in ON_FAKE_NODES.items():  # kwok fakes the runtime pods' states; tests/realnode run real ones
        spec.setdefault(key, value)
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": KIND, "metadata": {"name": name}, "spec": spec}


def apply(cluster: Any, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def patch_spec(cluster: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "mdep", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return (kube.get(KIND, namespace, name) or {}).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> tuple[str | None, str | None]:
    cond = next((c for c in st.get("conditions") or [] if c["type"] == type_), {})
    return cond.get("status"), cond.get("reason")


def live_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = kube.list_objects("Pod", namespace, label_selector=f"modelfleet.dev/modeldeployment={name}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("phase") not in ("Succeeded", "Failed")]


def wait_ready(kube: Kube, namespace: str, name: str, replicas: int, timeout: float = 60) -> dict[str, Any]:
    """Phase Ready for the current generation with `replicas` ready pods; returns the status."""
    def ready() -> dict[str, Any] | None:
        obj = kube.get(KIND, namespace, name) or {}
        st = obj.get("status") or {}
        current = st.get("observedGeneration") == obj.get("metadata", {}).get("generation")
        return st if current and st.get("phase") == "Ready" and st.get("readyReplicas") == replicas else None
    return wait_for(ready, timeout=timeout, what=f"{name} Ready with {replicas} replicas")


def events(cluster: Any, namespace: str, name: str) -> list[tuple[str, str, str]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json",
                          "--field-selector", f"involvedObject.kind={KIND},involvedObject.name={name}").stdout
    return [(e["type"], e["reason"], e["message"]) for e in json.loads(out)["items"]]


def reasons(cluster: Any, namespace: str, name: str) -> set[str]:
    return {reason for _, reason, _ in events(cluster, namespace, name)}


def contains(live: Any, expected: Any, path: str = "") -> list[str]:
    """Where `live` differs from `expected`, ignoring what the API server added (defaults, status, metadata)."""
    if isinstance(expected, dict):
        if not isinstance(live, dict):
            return [f"{path}: {live!r} is not an object"]
        return [m for k, v in expected.items() for m in
                (contains(live[k], v, f"{path}.{k}") if k in live else [f"{path}.{k}: missing"])]
    if isinstance(expected, list):
        if not isinstance(live, list) or len(live) != len(expected):
            return [f"{path}: {live!r} != {expected!r}"]
        return [m for i, (a, b) in enumerate(zip(live, expected, strict=True)) for m in contains(a, b, f"{path}[{i}]")]
    return [] if live == expected else [f"{path}: {live!r} != {expected!r}"]


def test_create_renders_children_exactly_and_becomes_ready(cluster: Any, kube: Kube, operator: Any,
                                                           namespace: str, models_pvc: str) -> None:
    apply(cluster, namespace, manifest("tiny", replicas=2, runtime={"drainTimeoutSeconds": 20},
                                       model={"uri": "pvc://models/tiny", "digest": DIGEST_1,
                                              "servedModelName": "tiny-chat"}))
    st = wait_ready(kube, namespace, "tiny", 2)

    obj = kube.get(KIND, namespace, "tiny")
    assert obj is not None
    spec = parse_spec(obj["spec"])
    ctx = RenderContext("tiny", namespace, obj["metadata"]["uid"], ResolvedModel("pvc://models/tiny", DIGEST_1),
                        Strategy(1, 0), OperatorConfig.from_env(operator.env).runtime_image,
                        OperatorConfig.from_env(operator.env).image_pull_policy)
    expected = render_children(spec, ctx)
    assert [c["kind"] for c in expected] == ["Service", "Deployment", "PodDisruptionBudget"]
    for child in expected:
        live = kube.get(child["kind"], namespace, "tiny")
        assert live is not None, child["kind"]
        assert contains(live, child) == [], child["kind"]

    deployment = kube.get("Deployment", namespace, "tiny")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 1800
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod_spec["terminationGracePeriodSeconds"] > 20 + 5
    # The pods exist, so Pod Security "restricted" (enforced on the namespace) admitted them.
    pods = live_pods(kube, namespace, "tiny")
    assert len(pods) == 2 and all(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
                                  for p in pods)

    assert st["url"] == f"http://tiny.{namespace}.svc.cluster.local:8000/v1"
    assert st["ready"] == "2/2" and st["replicas"] == 2 and st["updatedReplicas"] == 2
    assert st["model"] == {"name": "tiny-chat", "uri": "pvc://models/tiny", "digest": DIGEST_1}
    for type_ in ("ModelResolved", "Progressing", "Available", "Ready"):
        assert condition(st, type_)[0] == "True", type_
    columns = cluster.kubectl("get", "mdep", "tiny", "-n", namespace).stdout
    assert columns.split("\n")[0].split()[:5] == ["NAME", "MODEL", "READY", "PHASE", "URL"]
    assert "tiny-chat" in columns and "2/2" in columns and st["url"] in columns
    wait_for(lambda: {"ModelURI", "RolloutStarted", "RolloutComplete"} <= reasons(cluster, namespace, "tiny"),
             what="ModelURI, RolloutStarted and RolloutComplete events")

    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    assert 'modelfleet_operator_reconciles_total{kind="ModelDeployment",result="success"}' in text
    assert 'modelfleet_operator_resources{kind="ModelDeployment",phase="Ready"}' in text


def test_scale_subresource(cluster: Any, kube: Kube, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, manifest("scaled", replicas=1))
    wait_ready(kube, namespace, "scaled", 1)
    assert kube.get("PodDisruptionBudget", namespace, "scaled") is None

    cluster.kubectl("scale", "mdep/scaled", "-n", namespace, "--replicas=3")
    st = wait_ready(kube, namespace, "scaled", 3)
    assert kube.get("Deployment", namespace, "scaled")["spec"]["replicas"] == 3
    assert len(live_pods(kube, namespace, "scaled")) == 3
    assert kube.get("PodDisruptionBudget", namespace, "scaled")["spec"]["maxUnavailable"] == 1
    scale = json.loads(cluster.kubectl(
        "get", "--raw", f"/apis/modelfleet.dev/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == st["selector"]
    wait_for(lambda: ("Normal", "Scaled", "scaled from 1 to 3 replicas") in events(cluster, namespace, "scaled"),
             what="Scaled event")

    cluster.kubectl("scale", "mdep/scaled", "-n", namespace, "--replicas=1")
    wait_ready(kube, namespace, "scaled", 1)
    wait_for(lambda: kube.get("PodDisruptionBudget", namespace, "scaled") is None, what="PDB removed at 1 replica")


def test_image_and_model_changes_roll_out(cluster: Any, kube: Kube, operator: Any, namespace: str,
                                          models_pvc: str) -> None:
    apply(cluster, namespace, manifest("roll", replicas=2, image="example.com/runtime:1"))
    wait_ready(kube, namespace, "roll", 2)
    old_pods = {p["metadata"]["name"] for p in live_pods(kube, namespace, "roll")}

    patch_spec(cluster, namespace, "roll", {"image": "example.com/runtime:2"})
    wait_ready(kube, namespace, "roll", 2)
    pods = wait_for(lambda: (ps := live_pods(kube, namespace, "roll")) and len(ps) == 2 and ps,
                    what="two pods after the image rollout")
    assert all(p["spec"]["containers"][0]["image"] == "example.com/runtime:2" for p in pods)
    assert not old_pods & {p["metadata"]["name"] for p in pods}

    patch_spec(cluster, namespace, "roll", {"model": {"uri": "pvc://models/tiny-v2", "digest": DIGEST_2}})
    st = wait_ready(kube, namespace, "roll", 2)
    assert st["model"]["uri"] == "pvc://models/tiny-v2" and st["model"]["digest"] == DIGEST_2

    def rolled() -> list[dict[str, Any]] | None:
        ps = live_pods(kube, namespace, "roll")
        ok = len(ps) == 2 and all(p["metadata"]["annotations"]["modelfleet.dev/model-digest"] == DIGEST_2 for p in ps)
        return ps if ok else None

    for pod in wait_for(rolled, what="pods with the new model"):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MODELFLEET_MODEL"] == "/models/tiny-v2"
    assert "ModelChanged" in reasons(cluster, namespace, "roll")


def test_training_job_reference_waits_resolves_and_follows_new_digests(
        cluster: Any, kube: Kube, operator: Any, namespace: str, models_pvc: str) -> None:
    apply(cluster, namespace, manifest("served", replicas=1, model={"trainingJobRef": {"name": "trainer"}}))
    st = wait_for(lambda: (s := status(kube, namespace, "served")).get("phase") == "Pending" and s,
                  what="Pending while the job does not exist")
    assert condition(st, "ModelResolved") == ("False", "TrainingJobNotFound")
    assert kube.get("Deployment", namespace, "served") is None

    # A job that exists but has not succeeded (suspended, so the TrainingJob controller starts no pods).
    apply(cluster, namespace, {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "trainer"},
        "spec": {"model": {"preset": "tiny"}, "data": {"uri": "pvc://models/corpus.txt"},
                 "training": {"steps": 10, "globalBatchSize": 2}, "output": {"uri": "pvc://models/trained"},
                 "runPolicy": {"suspend": True}},
    })
    wait_for(lambda: condition(status(kube, namespace, "served"), "ModelResolved") ==
             ("False", "TrainingJobNotSucceeded"), what="ModelResolved=False TrainingJobNotSucceeded")
    assert kube.get("Deployment", namespace, "served") is None

    def finish(digest: str) -> None:
        cluster.kubectl("patch", "trainingjob", "trainer", "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"phase": "Succeeded", "outputs": {"model": {
                            "uri": "pvc://models/trained", "digest": digest}}}}))

    finish(DIGEST_1)
    st = wait_ready(kube, namespace, "served", 1)
    assert st["model"] == {"name": "served", "uri": "pvc://models/trained", "digest": DIGEST_1,
                           "trainingJob": "trainer"}
    assert condition(st, "ModelResolved") == ("True", "TrainingJobSucceeded")
    template = kube.get("Deployment", namespace, "served")["spec"]["template"]
    assert template["metadata"]["annotations"]["modelfleet.dev/model-digest"] == DIGEST_1

    finish(DIGEST_2)  # the job's output changed (e.g. it was re-run): roll out the new model
    wait_for(lambda: status(kube, namespace, "served").get("model", {}).get("digest") == DIGEST_2,
             what="status.model.digest follows the job")
    wait_ready(kube, namespace, "served", 1)
    wait_for(lambda: [p for p in live_pods(kube, namespace, "served")
                      if p["metadata"]["annotations"]["modelfleet.dev/model-digest"] == DIGEST_2]
             and len(live_pods(kube, namespace, "served")) == 1, what="the pod runs the new digest")
    assert "ModelChanged" in reasons(cluster, namespace, "served")


def test_replace_policy_rolls_without_surge_when_gpus_are_full(cluster: Any, kube: Kube, operator: Any,
                                                              namespace: str) -> None:
    apply(cluster, namespace, manifest("gpu", replicas=2, image="example.com/runtime:1",
                                       rollout={"whenNoRoom": "Replace"},
                                       resources={"limits": {"nvidia.com/gpu": 4}},
                                       nodeSelector={"nvidia.com/gpu.present": "true"}))
    st = wait_ready(kube, namespace, "gpu", 2)
    assert st["rollout"]["withoutSurge"] is False and st["rollout"]["maxSurge"] == 1  # GPUs are still free

    # Other workloads take every remaining GPU.
    gpu_nodes = kube.list_objects("Node", label_selector="nvidia.com/gpu.present=true")
    free = free_gpus(gpu_nodes, kube.list_objects("Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed"))
    for node, count in free.items():
        if count > 0:
            filler = restricted_pod(f"filler-{node}", limits={"nvidia.com/gpu": str(count)})
            filler["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
            apply(cluster, namespace, filler)
            wait_for(lambda n=node: kube.get("Pod", namespace, f"filler-{n}")["status"].get("phase") == "Running",
                     what=f"filler pod on {node}")

    patch_spec(cluster, namespace, "gpu", {"image": "example.com/runtime:2"})
    st = wait_ready(kube, namespace, "gpu", 2, timeout=90)
    assert st["rollout"]["withoutSurge"] is True
    assert (st["rollout"]["maxSurge"], st["rollout"]["maxUnavailable"]) == (0, 1)
    strategy = kube.get("Deployment", namespace, "gpu")["spec"]["strategy"]["rollingUpdate"]
    assert (strategy["maxSurge"], strategy["maxUnavailable"]) == (0, 1)
    pods = wait_for(lambda: (ps := live_pods(kube, namespace, "gpu")) and len(ps) == 2 and ps, what="2 pods")
    assert all(p["spec"]["containers"][0]["image"] == "example.com/runtime:2" for p in pods)
    assert "RollingWithoutSurge" in reasons(cluster, namespace, "gpu")
    assert "maxSurge 0" in " ".join(c["message"] for c in st["conditions"] if c["type"] == "Progressing")
    assert "whenNoRoom is Replace" in st["rollout"]["message"]


def test_unschedulable_and_crashing_pods_are_reported(cluster: Any, kube: Kube, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, manifest("huge", resources={"limits": {"nvidia.com/gpu": 16}}))
    st = wait_for(lambda: (s := status(kube, namespace, "huge")).get("phase") == "Degraded" and s,
                  what="Degraded for lack of GPUs")
    assert condition(st, "Ready") == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in st["failures"][0]["message"]

    # The runtime dies while loading the model (kwok ends the container as the annotations say).
    apply(cluster, namespace, manifest("crash", podAnnotations={
        "fake.modelfleet.dev/exit-code": "1",
        "fake.modelfleet.dev/message": "loading /models/tiny\ntorch.OutOfMemoryError: CUDA out of memory"}))
    st = wait_for(lambda: (s := status(kube, namespace, "crash")).get("phase") == "Degraded"
                  and condition(s, "Ready")[1] == "ModelLoadFailed" and s, what="ModelLoadFailed")
    failure = st["failures"][0]
    assert failure["exitCode"] == 1 and failure["container"] == "runtime" and failure["node"]
    assert failure["lastLogLines"][-1] == "torch.OutOfMemoryError: CUDA out of memory"
    wait_for(lambda: any(t == "Warning" and r == "ModelLoadFailed" and "CUDA out of memory" in m
                         for t, r, m in events(cluster, namespace, "crash")), what="ModelLoadFailed event")

    patch_spec(cluster, namespace, "crash", {"podAnnotations": None})  # fixed: the next pods load fine
    st = wait_ready(kube, namespace, "crash", 1)
    assert st["failures"] == []


def test_autoscaling_objects_are_accepted(cluster: Any, kube: Kube, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, manifest("auto", autoscaling={"minReplicas": 2, "maxReplicas": 5, "target": 4}))
    wait_ready(kube, namespace, "auto", 2)
    hpa = kube.get("HorizontalPodAutoscaler", namespace, "auto")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "modelfleet.dev/v1alpha1", "kind": KIND, "name": "auto"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert kube.get("PodDisruptionBudget", namespace, "auto") is not None
    # No custom metrics API in this cluster: the status and a Warning say why the autoscaler cannot work.
    scaling = wait_for(lambda: (s := (kube.get(KIND, namespace, "auto").get("status") or {}).get("autoscaling") or {})
                       .get("reason") == "FailedGetPodsMetric" and s, timeout=60, what="status.autoscaling's reason")
    assert "vllm:num_requests_waiting" in scaling["message"] and scaling["target"] == "4", scaling
    wait_for(lambda: any(e[1] == "FailedGetPodsMetric" for e in events(cluster, namespace, "auto")), timeout=30,
             what="a FailedGetPodsMetric Warning")

    fixtures = [str(FIXTURE_CRDS / "keda-scaledobject.yaml"), str(FIXTURE_CRDS / "prometheus-podmonitor.yaml")]
    cluster.kubectl("apply", *[a for f in fixtures for a in ("-f", f)])
    try:
        cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh",
                        "crd/podmonitors.monitoring.coreos.com", "--timeout=30s")
        scaled = wait_for(lambda: kube.get("ScaledObject", namespace, "auto"), what="ScaledObject")
        assert scaled["spec"]["minReplicaCount"] == 2 and scaled["spec"]["maxReplicaCount"] == 5
        assert scaled["spec"]["triggers"][0]["type"] == "prometheus"
        assert scaled["spec"]["scaleTargetRef"]["kind"] == KIND
        monitor = wait_for(lambda: kube.get("PodMonitor", namespace, "auto"), what="PodMonitor")
        assert monitor["spec"]["selector"]["matchLabels"]["modelfleet.dev/modeldeployment"] == "auto"
        wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto") is None,
                 what="the HPA gives way to KEDA")
    finally:
        cluster.kubectl("delete", "--wait=true", *[a for f in fixtures for a in ("-f", f)], check=False)
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", namespace, "auto"), what="the HPA is back without KEDA")


def test_a_deleted_deployment_comes_back_and_deletion_cascades(cluster: Any, kube: Kube, operator: Any,
                                                               namespace: str) -> None:
    apply(cluster, namespace, manifest("gone", replicas=2))
    wait_ready(kube, namespace, "gone", 2)
    uid = kube.get("Deployment", namespace, "gone")["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", "gone", "-n", namespace)
    wait_for(lambda: (kube.get("Deployment", namespace, "gone") or {"metadata": {"uid": uid}})["metadata"]["uid"]
             != uid, what="the Deployment re-created")
    wait_for(lambda: kube.get("Deployment", namespace, "gone")["status"].get("readyReplicas") == 2,
             what="the new Deployment's pods ready")
    wait_ready(kube, namespace, "gone", 2)

    cluster.kubectl("delete", "mdep", "gone", "-n", namespace)
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        wait_for(lambda k=kind: kube.get(k, namespace, "gone") is None, what=f"{kind} garbage-collected")
    wait_for(lambda: not live_pods(kube, namespace, "gone"), what="pods garbage-collected")


def test_operator_restart_is_safe(cluster: Any, kube: Kube, operator: Any, namespace: str) -> None:
    try:
        # Killed before it could see a new ModelDeployment: the restart's initial listing picks it up.
        operator.kill()
        apply(cluster, namespace, manifest("resilient", replicas=3, image="example.com/runtime:1"))
        operator.start()
        wait_ready(kube, namespace, "resilient", 3)

        # Killed in the middle of a rollout, right after it updated the Deployment.
        patch_spec(cluster, namespace, "resilient", {"image": "example.com/runtime:2"})
        wait_for(lambda: kube.get("Deployment", namespace, "resilient")["spec"]["template"]["spec"]["containers"][0]
                 ["image"] == "example.com/runtime:2", what="the operator updated the Deployment")
        operator.kill()
        operator.start()
        st = wait_ready(kube, namespace, "resilient", 3)
    finally:
        if operator.process is None or operator.process.poll() is not None:
            operator.start()
    assert st["updatedReplicas"] == 3
    assert [d["metadata"]["name"] for d in kube.list_objects("Deployment", namespace)] == ["resilient"]
    assert len(kube.list_objects("Service", namespace)) == 1
    pods = wait_for(lambda: (ps := live_pods(kube, namespace, "resilient")) and len(ps) == 3 and ps, what="3 pods")
    assert all(p["spec"]["containers"][0]["image"] == "example.com/runtime:2" for p in pods)
    active = [rs for rs in kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
              if rs["spec"]["replicas"] > 0]
    assert len(active) == 1


def test_s3_model_is_fetched_first_and_the_api_key_stays_secret(cluster: Any, kube: Kube, operator: Any,
                                                                 namespace: str) -> None:
    cluster.kubectl("create", "secret", "generic", "keys", "-n", namespace, "--from-literal=api-key=sk-never-shown")
    apply(cluster, namespace, manifest("s3", apiKeySecretRef={"name": "keys"}, model={
        "uri": "s3://models/tiny", "s3": {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "s3"}}}))
    wait_ready(kube, namespace, "s3", 1)
    pod = live_pods(kube, namespace, "s3")[0]
    fetch = pod["spec"]["initContainers"][0]
    assert fetch["name"] == "model-fetch" and fetch["command"][-2:] == ["s3://models/tiny", "/models"]
    assert pod["spec"]["volumes"][0] == {"name": "model", "emptyDir": {}}
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["MODELFLEET_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "keys", "key": "api-key"}
    for kind in ("Deployment", "Pod"):
        dump = cluster.kubectl("get", kind.lower(), "-n", namespace, "-o", "json").stdout
        assert "sk-never-shown" not in dump


def test_pods_refused_by_pod_security_are_reported(cluster: Any, kube: Kube, operator: Any, namespace: str) -> None:
    # Host paths are for local clusters; this namespace enforces Pod Security "restricted", which forbids them.
    apply(cluster, namespace, manifest("hostpath", model={"uri": "file:///srv/models/tiny"}))
    st = wait_for(lambda: (s := status(kube, namespace, "hostpath")).get("phase") == "Degraded" and s,
                  what="Degraded: pods refused")
    assert condition(st, "Progressing") == ("False", "ReplicaFailure")
    message = next(c["message"] for c in st["conditions"] if c["type"] == "Progressing")
    assert "PodSecurity" in message and "hostPath" in message
    wait_for(lambda: "ReplicaFailure" in reasons(cluster, namespace, "hostpath"), what="ReplicaFailure event")
