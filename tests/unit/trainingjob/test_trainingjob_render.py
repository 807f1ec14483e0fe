"""Rendering: a job's children as pure functions of its spec."""

from __future__ import annotations

import json

from modelfleet_operator.trainingjob import render
from modelfleet_operator.trainingjob.spec import parse_spec
from tj_builders import UID, base_spec, make_job

OWNER = {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "name": "tj", "uid": UID,
         "controller": True, "blockOwnerDeletion": True}
LABELS = {"app.kubernetes.io/name": "modelfleet-trainer", "app.kubernetes.io/managed-by": "modelfleet",
          "modelfleet.dev/trainingjob": "tj", "modelfleet.dev/role": "trainer"}


def _pod(spec_dict: dict | None = None, rank: int = 1, attempt: int = 2) -> dict:
    job = make_job(spec_dict)
    return render.pod(parse_spec("tj", "ns", job["spec"]), job, rank, attempt, "registry/modelfleet:1", "IfNotPresent")


def test_pod_identity_env_and_command() -> None:
    pod = _pod()
    assert pod["metadata"]["name"] == "tj-node-1"
    assert pod["metadata"]["labels"] == {**LABELS, "modelfleet.dev/node-rank": "1"}
    assert pod["metadata"]["annotations"] == {render.ATTEMPT_ANNOTATION: "2"}
    assert _pod(rank=0)["metadata"]["annotations"] == {render.ATTEMPT_ANNOTATION: "2", "prometheus.io/scrape": "true",
                                                       "prometheus.io/port": "9400", "prometheus.io/path": "/metrics"}
    assert pod["metadata"]["ownerReferences"] == [OWNER]
    spec = pod["spec"]
    assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == ("tj-node-1", "tj-nodes", "Never")
    assert spec["serviceAccountName"] == "tj-trainer"
    (container,) = spec["containers"]
    assert container["command"] == ["modelfleet", "train"]
    assert container["image"] == "registry/modelfleet:1"
    assert container["env"] == [
        {"name": "MASTER_ADDR", "value": "tj-node-0.tj-nodes"}, {"name": "MASTER_PORT", "value": "29500"},
        {"name": "WORLD_SIZE", "value": "2"}, {"name": "RANK", "value": "1"}, {"name": "NODE_RANK", "value": "1"},
        {"name": "PET_NNODES", "value": "2"}, {"name": "PET_NPROC_PER_NODE", "value": "1"},
        {"name": "PET_NODE_RANK", "value": "1"}, {"name": "PET_MASTER_ADDR", "value": "tj-node-0.tj-nodes"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
        {"name": "MODELFLEET_TRAINER_CONFIG", "value": "/etc/modelfleet/trainer.json"},
        {"name": "MODELFLEET_PROGRESS_CONFIGMAP", "value": "tj-progress"},
        {"name": "MODELFLEET_JOB_NAME", "value": "tj"},
        {"name": "MODELFLEET_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def test_pod_passes_pod_security_restricted() -> None:
    pod = _pod()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = pod["spec"]["containers"][0]["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"}}


def test_scheduling_fields_resources_and_user_env_are_passed_through() -> None:
    raw = base_spec() | {
        "nodes": 1, "image": "mine:2", "resources": {"limits": {"nvidia.com/gpu": 8, "memory": "64Gi"}},
        "nodeSelector": {"nvidia.com/gpu.product": "H100"}, "priorityClassName": "training",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"x": 1}}, "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "volumes": [{"name": "scratch", "emptyDir": {}}], "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}
    raw["training"]["globalBatchSize"] = 16
    pod = _pod(raw, rank=0)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"] == "mine:2"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "8", "memory": "64Gi"}}
    assert {"name": "PET_NPROC_PER_NODE", "value": "8"} in container["env"]
    assert {"name": "WORLD_SIZE", "value": "8"} in container["env"]
    assert container["env"][-1] == {"name": "NCCL_DEBUG", "value": "WARN"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and spec["priorityClassName"] == "training"
    assert spec["tolerations"] == raw["tolerations"] and spec["affinity"] == raw["affinity"]
    assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]


