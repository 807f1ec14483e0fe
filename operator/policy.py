"""What a TrainingJob or ModelDeployment may make the operator put into a pod (pure checks; see docs/security.md).

The operator creates pods with its own, broad permissions, so a resource must not be able to obtain through it
what its author could not get directly: the node's filesystem (hostPath), volume plugins that read credentials
from Secrets nobody named, or arbitrary API fields. The CRDs refuse most of this at admission; these checks run
again in the controller (an object stored under an older CRD, a field the schema cannot see) and add what only
the operator knows: whether it was started with host paths allowed.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from modelfleet_operator.config import ALLOW_HOST_PATHS_ENV

# Volume types of user-supplied volumes (spec.volumes), and the sources of a projected volume. A Secret may
# only come in by name, in a field that says so (secret.secretName, a projected secret, env secretKeyRef).
ALLOWED_VOLUME_TYPES = ("persistentVolumeClaim", "configMap", "secret", "emptyDir", "downwardAPI", "projected")
ALLOWED_PROJECTED_SOURCES = ("configMap", "secret", "downwardAPI")
ALLOWED_VALUE_FROM = ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef")
# The other core/v1 volume types: the CRD declares them only to refuse them with a clear message.
FORBIDDEN_VOLUME_TYPES = (
    "hostPath", "nfs", "iscsi", "glusterfs", "rbd", "cephfs", "cinder", "flexVolume", "flocker", "gcePersistentDisk",
    "awsElasticBlockStore", "gitRepo", "azureDisk", "azureFile", "vsphereVolume", "quobyte", "photonPersistentDisk",
    "portworxVolume", "scaleIO", "storageos", "csi", "ephemeral", "fc", "image",
)
FORBIDDEN_PROJECTED_SOURCES = ("serviceAccountToken", "clusterTrustBundle", "podCertificate")


class PolicyError(ValueError):
    """Something the operator refuses to put into a pod; the message starts with the field's path."""


def check_volumes(volumes: Iterable[Mapping[str, Any]], where: str = "spec.volumes") -> None:
    for i, volume in enumerate(volumes):
        kinds = [key for key in volume if key != "name"]
        refused = [key for key in kinds if key not in ALLOWED_VOLUME_TYPES]
        if refused or len(kinds) != 1:
            raise PolicyError(f"{where}[{i}]: {', '.join(refused) or 'the volume type'} is not allowed; a volume "
                              f"must be exactly one of {', '.join(ALLOWED_VOLUME_TYPES)}")
        for j, source in enumerate((volume.get("projected") or {}).get("sources") or []):
            refused = [key for key in source if key not in ALLOWED_PROJECTED_SOURCES]
            if refused or len(source) != 1:
                raise PolicyError(f"{where}[{i}].projected.sources[{j}]: {', '.join(refused) or 'the source'} is not "
                                  f"allowed; a source must be exactly one of {', '.join(ALLOWED_PROJECTED_SOURCES)}")


def check_env(env: Iterable[Mapping[str, Any]], where: str = "spec.env") -> None:
    for i, var in enumerate(env):
        value_from = var.get("valueFrom")
        if value_from is None:
            continue
        refused = [key for key in value_from if key not in ALLOWED_VALUE_FROM]
        if refused or len(value_from) != 1:
            raise PolicyError(f"{where}[{i}].valueFrom: {', '.join(refused) or 'the source'} is not allowed; use "
                              f"exactly one of {', '.join(ALLOWED_VALUE_FROM)}")


def check_host_paths(fields: Iterable[str], allowed: bool) -> None:
    """`fields` name the file:// URIs of a resource (each becomes a hostPath volume)."""
    fields = list(fields)
    if fields and not allowed:
        raise PolicyError(
            f"{fields[0]}: file:// URIs mount a directory of the node (a hostPath volume), which this operator does "
            f"not allow; use pvc://, or have the cluster administrator start the operator with "
            f"{ALLOW_HOST_PATHS_ENV}=true (meant for single-user local clusters)")
