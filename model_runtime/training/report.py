"""Progress reports from your own training code, without modelfleet's trainer (standard library only).

A TrainingJob may run any program. To show its progress in the job's status the way ``modelfleet
train`` does, the program appends JSON lines to the file named by ``MODELFLEET_REPORT_FILE``:

    {"step": 120, "totalSteps": 1000, "loss": 2.31, "metrics": {"valLoss": 2.40, "accuracy": 0.61}}
    {"model": {"path": "/models/out"}}

- a step line: ``step`` (int >= 0, required), ``totalSteps`` (int, optional, once is enough),
  ``loss`` (number, optional) and ``metrics`` (an object of names to numbers, optional;
  ``valLoss``, ``learningRate``, ``tokensPerSecond`` and ``etaSeconds`` also fill the progress report's
  fields of those names);
- a model line, once the model directory is complete: ``path`` and optionally ``digest``
  (``sha256:...``; by default the forwarder takes the sha256 of ``<path>/model.safetensors``).

``modelfleet report-forward -- <your command>`` runs the program with the variable set and passes
each report on to modelfleet's progress reporters (stdout, ``MODELFLEET_PROGRESS_FILE``, the
``MODELFLEET_PROGRESS_CONFIGMAP`` the operator reads). This module writes the lines for you::

    from model_runtime.training import report
    report.step(120, loss=2.31, total_steps=1000, metrics={"valLoss": 2.40})
    report.model("/models/out")

Without ``MODELFLEET_REPORT_FILE`` the calls do nothing, so the same code runs anywhere. Only the
process that should report (rank 0) should call them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

REPORT_FILE_ENV = "MODELFLEET_REPORT_FILE"


def step(step: int, *, loss: float | None = None, total_steps: int | None = None,
         metrics: Mapping[str, float] | None = None) -> None:
    """Report that ``step`` steps are done (non-finite numbers are written as null)."""
    record: dict[str, Any] = {"step": int(step)}
    if total_steps is not None:
        record["totalSteps"] = int(total_steps)
    if loss is not None:
        record["loss"] = _number(loss)
    if metrics:
        record["metrics"] = {str(name): _number(value) for name, value in metrics.items()}
    _append(record)


def model(path: str | os.PathLike[str], *, digest: str | None = None) -> None:
    """Report the finished model directory (write it completely first)."""
    output = {"path": os.fspath(path)}
    if digest is not None:
        output["digest"] = digest
    _append({"model": output})


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _append(record: dict[str, Any]) -> None:
    path = os.environ.get(REPORT_FILE_ENV)
    if not path:
        return
    line = (json.dumps(record, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while line:  # O_APPEND: lines of concurrent writers do not interleave; the reader waits for the newline
            line = line[os.write(fd, line):]
    finally:
        os.close(fd)
