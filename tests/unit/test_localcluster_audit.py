"""Reading the local API server's audit log (modelfleet/localcluster/audit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from modelfleet.localcluster.audit import Request, requests_of

OPERATOR = "system:serviceaccount:ops:mf-modelfleet"


def event(username: str, verb: str, ref: dict | None, code: int | None = 200, stage: str = "ResponseComplete",
          message: str | None = None) -> str:
    entry = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": stage, "verb": verb,
             "user": {"username": username, "groups": ["system:serviceaccounts"]}}
    if ref is not None:
        entry["objectRef"] = ref
    if code is not None:
        entry["responseStatus"] = {"metadata": {}, "code": code, **({"message": message} if message else {})}
    return json.dumps(entry)


def test_requests_of_one_user_with_subresources_and_codes(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("\n".join([
        event(OPERATOR, "get", None),  # a non-resource URL (/apis): no objectRef
        event(OPERATOR, "list", {"resource": "nodes", "apiVersion": "v1"}),
        event(OPERATOR, "get", {"resource": "pods", "subresource": "log", "namespace": "a", "name": "p", "apiVersion": "v1"}),
        event(OPERATOR, "patch", {"resource": "deployments", "apiGroup": "apps", "namespace": "a", "name": "d"}, 201),
        event(OPERATOR, "watch", {"resource": "trainingjobs", "apiGroup": "modelfleet.dev"}, None, "ResponseStarted"),
        event(OPERATOR, "create", {"resource": "secrets", "namespace": "a"}, 403, message="secrets is forbidden"),
        event("system:serviceaccount:a:other", "delete", {"resource": "pods", "namespace": "a", "name": "p"}),
    ]) + "\n")
    assert requests_of(log, OPERATOR) == [
        Request("list", "", "nodes", "", "", 200, ""),
        Request("get", "", "pods/log", "a", "p", 200),
        Request("patch", "apps", "deployments", "a", "d", 201),
        Request("watch", "modelfleet.dev", "trainingjobs", "", "", 0),
        Request("create", "", "secrets", "a", "", 403, "secrets is forbidden"),
    ]


def test_a_create_in_a_namespace_being_deleted_is_not_an_authorization_denial(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    terminating = json.loads(event(OPERATOR, "create", {"resource": "events", "namespace": "gone"}, 403,
                                   message="unable to create new content in namespace gone because it is being terminated"))
    terminating["responseStatus"]["details"] = {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]}
    log.write_text("\n".join([json.dumps(terminating),
                              event(OPERATOR, "create", {"resource": "secrets", "namespace": "a"}, 403)]) + "\n")
    gone, secrets = requests_of(log, OPERATOR)
    assert gone.causes == ("NamespaceTerminating",) and not gone.denied
    assert secrets.denied
