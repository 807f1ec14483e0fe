"""The API server's refusal (HTTP 422) of a child object, as a message that names the resource's own field (pure).

Admission refuses what the CRDs' schemas can know; what they cannot (a malformed `affinity`, which is passed
through as is) surfaces only when the operator creates or applies a child. The refusal names the child's field
(`spec.template.spec.affinity...`); users need the field of *their* resource, so the known pod-template paths are
mapped back to the spec fields they are rendered from.
"""

from __future__ import annotations

import json
import re
from typing import Any

UNPROCESSABLE = 422

# Pod (template) field -> the resource's field it comes from; the first match wins.
POD_FIELDS: tuple[tuple[str, str], ...] = (
    ("metadata.annotations", "spec.podAnnotations"),
    ("spec.affinity", "spec.affinity"),
    ("spec.tolerations", "spec.tolerations"),
    ("spec.nodeSelector", "spec.nodeSelector"),
    ("spec.priorityClassName", "spec.priorityClassName"),
    ("spec.imagePullSecrets", "spec.imagePullSecrets"),
    ("spec.volumes", "spec.volumes"),
    ("spec.initContainers", "spec.model.s3"),
    ("spec.containers[0].env", "spec.env"),
    ("spec.containers[0].resources", "spec.resources"),
    ("spec.containers[0].volumeMounts", "spec.volumeMounts"),
    ("spec.containers[0].image", "spec.image"),
)
_PATH = re.compile(r"(?<![\w\]])\.?((?:spec|metadata)(?:\.[A-Za-z0-9_/-]+|\[[^\]\s]*\])*)")
TEMPLATE = "spec.template."


def _body(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    try:
        parsed = json.loads(body or "")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def spec_field(kind: str, paths: list[str]) -> str | None:
    """The resource's field behind the first child path that maps to one (None when none does)."""
    for path in paths:
        path = path.lstrip(".")
        if kind in ("Deployment", "ReplicaSet"):
            if not path.startswith(TEMPLATE):
                continue
            path = path[len(TEMPLATE):]
        elif kind != "Pod":
            continue
        for child, field in POD_FIELDS:
            if path == child or path.startswith(child + ".") or path.startswith(child + "["):
                return field
    return None


def refusal_message(kind: str, name: str, body: Any, fallback: str) -> str:
    """`<field>: the API server refused <Kind> <name>: <its message>`; the field is `spec` when none maps."""
    parsed = _body(body)
    message = str(parsed.get("message") or fallback)
    causes = [str(c.get("field") or "") for c in (parsed.get("details") or {}).get("causes") or [] if isinstance(c, dict)]
    field = spec_field(kind, [c for c in causes if c] + _PATH.findall(message))
    return f"{field or 'spec'}: the API server refused the {kind} {name}: {message}"
