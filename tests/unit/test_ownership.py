"""An existing object of a child's name is used only when the resource controls it."""

from __future__ import annotations

from modelfleet_operator.ownership import conflict

UID = "u-1"


def obj(*refs: dict) -> dict:
    return {"kind": "ServiceAccount", "metadata": {"name": "x-trainer", "ownerReferences": list(refs)}}


def test_missing_or_owned_objects_are_fine() -> None:
    assert conflict(None, "TrainingJob", "x", UID) is None
    assert conflict(obj({"kind": "TrainingJob", "name": "x", "uid": UID, "controller": True}), "TrainingJob", "x", UID) is None


def test_someone_elses_object_is_refused_naming_it() -> None:
    found = conflict(obj(), "TrainingJob", "x", UID)
    assert found is not None and not found.transient
    assert found.message.startswith("metadata.name: ServiceAccount x-trainer already exists and is not owned by this "
                                    "TrainingJob")
    not_controller = obj({"kind": "TrainingJob", "name": "x", "uid": UID})  # an owner, but not the controller
    assert conflict(not_controller, "TrainingJob", "x", UID) is not None


def test_a_deleted_namesakes_leftover_is_transient() -> None:
    found = conflict(obj({"kind": "TrainingJob", "name": "x", "uid": "old", "controller": True}), "TrainingJob", "x", UID)
    assert found is not None and found.transient and "garbage collector" in found.message
