"""Every watch of children is filtered by the API server: kopf's `labels=` filters on the handlers are applied
only after every object of the kind has been received, so operator/main.py sets server-side selectors."""

from __future__ import annotations

import kopf
from kopf._cogs.structs import references

from modelfleet_operator import GROUP, labels, main

OWN_KINDS = {GROUP, "apiextensions.k8s.io"}  # the operator's own resources, and CRDs (a handful per cluster)


def selector_for(settings: kopf.OperatorSettings, group: str, version: str, plural: str) -> list[str]:
    return settings.watching.label_selectors.collect(references.Resource(group=group, version=version, plural=plural))


def test_every_watched_child_kind_has_a_server_side_selector() -> None:
    settings = kopf.OperatorSettings()
    main.configure(settings=settings)
    children = {(h.selector.group, h.selector.version, h.selector.any_name)
                for h in kopf.get_default_registry()._watching.get_all_handlers()
                if h.selector.group not in OWN_KINDS}
    assert children == {("", "v1", "pods"), ("", "v1", "configmaps"), ("apps", "v1", "deployments"),
                        ("autoscaling", "v2", "horizontalpodautoscalers"), ("kueue.x-k8s.io", "v1beta2", "workloads")}
    for group, version, plural in children:
        assert selector_for(settings, group, version, plural) == [main.CHILD_SELECTORS[(group or version, plural)]]


def test_the_selectors_match_what_the_controllers_label_their_children() -> None:
    settings = kopf.OperatorSettings()
    main.configure(settings=settings)
    assert selector_for(settings, "", "v1", "pods") == ["app.kubernetes.io/managed-by=modelfleet"]
    assert selector_for(settings, "", "v1", "configmaps") == [
        "app.kubernetes.io/managed-by=modelfleet,modelfleet.dev/trainingjob"]
    assert selector_for(settings, "apps", "v1", "deployments") == [
        "app.kubernetes.io/managed-by=modelfleet,modelfleet.dev/modeldeployment"]
    assert selector_for(settings, "autoscaling", "v2", "horizontalpodautoscalers") == [
        "app.kubernetes.io/managed-by=modelfleet,modelfleet.dev/modeldeployment"]
    assert selector_for(settings, "kueue.x-k8s.io", "v1beta2", "workloads") == [
        "app.kubernetes.io/managed-by=modelfleet,modelfleet.dev/trainingjob"]
    assert selector_for(settings, "metrics.k8s.io", "v1beta1", "pods") == []  # a kind it does not watch
    assert labels.trainer_labels("j")[labels.MANAGED_BY] == labels.runtime_labels("d")[labels.MANAGED_BY] == "modelfleet"
    assert settings.posting.enabled is False  # one Events path: operator/events.py
