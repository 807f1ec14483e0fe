"""What the operator's code calls on the API (read from operator/: kopf watches, the TrainingJob and
ModelDeployment clients) and what it must never be able to do. Both the rendered rules and the real
API server's authorizer (`kubectl auth can-i`) are checked against these tables."""

from __future__ import annotations

# (verb, resource, API group) in a namespace the operator manages.
NEEDED_IN_NAMESPACE: list[tuple[str, str, str]] = [
    *((verb, "trainingjobs", "modelfleet.dev") for verb in ("get", "list", "watch", "patch", "delete")),
    *((verb, "modeldeployments", "modelfleet.dev") for verb in ("get", "list", "watch", "patch")),
    ("patch", "trainingjobs/status", "modelfleet.dev"),
    ("patch", "modeldeployments/status", "modelfleet.dev"),
    *((verb, "pods", "") for verb in ("get", "list", "watch", "create", "delete")),
    ("get", "pods/log", ""),
    *((verb, "services", "") for verb in ("get", "create", "patch", "delete")),
    # get/patch/update: what each job's progress Role grants (RBAC's escalation rule).
    *((verb, "configmaps", "") for verb in ("get", "list", "watch", "create", "patch", "update")),
    # get: an existing child of a job's name is used only if the job owns it (operator/ownership.py).
    *((verb, "serviceaccounts", "") for verb in ("get", "create")),
    *((verb, "roles", "rbac.authorization.k8s.io") for verb in ("get", "create")),
    *((verb, "rolebindings", "rbac.authorization.k8s.io") for verb in ("get", "create")),
    ("create", "events", ""),
    ("create", "events", "events.k8s.io"),
    *((verb, "deployments", "apps") for verb in ("get", "list", "watch", "create", "patch", "delete")),
    # list/watch: the HPA's status changes trigger a reconcile (status.autoscaling).
    *((verb, "horizontalpodautoscalers", "autoscaling") for verb in ("list", "watch")),
    *((verb, resource, group)
      for resource, group in (("poddisruptionbudgets", "policy"), ("horizontalpodautoscalers", "autoscaling"),
                              ("scaledobjects", "keda.sh"), ("podmonitors", "monitoring.coreos.com"))
      for verb in ("get", "create", "patch", "delete")),
]

# Cluster-wide reads: GPU capacity (nodes, pods bound to them) and kopf's CRD observation.
NEEDED_CLUSTER_WIDE: list[tuple[str, str, str]] = [
    ("list", "nodes", ""),
    ("list", "pods", ""),
    *((verb, "customresourcedefinitions", "apiextensions.k8s.io") for verb in ("get", "list", "watch")),
]

# Only in cluster-wide mode: kopf follows namespaces.
NEEDED_CLUSTER_MODE_ONLY: list[tuple[str, str, str]] = [("list", "namespaces", ""), ("watch", "namespaces", "")]

FORBIDDEN_IN_NAMESPACE: list[tuple[str, str, str]] = [
    ("get", "secrets", ""), ("list", "secrets", ""), ("watch", "secrets", ""), ("create", "secrets", ""),
    ("create", "pods/exec", ""), ("create", "pods/portforward", ""), ("patch", "pods/ephemeralcontainers", ""),
    ("create", "serviceaccounts/token", ""),   # would mint tokens of any ServiceAccount
    ("escalate", "roles", "rbac.authorization.k8s.io"), ("bind", "roles", "rbac.authorization.k8s.io"),
    ("create", "persistentvolumeclaims", ""), ("delete", "modeldeployments", "modelfleet.dev"),
    ("create", "trainingjobs", "modelfleet.dev"), ("update", "deployments/scale", "apps"),
]

FORBIDDEN_CLUSTER_WIDE: list[tuple[str, str, str]] = [
    ("delete", "nodes", ""), ("patch", "nodes", ""), ("create", "nodes", ""),
    ("create", "clusterroles", "rbac.authorization.k8s.io"), ("bind", "clusterroles", "rbac.authorization.k8s.io"),
    ("escalate", "clusterroles", "rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
    ("create", "customresourcedefinitions", "apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions", "apiextensions.k8s.io"),
    ("create", "namespaces", ""), ("delete", "namespaces", ""),
    ("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io"),
    ("create", "certificatesigningrequests", "certificates.k8s.io"),
    ("impersonate", "users", ""), ("impersonate", "serviceaccounts", ""),
    ("list", "secrets", ""),
]
