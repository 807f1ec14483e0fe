"""What a resource may make the operator put into a pod: volume types, env sources, host paths."""

from __future__ import annotations

import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.policy import PolicyError, check_env, check_host_paths, check_volumes

ALLOWED_VOLUMES = [
    {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
    {"name": "b", "configMap": {"name": "settings"}},
    {"name": "c", "secret": {"secretName": "named-here"}},
    {"name": "d", "emptyDir": {}},
    {"name": "e", "downwardAPI": {"items": []}},
    {"name": "f", "projected": {"sources": [{"configMap": {"name": "x"}}, {"secret": {"name": "y"}},
                                            {"downwardAPI": {"items": []}}]}},
]


def test_allowed_volumes_pass() -> None:
    check_volumes(ALLOWED_VOLUMES)


@pytest.mark.parametrize("volume, message", [
    ({"name": "x", "hostPath": {"path": "/"}}, r"^spec\.volumes\[0\]: hostPath is not allowed"),
    ({"name": "x", "csi": {"driver": "secrets-store"}}, r"^spec\.volumes\[0\]: csi is not allowed"),
    ({"name": "x", "cephfs": {"secretRef": {"name": "admin"}}}, r"^spec\.volumes\[0\]: cephfs is not allowed"),
    ({"name": "x", "emptyDir": {}, "hostPath": {"path": "/"}}, r"^spec\.volumes\[0\]: hostPath is not allowed"),
    ({"name": "x"}, r"^spec\.volumes\[0\]: the volume type is not allowed; a volume must be exactly one of"),
    ({"name": "x", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault"}}]}},
     r"^spec\.volumes\[0\]\.projected\.sources\[0\]: serviceAccountToken is not allowed"),
])
def test_refused_volumes_name_the_field(volume: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        check_volumes([volume])


def test_env_sources() -> None:
    check_env([{"name": "A", "value": "1"}, {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
               {"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
    with pytest.raises(PolicyError, match=r"^spec\.env\[1\]\.valueFrom: fileKeyRef is not allowed"):
        check_env([{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fileKeyRef": {"path": "/etc/shadow"}}}])


def test_host_paths_need_the_operator_flag() -> None:
    check_host_paths([], allowed=False)
    check_host_paths(["spec.data.uri"], allowed=True)
    with pytest.raises(PolicyError, match=r"^spec\.data\.uri: file:// URIs mount a directory of the node .* "
                                          r"MODELFLEET_ALLOW_HOST_PATHS=true"):
        check_host_paths(["spec.data.uri", "spec.output.uri"], allowed=False)


def test_the_flag_is_off_by_default_and_strict() -> None:
    assert OperatorConfig.from_env({}).allow_host_paths is False
    assert OperatorConfig.from_env({"MODELFLEET_ALLOW_HOST_PATHS": "True"}).allow_host_paths is True
    assert OperatorConfig.from_env({"MODELFLEET_ALLOW_HOST_PATHS": "false"}).allow_host_paths is False
    with pytest.raises(ValueError, match="MODELFLEET_ALLOW_HOST_PATHS: must be true or false"):
        OperatorConfig.from_env({"MODELFLEET_ALLOW_HOST_PATHS": "yes"})
