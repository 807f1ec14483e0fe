"""What the operator uses on the API and what it must never be able to do. The needs are what
test_rbac_audit.py collects from the API server's audit log (it fails when they drift apart from the chart);
these tables check the rendered rules, watchNamespaces' Roles, and the real API server's authorizer
(`kubectl auth can-i`) of an installed release."""

from __future__ import annotations

# (verb, resource, API group) in a namespace the operator manages.
NEEDED_IN_NAMESPACE: list[tuple[str, str, str]] = [
    *((verb, "trainingjobs", "modelfleet.dev") for verb in ("get", "list", "watch", "delete")),
    *((verb, "modeldeployments", "modelfleet.dev") for verb in ("get", "list", "watch")),
    ("patch", "trainingjobs/status", "modelfleet.dev"),
    ("patch", "modeldeployments/status", "modelfleet.dev"),
    # blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement).
    ("update", "trainingjobs/finalizers", "modelfleet.dev"),
    ("update", "modeldeployments/finalizers", "modelfleet.dev"),
    *((verb, "pods", "") for verb in ("list", "watch", "create", "delete")),
    ("get", "pods/log", ""),
    *((verb, "services", "") for verb in ("get", "create", "patch")),
    # get/patch/update: what each job's progress Role grants (RBAC's escalation rule).
    *((verb, "configmaps", "") for verb in ("get", "list", "watch", "create", "patch", "update")),
    # get: an existing child of a job's name is used only if the job owns it (operator/ownership.py).
    *((verb, "serviceaccounts", "") for verb in ("get", "create")),
    *((verb, "roles", "rbac.authorization.k8s.io") for verb in ("get", "create")),
    *((verb, "rolebindings", "rbac.authorization.k8s.io") for verb in ("get", "create")),
    # Kueue: each queued TrainingJob's Workload (operator/trainingjob/admission.py), watched by kopf.
    *((verb, "workloads", "kueue.x-k8s.io") for verb in ("get", "list", "watch", "create")),
    ("patch", "workloads/status", "kueue.x-k8s.io"),
    ("create", "events", ""),
    *((verb, "deployments", "apps") for verb in ("get", "list", "watch", "create", "patch")),
    # list/watch: the HPA's status changes trigger a reconcile (status.autoscaling).
    *((verb, "horizontalpodautoscalers", "autoscaling") for verb in ("list", "watch")),
    *((verb, resource, group)
      for resource, group in (("poddisruptionbudgets", "policy"), ("horizontalpodautoscalers", "autoscaling"),
                              ("scaledobjects", "keda.sh"))
      for verb in ("get", "create", "patch", "delete")),
    *((verb, "podmonitors", "monitoring.coreos.com") for verb in ("get", "create", "patch")),
]

# Cluster-wide reads: GPU capacity (nodes, pods bound to them) and kopf's CRD observation.
NEEDED_CLUSTER_WIDE: list[tuple[str, str, str]] = [
    ("list", "nodes", ""),
    ("list", "pods", ""),
    *((verb, "customresourcedefinitions", "apiextensions.k8s.io") for verb in ("get", "list", "watch")),
    ("get", "resourceflavors", "kueue.x-k8s.io"),  # an admitted Workload's flavors: node labels, tolerations
]

# Only with watchNamespaces: kopf lists and watches namespaces to follow the listed ones.
NEEDED_WATCH_NAMESPACES_ONLY: list[tuple[str, str, str]] = [("list", "namespaces", ""), ("watch", "namespaces", "")]

FORBIDDEN_IN_NAMESPACE: list[tuple[str, str, str]] = [
    ("get", "secrets", ""), ("list", "secrets", ""), ("watch", "secrets", ""), ("create", "secrets", ""),
    ("create", "pods/exec", ""), ("create", "pods/portforward", ""), ("patch", "pods/ephemeralcontainers", ""),
    ("create", "serviceaccounts/token", ""),   # would mint tokens of any ServiceAccount
    ("escalate", "roles", "rbac.authorization.k8s.io"), ("bind", "roles", "rbac.authorization.k8s.io"),
    ("create", "persistentvolumeclaims", ""), ("delete", "modeldeployments", "modelfleet.dev"),
    ("patch", "trainingjobs", "modelfleet.dev"), ("update", "modeldeployments", "modelfleet.dev"),  # specs are the user's
    ("create", "trainingjobs", "modelfleet.dev"), ("update", "deployments/scale", "apps"),
    ("update", "workloads", "kueue.x-k8s.io"), ("delete", "workloads", "kueue.x-k8s.io"),  # Kueue's, not ours
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
