"""The API server's audit log: every request a ServiceAccount makes, at Metadata level (who, verb, resource,
response code; never a request or response body), so tests can prove from the API server's own record which
permissions the operator really uses (tests/chart/test_rbac_audit.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# First matching rule wins: the control plane's own controllers (ServiceAccounts in kube-system, used by
# kube-controller-manager with --use-service-account-credentials) are left out; other ServiceAccounts (the
# operator's, trainer pods') are logged; certificate users (admin, kubelet, scheduler, kwok) are not.
POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def write_policy(path: Path) -> Path:
    path.write_text(json.dumps(POLICY, indent=2))  # the API server reads YAML, of which JSON is a subset
    return path


def apiserver_flags(policy: Path, log: Path) -> list[str]:
    return [f"--audit-policy-file={policy}", f"--audit-log-path={log}", "--audit-log-format=json"]


@dataclass(frozen=True)
class Request:
    """One resource request as the audit log records it (non-resource URLs such as /apis are left out)."""

    verb: str
    group: str
    resource: str  # "pods", or "pods/log" for a subresource
    namespace: str  # "" for cluster-scoped requests and lists across namespaces
    name: str  # "" for lists, watches and creates with generateName
    code: int  # the response status code (0 when the log has none, e.g. a watch still open)
    message: str = ""  # the API server's message when it refused the request
    causes: tuple[str, ...] = ()  # the refusal's details.causes[].reason, e.g. NamespaceTerminating

    @property
    def denied(self) -> bool:
        """Refused by authorization: a 403 that is not about a namespace being deleted (creating anything in one
        is refused with 403 too, whatever the grants)."""
        return self.code == 403 and "NamespaceTerminating" not in self.causes


def requests_of(log: Path, username: str) -> list[Request]:
    """Every resource request `username` (e.g. system:serviceaccount:NS:NAME) made, in log order."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        event = json.loads(line)
        ref = event.get("objectRef")
        if event.get("user", {}).get("username") != username or not ref or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        status = event.get("responseStatus") or {}
        causes = tuple(c.get("reason", "") for c in (status.get("details") or {}).get("causes") or [])
        found.append(Request(event["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace", ""), ref.get("name", ""),
                             int(status.get("code") or 0), status.get("message", ""), causes))
    return found
