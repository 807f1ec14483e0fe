"""The TrainingJob spec as a typed, validated value (pure code, no API calls).

The CRD's schema and CEL rules reject most bad specs at admission; this module checks again what the
controller depends on (so an object stored under an older CRD cannot crash it) plus what admission
cannot know, such as which URI schemes this operator can mount. Errors name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from modelfleet_operator import policy

GPU_RESOURCE = "nvidia.com/gpu"
MASTER_PORT = 29500

# Set by the operator on every trainer pod; the CRD's CEL rule for spec.env lists the same names.
RESERVED_ENV = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
    "MODELFLEET_TRAINER_CONFIG", "MODELFLEET_PROGRESS_CONFIGMAP", "MODELFLEET_JOB_NAME", "MODELFLEET_NAMESPACE",
    "MODELFLEET_REPORT_FILE", "MODELFLEET_DATA_PATH", "MODELFLEET_OUTPUT_DIR", "MODELFLEET_CHECKPOINT_DIR",
})
RESERVED_ENV_PREFIX = "PET_"
CLEAN_POD_POLICIES = ("None", "Running", "All")

_CLAIM = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    """A spec the controller cannot run; the message starts with the field's path."""


@dataclass(frozen=True)
class Location:
    """A parsed model/data URI: a PVC (claim + path inside it) or a host path (file://)."""

    uri: str
    scheme: Literal["pvc", "file"]
    source: str  # the claim name, or "" for file://
    path: str  # path inside the claim, or the absolute host path


@dataclass(frozen=True)
class RunPolicy:
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False
    clean_pod_policy: str = "Running"
    termination_grace_period_seconds: int | None = None
    progress_deadline_seconds: int | None = None


@dataclass(frozen=True)
class UserContainer:
    """spec.container: the user's own training program, run instead of the built-in trainer."""

    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    working_dir: str | None


@dataclass(frozen=True)
class JobSpec:
    """Everything the renderer and the state machine need from a TrainingJob."""

    name: str
    namespace: str
    nodes: int
    processes_per_node: int
    image: str | None
    data: Location | None  # None only for user code (spec.container) without spec.data
    output: Location | None  # likewise
    checkpoint: Location | None  # likewise (defaults to the output's sibling when there is an output)
    base_model: Location | None
    # Trainer sections passed through to its configuration (URIs excluded).
    model: dict[str, Any] | None
    data_options: dict[str, Any]
    tokenizer: dict[str, Any]
    training: dict[str, Any]
    checkpoint_options: dict[str, Any]
    resources: dict[str, Any]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    affinity: dict[str, Any] | None
    priority_class_name: str | None
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    volume_mounts: list[dict[str, Any]]
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    container: UserContainer | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def user_code(self) -> bool:
        return self.container is not None


def parse_uri(uri: Any, where: str) -> Location:
    """pvc://<claim>/<path> or file:///<absolute path>; s3:// is recognised but not supported yet."""
    if not isinstance(uri, str) or not uri:
        raise SpecError(f"{where}: must be a URI string")
    if ".." in uri.split("/"):
        raise SpecError(f"{where}: must not contain '..' ({uri})")
    if uri.startswith("s3://"):
        raise SpecError(f"{where}: s3:// URIs are not supported yet (no object store is configured); use pvc:// or file://")
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://"):].partition("/")
        path = path.strip("/")
        if not _CLAIM.match(claim) or not path:
            raise SpecError(f"{where}: must be pvc://<claim>/<path> ({uri})")
        return Location(uri, "pvc", claim, path)
    if uri.startswith("file:///"):
        path = "/" + uri[len("file:///"):].strip("/")
        if path == "/":
            raise SpecError(f"{where}: must be file:///<absolute path> ({uri})")
        return Location(uri, "file", "", path)
    raise SpecError(f"{where}: must be pvc://<claim>/<path> or file:///<absolute path> ({uri})")


def gpus_per_node(resources: Mapping[str, Any]) -> int:
    value = (resources.get("limits") or {}).get(GPU_RESOURCE, 0)
    try:
        return int(str(value))
    except ValueError:
        raise SpecError(f"spec.resources.limits[{GPU_RESOURCE}]: must be a whole number of GPUs ({value!r})") from None


def parse_container(raw: Any) -> UserContainer:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("image"), str) or not raw["image"].strip():
        raise SpecError("spec.container.image: is required (the image of your training program)")
    lists = {}
    for key in ("command", "args"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"spec.container.{key}: must be a list of strings")
        lists[key] = tuple(value)
    working_dir = raw.get("workingDir") or None
    if working_dir is not None and not str(working_dir).startswith("/"):
        raise SpecError(f"spec.container.workingDir: must be an absolute path ({working_dir})")
    return UserContainer(raw["image"], lists["command"], lists["args"], working_dir)


# The built-in trainer's sections, which mean nothing to user code.
TRAINER_ONLY = ("model", "baseModel", "tokenizer", "training")


