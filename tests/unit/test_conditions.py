"""Status conditions: lastTransitionTime moves only when the status flips."""

from modelfleet_operator.conditions import get_condition, set_condition


def test_new_condition_is_added_with_generation() -> None:
    conds = set_condition([], "Running", True, "PodsRunning", "2/2 pods running", generation=3, now="t1")
    assert conds == [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "2/2 pods running",
                      "lastTransitionTime": "t1", "observedGeneration": 3}]


def test_same_status_keeps_transition_time_but_updates_reason() -> None:
    conds = set_condition([], "Running", True, "A", "a", 1, now="t1")
    conds = set_condition(conds, "Running", True, "B", "b", 2, now="t2")
    cond = get_condition(conds, "Running")
    assert cond is not None
    assert (cond["lastTransitionTime"], cond["reason"], cond["observedGeneration"]) == ("t1", "B", 2)


def test_flipped_status_moves_transition_time_and_leaves_others_alone() -> None:
    conds = set_condition([], "Running", True, "A", "a", 1, now="t1")
    conds = set_condition(conds, "Succeeded", False, "NotYet", "", 1, now="t1")
    conds = set_condition(conds, "Running", False, "Done", "", 1, now="t2")
    assert get_condition(conds, "Running")["lastTransitionTime"] == "t2"
    assert get_condition(conds, "Succeeded")["lastTransitionTime"] == "t1"
    assert get_condition(conds, "Running")["status"] == "False"
    assert [c["type"] for c in conds] == ["Running", "Succeeded"]


def test_input_is_not_mutated() -> None:
    original = set_condition([], "Ready", False, "Waiting", "", 1, now="t1")
    snapshot = [dict(c) for c in original]
    set_condition(original, "Ready", True, "Ok", "", 1, now="t2")
    assert original == snapshot
