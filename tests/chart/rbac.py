"""Evaluating RBAC rules the way the API server's authorizer does (enough for the chart's rules)."""

from __future__ import annotations

from typing import Any, Iterable

Rule = dict[str, Any]
Permission = tuple[str, str, str]  # (API group, resource or resource/subresource, verb)


def _matches(values: Iterable[str], wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def allows(rules: Iterable[Rule], verb: str, resource: str, group: str = "", name: str | None = None) -> bool:
    """Does any rule grant `verb` on `group`/`resource` (e.g. "pods/log"), for object `name` if given?"""
    for rule in rules:
        if not (_matches(rule.get("apiGroups"), group) and _matches(rule.get("resources"), resource)
                and _matches(rule.get("verbs"), verb)):
            continue
        names = rule.get("resourceNames")
        if not names or (name is not None and name in names):
            return True
    return False


def grants(rules: Iterable[Rule]) -> set[Permission]:
    """Every (group, resource, verb) the rules grant."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule.get("apiGroups") or []
            for resource in rule.get("resources") or []
            for verb in rule.get("verbs") or []}