def parse_spec(name: str, namespace: str, spec: Mapping[str, Any]) -> JobSpec:
    """Validate and normalise a TrainingJob's spec (as stored: schema defaults already applied)."""
    container = parse_container(spec["container"]) if spec.get("container") is not None else None
    if container is not None:
        extra = [key for key in TRAINER_ONLY if spec.get(key)] + (["image"] if spec.get("image") else [])
        if extra:
            raise SpecError(f"spec.{extra[0]}: applies only to the built-in trainer; with spec.container your program "
                            "decides what to train (set the image in spec.container.image)")
    else:
        has_model, has_base = bool(spec.get("model")), bool(spec.get("baseModel"))
        if has_model == has_base:
            raise SpecError("spec.model: set exactly one of spec.model and spec.baseModel (or run your own code with "
                            "spec.container)")
        for key in ("data", "training", "output"):
            if not isinstance(spec.get(key), Mapping):
                raise SpecError(f"spec.{key}: is required (unless spec.container runs your own code)")

    # Quantities may be written as numbers (nvidia.com/gpu: 8); the API's schema for pods wants strings.
    resources = {kind: {name: str(value) for name, value in (values or {}).items()}
                 for kind, values in (spec.get("resources") or {}).items()}
    gpus = gpus_per_node(resources)
    nodes = int(spec.get("nodes", 1))
    ppn = int(spec.get("processesPerNode") or gpus or 1)
    if nodes < 1:
        raise SpecError("spec.nodes: must be at least 1")

    training = dict(spec.get("training") or {})
    if container is None:
        global_batch = int(training.get("globalBatchSize", 0))
        micro = int(training.get("microBatchSize") or 1)
        if global_batch < 1 or global_batch % (nodes * ppn * micro):
            raise SpecError(
                "spec.training.globalBatchSize: must be divisible by nodes x processesPerNode x training.microBatchSize "
                f"(= {nodes * ppn * micro}), got {global_batch}"
            )

    env = [dict(e) for e in spec.get("env") or []]
    reserved = sorted(e["name"] for e in env if e.get("name") in RESERVED_ENV or str(e.get("name")).startswith(RESERVED_ENV_PREFIX))
    if reserved:
        raise SpecError(f"spec.env: {', '.join(reserved)} is reserved: the operator sets it")

    data = dict(spec.get("data") or {})
    data_uri = data.pop("uri", None)
    output = parse_uri(spec["output"].get("uri"), "spec.output.uri") if spec.get("output") else None
    checkpoint = dict(spec.get("checkpoint") or {})
    checkpoint_uri = checkpoint.pop("uri", None) or (output.uri.rstrip("/") + "-checkpoints" if output else None)

    policy = dict(spec.get("runPolicy") or {})
    clean = policy.get("cleanPodPolicy", "Running")
    if clean not in CLEAN_POD_POLICIES:
        raise SpecError(f"spec.runPolicy.cleanPodPolicy: must be one of {', '.join(CLEAN_POD_POLICIES)}")
    for key, least in (("terminationGracePeriodSeconds", 0), ("progressDeadlineSeconds", 1)):
        value = policy.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise SpecError(f"spec.runPolicy.{key}: must be a whole number of seconds, at least {least} ({value!r})")

    return JobSpec(
        name=name,
        namespace=namespace,
        nodes=nodes,
        processes_per_node=ppn,
        image=spec.get("image") or None,
        data=parse_uri(data_uri, "spec.data.uri") if (container is None or data_uri) else None,
        output=output,
        checkpoint=parse_uri(checkpoint_uri, "spec.checkpoint.uri") if checkpoint_uri else None,
        base_model=parse_uri(spec["baseModel"].get("uri"), "spec.baseModel.uri") if spec.get("baseModel") else None,
        model=dict(spec["model"]) if spec.get("model") else None,
        data_options=data,
        tokenizer=dict(spec.get("tokenizer") or {}),
        training=training,
        checkpoint_options=checkpoint,
        resources=resources,
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=[dict(t) for t in spec.get("tolerations") or []],
        affinity=dict(spec["affinity"]) if spec.get("affinity") else None,
        priority_class_name=spec.get("priorityClassName") or None,
        env=env,
        volumes=[dict(v) for v in spec.get("volumes") or []],
        volume_mounts=[dict(m) for m in spec.get("volumeMounts") or []],
        run_policy=RunPolicy(
            backoff_limit=int(policy.get("backoffLimit", 3)),
            active_deadline_seconds=policy.get("activeDeadlineSeconds"),
            ttl_seconds_after_finished=policy.get("ttlSecondsAfterFinished"),
            suspend=bool(policy.get("suspend", False)),
            clean_pod_policy=clean,
            termination_grace_period_seconds=policy.get("terminationGracePeriodSeconds"),
            progress_deadline_seconds=policy.get("progressDeadlineSeconds"),
        ),
        container=container,
    )


def host_path_fields(spec: JobSpec) -> list[str]:
    """The fields whose file:// URIs become hostPath volumes."""
    locations = {"spec.data.uri": spec.data, "spec.output.uri": spec.output, "spec.checkpoint.uri": spec.checkpoint,
                 "spec.baseModel.uri": spec.base_model}
    return [where for where, loc in locations.items() if loc is not None and loc.scheme == "file"]


def check_policy(spec: JobSpec, allow_host_paths: bool) -> None:
    """What the pods may be given (docs/security.md); raises policy.PolicyError naming the field."""
    policy.check_host_paths(host_path_fields(spec), allow_host_paths)
    policy.check_volumes(spec.volumes)
    policy.check_env(spec.env)
