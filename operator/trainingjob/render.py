"""Desired child objects of a TrainingJob, as pure functions of its spec.

A job owns: a headless Service (stable DNS for rank 0), one Pod per node, a ConfigMap with the trainer's
configuration (not for user code), and, for progress reports, a ConfigMap plus a ServiceAccount, Role and
RoleBinding that let the pods patch that one ConfigMap and nothing else.

User code (spec.container) runs in the ``trainer`` container in place of ``modelfleet train``; on rank 0 a
native sidecar (``report-forward``, the operator's trainer image) follows the JSON lines the program appends
to ``MODELFLEET_REPORT_FILE`` and forwards them to the progress ConfigMap, so the program's image needs
nothing from modelfleet.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping

from modelfleet_operator import API_VERSION, labels
from modelfleet_operator.security import container_security_context, pod_security_context
from modelfleet_operator.trainingjob.spec import MASTER_PORT, JobSpec, Location

KIND = "TrainingJob"
CONTAINER = "trainer"
REPORTER = "report-forward"
REPORT_DIR = "/var/run/modelfleet"
REPORT_FILE = f"{REPORT_DIR}/report.jsonl"
CONFIG_DIR = "/etc/modelfleet"
CONFIG_FILE = "trainer.json"
PROGRESS_KEY = "progress"
STORAGE_ROOT = "/mnt/modelfleet"
METRICS_PORT = 9400
ATTEMPT_ANNOTATION = "modelfleet.dev/attempt"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Names:
    """Deterministic names of a job's children."""

    job: str

    @property
    def service(self) -> str:
        """The headless Service: `<job>-nodes`, so it never clashes with a ModelDeployment's `<name>` Service."""
        return f"{self.job}-nodes"

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def progress(self) -> str:
        return f"{self.job}-progress"

    @property
    def service_account(self) -> str:
        return f"{self.job}-trainer"

    @property
    def role(self) -> str:
        return f"{self.job}-progress"

    def pod(self, rank: int) -> str:
        return f"{self.job}-node-{rank}"

    @property
    def master_addr(self) -> str:
        return f"{self.pod(0)}.{self.service}"


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    """The controller reference to the job, so that deleting the job deletes its children."""
    meta = owner["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _meta(name: str, spec: JobSpec, owner: Mapping[str, Any], extra_labels: Mapping[str, str] | None = None) -> Obj:
    return {"name": name, "namespace": spec.namespace,
            "labels": {**labels.trainer_labels(spec.name), **(extra_labels or {})},
            "ownerReferences": [owner_reference(owner)]}


# --- storage: URIs become volumes and paths inside the container -------------------------------------------------

@dataclass(frozen=True)
class Storage:
    volumes: tuple[Obj, ...]
    mounts: tuple[Obj, ...]
    paths: Mapping[str, str]  # URI -> path in the container


def storage(spec: JobSpec) -> Storage:
    """Mount each PVC once (at /mnt/modelfleet/pvc/<claim>) and each host directory once.

    file:// URIs mount the parent directory so the trainer can write a temporary sibling and rename it
    into place. A volume is read-only when only inputs (data, base model) live on it.
    """
    uses = [(loc, writable) for loc, writable in ((spec.data, False), (spec.output, True), (spec.checkpoint, True),
                                                  (spec.base_model, False)) if loc is not None]
    sources: dict[tuple[str, str], bool] = {}  # (scheme, claim or host dir) -> writable
    paths: dict[str, str] = {}
    for loc, writable in uses:
        if loc.scheme == "pvc":
            key, mount_path = ("pvc", loc.source), f"{STORAGE_ROOT}/pvc/{loc.source}"
            paths[loc.uri] = f"{mount_path}/{loc.path}"
        else:
            parent, base = posixpath.split(loc.path)
            key, mount_path = ("file", parent), f"{STORAGE_ROOT}/host{parent.rstrip('/')}"
            paths[loc.uri] = f"{mount_path}/{base}"
        sources[key] = sources.get(key, False) or writable
    volumes, mounts = [], []
    for index, ((scheme, source), writable) in enumerate(sources.items()):
        name = f"modelfleet-storage-{index}"
        if scheme == "pvc":
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": source, "readOnly": not writable}})
            mount_path = f"{STORAGE_ROOT}/pvc/{source}"
        else:
            volumes.append({"name": name, "hostPath": {"path": source, "type": "DirectoryOrCreate" if writable else "Directory"}})
            mount_path = f"{STORAGE_ROOT}/host{source.rstrip('/')}"
        mounts.append({"name": name, "mountPath": mount_path, "readOnly": not writable})
    return Storage(tuple(volumes), tuple(mounts), paths)


def trainer_config(spec: JobSpec, paths: Mapping[str, str] | None = None) -> Obj:
    """The trainer's configuration file: the spec's sections with URIs replaced by paths (by default the
    container's; ``modelfleet train -f`` passes local directories)."""
    assert spec.data is not None and spec.output is not None and spec.checkpoint is not None, "the built-in trainer's spec"
    paths = storage(spec).paths if paths is None else paths
    config: Obj = {}
    if spec.model is not None:
        config["model"] = dict(spec.model)
    if spec.base_model is not None:
        config["baseModel"] = {"path": paths[spec.base_model.uri]}
    config["data"] = {"path": paths[spec.data.uri], **spec.data_options}
    if spec.tokenizer:
        config["tokenizer"] = dict(spec.tokenizer)
    config["training"] = dict(spec.training)
    config["checkpoint"] = {"dir": paths[spec.checkpoint.uri], **spec.checkpoint_options}
    config["output"] = {"path": paths[spec.output.uri]}
    return config


# --- children -----------------------------------------------------------------------------------------------------

def service(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    """Headless, and publishes pods before they are ready: workers must reach rank 0 while it starts."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(Names(spec.name).service, spec, owner),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": labels.trainer_labels(spec.name),
                 "ports": [{"name": "c10d", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}]},
    }


def config_map(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(Names(spec.name).config, spec, owner),
            "data": {CONFIG_FILE: json.dumps(trainer_config(spec), indent=2, sort_keys=True)}}


def progress_config_map(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    """Created empty by the operator; the trainer may only get/patch/update it (it cannot create objects)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(Names(spec.name).progress, spec, owner), "data": {}}


def service_account(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(Names(spec.name).service_account, spec, owner)}


def role(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    names = Names(spec.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(names.role, spec, owner),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.progress],
                   "verbs": ["get", "patch", "update"]}],
    }


