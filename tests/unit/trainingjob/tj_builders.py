"""Builders for TrainingJob objects and pods, as the API server would return them."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from modelfleet_operator import labels
from modelfleet_operator.trainingjob import render
from modelfleet_operator.trainingjob.spec import parse_spec

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
UID = "0b7e6a4e-0000-4000-8000-000000000001"


def base_spec() -> dict[str, Any]:
    """A spec with the CRD's defaults applied, as stored by the API server."""
    return {
        "model": {"preset": "tiny"},
        "data": {"uri": "pvc://corpus/books/train.txt", "format": "text", "validationFraction": 0.05},
        "training": {"steps": 100, "globalBatchSize": 8, "sequenceLength": 128, "learningRate": 0.0003, "warmupSteps": 0,
                     "schedule": "cosine", "weightDecay": 0.1, "gradClip": 1.0, "precision": "fp32", "seed": 0},
        "checkpoint": {"every": 100, "keep": 3},
        "output": {"uri": "pvc://models/runs/tiny"},
        "nodes": 2,
        "runPolicy": {"backoffLimit": 3, "suspend": False, "cleanPodPolicy": "Running"},
    }


def make_job(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, name: str = "tj",
             generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": generation, "resourceVersion": "7"},
            "spec": copy.deepcopy(spec or base_spec()), "status": copy.deepcopy(status or {})}


def make_pod(job: dict[str, Any], rank: int, phase: str = "Running", attempt: int = 0, exit_code: int | None = None,
             reason: str | None = None, node: str = "gpu-node-0", finished_at: dt.datetime | None = None,
             unschedulable: str | None = None, deleting: bool = False) -> dict[str, Any]:
    """A pod rendered for `job`, then as kwok and the scheduler would leave it."""
    spec = parse_spec(job["metadata"]["name"], "ns", job["spec"])
    pod = render.pod(spec, job, rank, attempt, "img", "IfNotPresent")
    pod["spec"]["nodeName"] = None if unschedulable else node
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        if finished_at:
            terminated["finishedAt"] = finished_at.isoformat().replace("+00:00", "Z")
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2030-01-01T11:59:00Z"
    pod["status"] = status
    assert pod["metadata"]["labels"][labels.NODE_RANK] == str(rank)
    return pod
