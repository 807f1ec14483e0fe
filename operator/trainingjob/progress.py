"""The trainer's progress report (a JSON string in the ``<job>-progress`` ConfigMap) -> ``status.progress``.

The report comes from inside the job's pods, so it is untrusted: only known keys with the right types
are copied, strings are bounded, and anything malformed is ignored rather than failing a reconcile.
"""

from __future__ import annotations

import json
import math
from typing import Any

_NUMBERS = ("loss", "valLoss", "learningRate", "tokensPerSecond", "etaSeconds")
_INTEGERS = ("step", "totalSteps", "checkpointStep")
_STRINGS = ("phase", "updatedAt")
_MAX_TEXT = 64
_MAX_DIGEST = 128
MAX_REPORT_BYTES = 16384

SUCCEEDED = "Succeeded"


def parse_report(text: str | None) -> dict[str, Any] | None:
    """status.progress for a report, or None when there is none or it is not a JSON object."""
    if not text or len(text) > MAX_REPORT_BYTES:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    result: dict[str, Any] = {}
    for key in _INTEGERS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            result[key] = value
    for key in _NUMBERS:
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            result[key] = float(value)
    for key in _STRINGS:
        value = raw.get(key)
        if isinstance(value, str):
            result[key] = value[:_MAX_TEXT]
    if "step" in result and "totalSteps" in result:
        result["stepOfTotal"] = f"{result['step']}/{result['totalSteps']}"
    if "loss" in result:  # kubectl's printer columns cannot format numbers
        result["lossDisplay"] = f"{result['loss']:.3f}"
    digest = output_digest(raw)
    if digest:
        result["outputDigest"] = digest
    return result or None


def output_digest(raw: dict[str, Any]) -> str | None:
    output = raw.get("output")
    digest = output.get("digest") if isinstance(output, dict) else None
    return digest[:_MAX_DIGEST] if isinstance(digest, str) and digest else None


def final_digest(progress: dict[str, Any] | None) -> str | None:
    """The model's digest once the trainer has reported success, else None."""
    if progress and progress.get("phase") == SUCCEEDED:
        return progress.get("outputDigest")
    return None
