"""The ModelDeployment controller: pure spec parsing, rendering and status (spec, resolve, capacity, render,
status), one level-triggered reconcile (reconcile, over the kube client) and thin kopf handlers (handlers)."""

from modelfleet_operator.modeldeployment import handlers  # noqa: F401  (registers the kopf handlers)
