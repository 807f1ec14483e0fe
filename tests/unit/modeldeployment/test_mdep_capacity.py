"""Room for a surge pod: free resources per node, and the strategy spec.rollout.whenNoRoom makes of it."""

from __future__ import annotations

from decimal import Decimal

from modelfleet_operator.modeldeployment.capacity import (
    choose_strategy, container_requests, free_gpus, free_resources, keep_decision, pod_gpus, pod_requests, surge_fits,
)
from modelfleet_operator.modeldeployment.spec import Rollout

REPLACE = Rollout(when_no_room="Replace")


def gpus(count: int) -> dict:
    return {"nvidia.com/gpu": Decimal(count)}


def node(name: str, gpus: int = 8, labels: dict | None = None, ready: bool = True, unschedulable: bool = False,
         taints: list | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"unschedulable": unschedulable, "taints": taints or []},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(node_name: str, gpus: int, phase: str = "Running", init_gpus: int = 0) -> dict:
    spec = {"nodeName": node_name,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}, {"resources": {}}]}
    if init_gpus:
        spec["initContainers"] = [{"resources": {"requests": {"nvidia.com/gpu": init_gpus}}}]
    return {"metadata": {"name": f"p-{node_name}-{gpus}"}, "spec": spec, "status": {"phase": phase}}


def test_pod_gpus_counts_containers_and_init_containers() -> None:
    assert pod_gpus(pod("n", 2)) == 2
    assert pod_gpus(pod("n", 1, init_gpus=4)) == 4
    assert pod_gpus({"spec": {"containers": [{"name": "c"}]}}) == 0


def test_free_gpus_ignore_finished_pods_and_other_nodes() -> None:
    nodes = [node("a"), node("b", gpus=4)]
    pods = [pod("a", 6), pod("a", 2, phase="Succeeded"), pod("b", 1), pod("elsewhere", 3)]
    assert free_gpus(nodes, pods) == {"a": 2, "b": 3}


def test_surge_needs_one_node_with_enough_free_gpus() -> None:
    nodes = [node("a"), node("b")]
    pods = [pod("a", 5), pod("b", 5)]  # 3 + 3 free, but on different nodes
    assert surge_fits(gpus(3), nodes, pods, {}, [])
    assert not surge_fits(gpus(4), nodes, pods, {}, [])


def test_unschedulable_nodes_do_not_count() -> None:
    nodes = [node("cordoned", unschedulable=True), node("notready", ready=False),
             node("tainted", taints=[{"key": "gpu", "value": "h100", "effect": "NoSchedule"}]),
             node("other", labels={"pool": "b"})]
    assert not surge_fits(gpus(1), nodes, [], {"pool": "a"}, [])
    assert not surge_fits(gpus(1), nodes[:3], [], {}, [])
    assert surge_fits(gpus(1), nodes[:3], [], {}, [{"key": "gpu", "operator": "Equal", "value": "h100"}])
    assert surge_fits(gpus(1), nodes[:3], [], {}, [{"operator": "Exists"}])
    assert not surge_fits(gpus(1), nodes[:3], [], {}, [{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}])
    assert surge_fits(gpus(1), nodes, [], {"pool": "b"}, [])


def test_cpu_and_memory_requests_count_too() -> None:
    """On a CPU node, requests (or limits standing in for them) of the pods bound to it take the room."""
    cpu_node = {"metadata": {"name": "n"}, "spec": {},
                "status": {"allocatable": {"cpu": "2", "memory": "8Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    busy = {"spec": {"nodeName": "n", "containers": [{"resources": {"requests": {"cpu": "1200m"}}},
                                                      {"resources": {"limits": {"memory": "1Gi"}}}]},
            "status": {"phase": "Running"}}
    assert pod_requests(busy) == {"cpu": Decimal("1.2"), "memory": Decimal(2**30)}
    assert free_resources([cpu_node], [busy])["n"]["cpu"] == Decimal("0.8")
    assert surge_fits(container_requests({"requests": {"cpu": "800m", "memory": "1Gi"}}), [cpu_node], [busy], {}, [])
    assert not surge_fits(container_requests({"requests": {"cpu": "1200m"}}), [cpu_node], [busy], {}, [])
    assert surge_fits(container_requests({}), [cpu_node], [busy, busy], {}, [])  # requests nothing: always fits


def test_replace_drops_the_surge_only_when_there_is_no_room() -> None:
    assert choose_strategy(REPLACE, {}, False).to_status() == {
        "maxSurge": 1, "maxUnavailable": 0, "withoutSurge": False, "whenNoRoom": "Replace", "message": ""}
    assert not choose_strategy(REPLACE, gpus(4), True).without_surge
    short = choose_strategy(REPLACE, {**gpus(4), "cpu": Decimal("0.5")}, False)
    assert (short.max_surge, short.max_unavailable, short.without_surge) == (0, 1, True)
    assert "cpu 500m, nvidia.com/gpu 4" in short.message and "whenNoRoom is Replace" in short.message
    # A user's own maxUnavailable is kept; maxSurge 0 is left alone.
    assert choose_strategy(Rollout("25%", "50%", "Replace"), gpus(1), False).max_unavailable == "50%"
    assert not choose_strategy(Rollout(0, 2, "Replace"), gpus(4), False).without_surge


def test_wait_never_drops_the_surge() -> None:
    wait = choose_strategy(Rollout(), gpus(4), False)
    assert (wait.max_surge, wait.max_unavailable, wait.without_surge, wait.when_no_room) == (1, 0, False, "Wait")


def test_a_rollout_in_flight_keeps_its_decision() -> None:
    decided = choose_strategy(REPLACE, gpus(1), False).to_status()
    kept = keep_decision(REPLACE, decided)
    assert kept is not None and (kept.max_surge, kept.without_surge) == (0, True)
    surging = keep_decision(REPLACE, choose_strategy(REPLACE, gpus(1), True).to_status())
    assert surging is not None and (surging.max_surge, surging.without_surge) == (1, False)
    assert keep_decision(Rollout(), decided) is None  # the policy changed: decide again
    assert keep_decision(REPLACE, None) is None
