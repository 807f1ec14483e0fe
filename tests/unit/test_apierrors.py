"""A child refused by the API server (422) is reported under the resource's own field."""

from __future__ import annotations

import json

import pytest

from modelfleet_operator.apierrors import refusal_message, spec_field

AFFINITY = ("spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].operator")


@pytest.mark.parametrize("kind, path, field", [
    ("Deployment", AFFINITY, "spec.affinity"),
    ("Deployment", ".spec.template.metadata.annotations", "spec.podAnnotations"),
    ("Deployment", "spec.template.spec.containers[0].env[3].valueFrom", "spec.env"),
    ("Deployment", "spec.template.spec.initContainers[0].image", "spec.model.s3"),
    ("Pod", "spec.containers[0].resources.limits[nvidia.com/gpu]", "spec.resources"),
    ("Pod", "spec.volumes[1].configMap.items[0].path", "spec.volumes"),
    ("Pod", "spec.containers[0].volumeMounts[0].mountPath", "spec.volumeMounts"),
    ("Pod", "spec.tolerations[0].effect", "spec.tolerations"),
    ("Service", "spec.ports[0].name", None),
    ("Deployment", "spec.replicas", None),
])
def test_child_paths_map_to_spec_fields(kind: str, path: str, field: str | None) -> None:
    assert spec_field(kind, [path]) == field


def test_message_names_the_field_and_keeps_the_api_servers_words() -> None:
    body = {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
            "message": f'Deployment.apps "chat" is invalid: {AFFINITY}: Unsupported value: "Bogus"',
            "details": {"causes": [{"reason": "FieldValueNotSupported", "field": AFFINITY}]}}
    message = refusal_message("Deployment", "chat", json.dumps(body), "Unprocessable Entity")
    assert message == (f'spec.affinity: the API server refused the Deployment chat: Deployment.apps "chat" is '
                       f'invalid: {AFFINITY}: Unsupported value: "Bogus"')


def test_paths_are_found_in_the_message_when_there_are_no_causes() -> None:
    text = ('failed to create typed patch object (ns/chat; apps/v1, Kind=Deployment): '
            '.spec.template.spec.affinity.nodeAffinity.bogus: field not declared in schema')
    assert refusal_message("Deployment", "chat", json.dumps({"message": text}), "x").startswith("spec.affinity: ")
    assert refusal_message("Pod", "p", "not json", "Unprocessable Entity") == (
        "spec: the API server refused the Pod p: Unprocessable Entity")