def role_binding(spec: JobSpec, owner: Mapping[str, Any]) -> Obj:
    names = Names(spec.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(names.role, spec, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": spec.namespace}],
    }


def supporting_objects(spec: JobSpec, owner: Mapping[str, Any]) -> list[Obj]:
    """Everything but the pods, in the order to create them (the pods need all of these)."""
    config = [] if spec.user_code else [config_map(spec, owner)]
    return [service(spec, owner), *config, progress_config_map(spec, owner),
            service_account(spec, owner), role(spec, owner), role_binding(spec, owner)]


def env(spec: JobSpec, rank: int) -> list[Obj]:
    """torchrun/Kubeflow names (the trainer acts as the per-node launcher), then modelfleet's, then the user's."""
    names = Names(spec.name)
    fixed = {
        "MASTER_ADDR": names.master_addr,
        "MASTER_PORT": str(MASTER_PORT),
        "WORLD_SIZE": str(spec.world_size),
        "RANK": str(rank),
        "NODE_RANK": str(rank),
        "PET_NNODES": str(spec.nodes),
        "PET_NPROC_PER_NODE": str(spec.processes_per_node),
        "PET_NODE_RANK": str(rank),
        "PET_MASTER_ADDR": names.master_addr,
        "PET_MASTER_PORT": str(MASTER_PORT),
    }
    if spec.user_code:
        paths = storage(spec).paths
        fixed["MODELFLEET_REPORT_FILE"] = REPORT_FILE
        for name, loc in (("MODELFLEET_DATA_PATH", spec.data), ("MODELFLEET_OUTPUT_DIR", spec.output),
                          ("MODELFLEET_CHECKPOINT_DIR", spec.checkpoint)):
            if loc is not None:
                fixed[name] = paths[loc.uri]
    else:
        fixed["MODELFLEET_TRAINER_CONFIG"] = f"{CONFIG_DIR}/{CONFIG_FILE}"
        fixed["MODELFLEET_PROGRESS_CONFIGMAP"] = names.progress
    fixed["MODELFLEET_JOB_NAME"] = spec.name
    return ([{"name": k, "value": v} for k, v in fixed.items()]
            + [_NAMESPACE_ENV]
            + [dict(e) for e in spec.env])


_NAMESPACE_ENV: Obj = {"name": "MODELFLEET_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def report_sidecar(spec: JobSpec, image: str, pull_policy: str, mounts: list[Obj]) -> Obj:
    """A native sidecar (an init container that keeps running) forwarding the user code's reports; it sees the
    program's volumes read-only, so it can digest the model directory the program reports."""
    return {
        "name": REPORTER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "restartPolicy": "Always",
        "command": ["modelfleet", "report-forward", "--follow", REPORT_FILE],
        "env": [{"name": "MODELFLEET_PROGRESS_CONFIGMAP", "value": Names(spec.name).progress}, _NAMESPACE_ENV],
        "volumeMounts": [{**m, "readOnly": True} for m in mounts],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }


def pod(spec: JobSpec, owner: Mapping[str, Any], rank: int, attempt: int, image: str, pull_policy: str) -> Obj:
    """The pod of one node rank for one attempt (restartCount); it passes Pod Security "restricted".

    ``image`` is the operator's trainer image: the built-in trainer's (unless spec.image), and the report
    sidecar's for user code."""
    names = Names(spec.name)
    store = storage(spec)
    meta = _meta(names.pod(rank), spec, owner, {labels.NODE_RANK: str(rank)})
    meta["annotations"] = {ATTEMPT_ANNOTATION: str(attempt)}
    if rank == 0 and not spec.user_code:  # only rank 0 serves the trainer's metrics (where no PodMonitor is installed)
        meta["annotations"].update({"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                    "prometheus.io/path": "/metrics"})
    ports = [{"name": "c10d", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    if spec.user_code:
        assert spec.container is not None
        own_mounts = [{"name": "modelfleet-report", "mountPath": REPORT_DIR}]
        own_volumes = [{"name": "modelfleet-report", "emptyDir": {}}]
        program: Obj = {"image": spec.container.image}
        if spec.container.command:
            program["command"] = list(spec.container.command)
        if spec.container.args:
            program["args"] = list(spec.container.args)
        if spec.container.working_dir:
            program["workingDir"] = spec.container.working_dir
    else:
        own_mounts = [{"name": "modelfleet-config", "mountPath": CONFIG_DIR, "readOnly": True}]
        own_volumes = [{"name": "modelfleet-config", "configMap": {"name": names.config}}]
        program = {"image": spec.image or image, "command": ["modelfleet", "train"]}
        ports.append({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})
    mounts = [*own_mounts, {"name": "modelfleet-shm", "mountPath": "/dev/shm"}, *store.mounts, *spec.volume_mounts]
    container: Obj = {
        "name": CONTAINER,
        **program,
        "imagePullPolicy": pull_policy,
        "env": env(spec, rank),
        "ports": ports,
        "volumeMounts": mounts,
        # A failed container's last log lines become its termination message (status.failures[].lastLogLines).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    if spec.resources:
        container["resources"] = spec.resources
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "hostname": names.pod(rank),
        "subdomain": names.service,
        "serviceAccountName": names.service_account,
        "enableServiceLinks": False,  # many jobs per namespace would otherwise flood the env with *_SERVICE_* vars
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [*own_volumes, {"name": "modelfleet-shm", "emptyDir": {"medium": "Memory"}},
                    *store.volumes, *spec.volumes],
    }
    if spec.user_code and rank == 0:
        pod_spec["initContainers"] = [report_sidecar(spec, image, pull_policy, mounts)]
    if spec.run_policy.termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = spec.run_policy.termination_grace_period_seconds
    if spec.node_selector:
        pod_spec["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod_spec["tolerations"] = spec.tolerations
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