def test_storage_mounts_each_claim_once_read_only_for_inputs() -> None:
    raw = base_spec() | {"baseModel": {"uri": "pvc://models/base"}}
    del raw["model"]
    store = render.storage(parse_spec("tj", "ns", raw))
    assert store.volumes == (
        {"name": "modelfleet-storage-0", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}},
        {"name": "modelfleet-storage-1", "persistentVolumeClaim": {"claimName": "models", "readOnly": False}},
    )
    assert store.mounts[0] == {"name": "modelfleet-storage-0", "mountPath": "/mnt/modelfleet/pvc/corpus", "readOnly": True}
    assert store.paths["pvc://models/base"] == "/mnt/modelfleet/pvc/models/base"


def test_file_uris_mount_the_parent_directory_as_host_paths() -> None:
    raw = base_spec()
    raw["data"]["uri"] = "file:///srv/corpus/train.txt"
    raw["output"]["uri"] = "file:///srv/models/tiny"
    store = render.storage(parse_spec("tj", "ns", raw))
    assert store.volumes == (
        {"name": "modelfleet-storage-0", "hostPath": {"path": "/srv/corpus", "type": "Directory"}},
        {"name": "modelfleet-storage-1", "hostPath": {"path": "/srv/models", "type": "DirectoryOrCreate"}},
    )
    assert store.paths == {"file:///srv/corpus/train.txt": "/mnt/modelfleet/host/srv/corpus/train.txt",
                           "file:///srv/models/tiny": "/mnt/modelfleet/host/srv/models/tiny",
                           "file:///srv/models/tiny-checkpoints": "/mnt/modelfleet/host/srv/models/tiny-checkpoints"}


def test_trainer_config_uses_container_paths_and_the_spec_sections() -> None:
    job = make_job()
    config = json.loads(render.config_map(parse_spec("tj", "ns", job["spec"]), job)["data"]["trainer.json"])
    assert config == {
        "model": {"preset": "tiny"},
        "data": {"path": "/mnt/modelfleet/pvc/corpus/books/train.txt", "format": "text", "validationFraction": 0.05},
        "training": job["spec"]["training"],
        "checkpoint": {"dir": "/mnt/modelfleet/pvc/models/runs/tiny-checkpoints", "every": 100, "keep": 3},
        "output": {"path": "/mnt/modelfleet/pvc/models/runs/tiny"},
    }


def test_trainer_config_is_accepted_by_the_trainer() -> None:
    """The rendered file must parse with the trainer's own configuration model (no unknown keys)."""
    from model_runtime.training.config import TrainerConfig

    raw = base_spec()
    raw["tokenizer"] = {"type": "bpe", "vocabSize": 512}
    raw["training"].update(microBatchSize=2, evalEvery=10, logEvery=5, minLearningRateRatio=0.0)
    raw["model"] = {"preset": "tiny", "layers": 3, "kvHeads": 4, "ropeTheta": 500000.0}
    job = make_job(raw)
    config = render.trainer_config(parse_spec("tj", "ns", job["spec"]))
    parsed = TrainerConfig.model_validate(config)
    assert parsed.training.micro_batch_size == 2 and parsed.tokenizer.vocab_size == 512
    assert parsed.checkpoint.dir.endswith("tiny-checkpoints")


def test_service_is_headless_and_publishes_not_ready_pods() -> None:
    job = make_job()
    service = render.service(parse_spec("tj", "ns", job["spec"]), job)
    assert service["metadata"]["name"] == "tj-nodes"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == LABELS


def test_progress_rbac_allows_only_the_jobs_own_config_map() -> None:
    job = make_job()
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render.supporting_objects(parse_spec("tj", "ns", job["spec"]), job)}
    assert set(objs) == {("Service", "tj-nodes"), ("ConfigMap", "tj-config"), ("ConfigMap", "tj-progress"),
                         ("ServiceAccount", "tj-trainer"), ("Role", "tj-progress"), ("RoleBinding", "tj-progress")}
    assert objs[("Role", "tj-progress")]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tj-progress"], "verbs": ["get", "patch", "update"]}]
    binding = objs[("RoleBinding", "tj-progress")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tj-trainer", "namespace": "ns"}]
    assert binding["roleRef"]["name"] == "tj-progress"
    assert all(o["metadata"]["ownerReferences"] == [OWNER] for o in objs.values())
