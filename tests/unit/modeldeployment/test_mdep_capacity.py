"""GPU-aware rollout: free GPUs per node and the strategy that follows."""

from __future__ import annotations

from modelfleet_operator.modeldeployment.capacity import choose_strategy, free_gpus, pod_gpus, surge_fits
from modelfleet_operator.modeldeployment.spec import Rollout


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
    assert surge_fits(3, nodes, pods, {}, [])
    assert not surge_fits(4, nodes, pods, {}, [])


def test_unschedulable_nodes_do_not_count() -> None:
    nodes = [node("cordoned", unschedulable=True), node("notready", ready=False),
             node("tainted", taints=[{"key": "gpu", "value": "h100", "effect": "NoSchedule"}]),
             node("other", labels={"pool": "b"})]
    assert not surge_fits(1, nodes, [], {"pool": "a"}, [])
    assert not surge_fits(1, nodes[:3], [], {}, [])
    assert surge_fits(1, nodes[:3], [], {}, [{"key": "gpu", "operator": "Equal", "value": "h100"}])
    assert surge_fits(1, nodes[:3], [], {}, [{"operator": "Exists"}])
    assert not surge_fits(1, nodes[:3], [], {}, [{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}])
    assert surge_fits(1, nodes, [], {"pool": "b"}, [])


def test_strategy_without_surge_only_when_gpus_are_short() -> None:
    default = Rollout()
    assert choose_strategy(default, 0, False).to_status() == {
        "maxSurge": 1, "maxUnavailable": 0, "withoutSurge": False, "message": ""}
    assert not choose_strategy(default, 4, True).without_surge
    short = choose_strategy(default, 4, False)
    assert (short.max_surge, short.max_unavailable, short.without_surge) == (0, 1, True)
    assert "4 free nvidia.com/gpu" in short.message
    # A user's own maxUnavailable is kept; gpuAware false and maxSurge 0 are left alone.
    assert choose_strategy(Rollout("25%", "50%"), 1, False).max_unavailable == "50%"
    assert not choose_strategy(Rollout(gpu_aware=False), 4, False).without_surge
    assert not choose_strategy(Rollout(0, 2), 4, False).without_surge
