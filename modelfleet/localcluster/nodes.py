"""The fake nodes of the local cluster: two 8-GPU nodes and one CPU node, managed by kwok.

Labels follow what NVIDIA's GPU feature discovery and the kubelet put on real nodes, so node selectors
and affinities written for a real GPU cluster work unchanged.
"""

from __future__ import annotations

from typing import Any

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 8


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
FAKE_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


def _node(name: str, labels: dict[str, str], capacity: dict[str, str], taints: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                       "kubernetes.io/hostname": name, **labels},
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def fake_nodes(gpu_nodes: int = 2, cpu_nodes: int = 1, tainted: bool = False) -> list[dict[str, Any]]:
    """With `tainted` (next to a real node), pods land on a fake node only when they ask to: GPU pods get the
    GPU taint's toleration from the ExtendedResourceToleration admission plugin; others tolerate FAKE_TAINT."""
    gpu_labels = {
        "node.kubernetes.io/instance-type": "gpu-8x-h100",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": GPU_PRODUCT,
        "nvidia.com/gpu.count": str(GPUS_PER_NODE),
        "nvidia.com/gpu.memory": "81559",
    }
    gpu_capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti",
                    "nvidia.com/gpu": str(GPUS_PER_NODE)}
    cpu_capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return [_node(f"gpu-node-{i}", gpu_labels, gpu_capacity, [GPU_TAINT] if tainted else []) for i in range(gpu_nodes)] + [
        _node(f"cpu-node-{i}", {"node.kubernetes.io/instance-type": "cpu-16"}, cpu_capacity, [FAKE_TAINT] if tainted else [])
        for i in range(cpu_nodes)
    ]
