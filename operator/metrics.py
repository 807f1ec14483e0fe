"""The operator's Prometheus metrics (``modelfleet_operator_*``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "modelfleet_operator_reconciles", "Reconciles by kind and result (success, error, retry).", ["kind", "result"]
)
RECONCILE_DURATION = Histogram(
    "modelfleet_operator_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESOURCES = Gauge("modelfleet_operator_resources", "Custom resources by kind and phase.", ["kind", "phase"])
PODS_CREATED = Counter("modelfleet_operator_pods_created", "Pods created by the operator.", ["kind"])
RESTARTS = Counter("modelfleet_operator_restarts", "Gang restarts of training jobs by reason.", ["reason"])
LEADER = Gauge("modelfleet_operator_leader", "1 while this replica holds the leader Lease (and runs the controllers).")


@contextmanager
def reconcile(kind: str) -> Iterator[None]:
    """Count and time one reconcile; an exception counts as an error and propagates."""
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "success").inc()
    finally:
        RECONCILE_DURATION.labels(kind).observe(time.perf_counter() - start)
