"""Kubernetes Events on the operator's resources: one path for both kinds, one reporting component.

kopf's own event posting is switched off (operator/main.py), so every Event a user sees says
`modelfleet-operator`. Events are posted after the status change they report has been written, so an operator
killed in between loses an Event rather than posting it twice (the next leader sees no change to report).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.conditions import now_iso
from modelfleet_operator.kube import Kube, namespace_terminating

log = logging.getLogger(__name__)

COMPONENT = "modelfleet-operator"
REPORTING_CONTROLLER = "modelfleet.dev/operator"
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


async def post(kube: Kube, obj: dict[str, Any], event: Event) -> None:
    """A core/v1 Event on `obj`; failing to post one never fails the reconcile."""
    meta = obj["metadata"]
    now = now_iso()
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.create(body)
    except Exception as error:  # noqa: BLE001 - an Event is a nicety
        if not namespace_terminating(error):
            log.warning("could not post event %s on %s %s/%s: %s", event.reason, obj["kind"], meta["namespace"],
                        meta["name"], error)
