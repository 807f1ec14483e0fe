"""Kubernetes-style status conditions, as pure functions over plain lists of dicts."""

from __future__ import annotations

import datetime as dt
from typing import Any

Condition = dict[str, Any]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """Return conditions with `type_` set. lastTransitionTime changes only when the status flips."""
    status_text = "True" if status else "False"
    result: list[Condition] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") if cond.get("status") == status_text else None
        result.append(_condition(type_, status_text, reason, message, generation, transition or now or now_iso()))
    if not found:
        result.append(_condition(type_, status_text, reason, message, generation, now or now_iso()))
    return result


def get_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def _condition(type_: str, status: str, reason: str, message: str, generation: int | None, when: str) -> Condition:
    cond: Condition = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": when}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
