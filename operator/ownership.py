"""Whether the operator may use (or overwrite) an existing object of a child's name (pure).

Children are named after their resource (`<name>`, `<job>-trainer`, ...). Someone who may create a
ModelDeployment or TrainingJob could otherwise pick a name that makes the operator take over an object it
does not own: server-side-apply a Service called `kubernetes`, or run pods as an existing, more privileged
ServiceAccount. So an existing object is used only when this resource controls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Conflict:
    """An existing object the resource does not own. `transient`: it belongs to a deleted resource of the same
    name and the garbage collector is about to remove it, so retrying soon will succeed."""

    message: str
    transient: bool


def conflict(child: Mapping[str, Any] | None, owner_kind: str, owner_name: str, owner_uid: str) -> Conflict | None:
    """None when `child` does not exist or is controlled by the owner with `owner_uid`."""
    if child is None:
        return None
    meta = child.get("metadata") or {}
    controller = next((ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")), None)
    if controller is not None and controller.get("uid") == owner_uid:
        return None
    what = f"{child.get('kind', 'object')} {meta.get('name')}"
    if controller is not None and (controller.get("kind"), controller.get("name")) == (owner_kind, owner_name):
        return Conflict(f"{what} still belongs to a deleted {owner_kind} of the same name; waiting for the garbage "
                        "collector to remove it", transient=True)
    return Conflict(f"metadata.name: {what} already exists and is not owned by this {owner_kind}, so the operator "
                    f"will not use or change it; delete that object or give the {owner_kind} another name",
                    transient=False)
