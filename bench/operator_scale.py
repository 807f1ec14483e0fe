"""Benchmark: does the operator's cost grow with objects that are not its own?

On the local control plane (kwok nodes only; started here unless --kubeconfig is given), two runs of a fresh
operator process, side by side:
  * empty: a cluster with nothing but the operator's own objects;
  * crowded: the same plus --pods unrelated pods (bound to extra kwok nodes, which "run" them) and --configmaps
    unrelated ConfigMaps, created through `kubectl apply` of Lists before the operator starts.
Each run: --runs TrainingJobs of 2 nodes one after another -> p50/p99 apply-to-both-pods latency; as a control,
--runs pods created directly -> p50/p99 create-to-seen (the cluster's own latency, no operator involved); then a
burst of --burst jobs -> the operator's peak RSS (VmHWM). The operator's watches of pods and ConfigMaps carry server-side
label selectors (operator/main.py), so the crowded run should cost the same as the empty one.

    python bench/operator_scale.py [--pods 5000] [--configmaps 5000] [--runs 20] [--burst 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from operator_trainingjobs import REPO, Operator, PodClock, cluster_for, percentile, run_burst, run_idle

CHUNK = 500  # objects per `kubectl apply` List
PODS_PER_NODE = 110


def kwok_node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "64", "memory": "512Gi", "pods": str(PODS_PER_NODE)}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok-bench", "kubernetes.io/hostname": name}},
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity}}


def unrelated_pod(index: int, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"other-{index}", "labels": {"app": "unrelated", "shard": str(index % 10)}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
                     "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}}


def unrelated_configmap(index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"other-{index}", "labels": {"app": "unrelated"}},
            "data": {"payload": "x" * 512}}


def apply_lists(kubectl: list[str], namespace: str | None, items: list[dict[str, Any]]) -> None:
    scope = ["-n", namespace] if namespace else []
    for start in range(0, len(items), CHUNK):
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[start:start + CHUNK]})
        subprocess.run([*kubectl, *scope, "apply", "--server-side", "-f", "-"], input=body, text=True, check=True,
                       capture_output=True, timeout=300)


def crowd(kubectl: list[str], pods: int, configmaps: int) -> float:
    """Create the unrelated objects; returns the seconds it took."""
    start = time.perf_counter()
    nodes = [f"bench-node-{i}" for i in range(max(1, -(-pods // PODS_PER_NODE)))]
    apply_lists(kubectl, None, [kwok_node(n) for n in nodes])
    subprocess.run([*kubectl, "create", "namespace", "unrelated"], check=True, capture_output=True)
    apply_lists(kubectl, "unrelated", [unrelated_configmap(i) for i in range(configmaps)])
    apply_lists(kubectl, "unrelated", [unrelated_pod(i, nodes[i % len(nodes)]) for i in range(pods)])
    return time.perf_counter() - start


def api_alone(core: client.CoreV1Api, clock: PodClock, namespace: str, runs: int, timeout: float) -> list[float]:
    """The control: create a pod directly -> its watch event, without the operator (the cluster's own latency)."""
    latencies = []
    for i in range(runs):
        pod = unrelated_pod(i, "bench-control")
        pod["metadata"]["name"] = name = f"direct-{uuid.uuid4().hex[:6]}"
        start = time.perf_counter()
        core.create_namespaced_pod(namespace, pod)
        latencies.append(clock.wait([name], timeout) - start)
    return latencies


def measure(env: dict[str, str], kubeconfig: str, kubectl: list[str], workdir: Path, label: str, runs: int,
            burst: int, timeout: float) -> dict[str, float]:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    clock = PodClock(core, namespace)
    operator = Operator({**env, "MODELFLEET_LEADER_ELECTION_LEASE": f"bench-{label}",
                         "MODELFLEET_LEADER_ELECTION_NAMESPACE": "default"}, workdir / f"operator-{label}.log")
    try:
        run_idle(custom, clock, namespace, 1, timeout, nodes=2)  # warm-up: election, connections, first imports
        idle = run_idle(custom, clock, namespace, runs, timeout, nodes=2)
        direct = api_alone(core, clock, namespace, runs, timeout)
        _, all_pods, _ = run_burst(custom, clock, namespace, burst, 2, timeout)
        return {"p50_ms": percentile(idle, 50) * 1000, "p99_ms": percentile(idle, 99) * 1000,
                "direct_p50_ms": percentile(direct, 50) * 1000, "direct_p99_ms": percentile(direct, 99) * 1000,
                "burst_s": all_pods, "peak_rss_mb": operator.peak_rss_mb()}
    finally:
        operator.stop()
        subprocess.run([*kubectl, "delete", "namespace", namespace, "--wait=false"], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--configmaps", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=20, help="jobs applied one at a time, for the latency")
    parser.add_argument("--burst", type=int, default=50, help="jobs applied at once, for the peak memory")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--kubeconfig", help="an existing, empty cluster (default: start the local control plane)")
    args = parser.parse_args(argv)

    cluster, kubeconfig, env = cluster_for(args.kubeconfig)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    try:
        kubectl = [str(cluster.bin_dir / "kubectl") if cluster else "kubectl", f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True, capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all"], check=True,
                       capture_output=True)
        empty = measure(env, kubeconfig, kubectl, workdir, "empty", args.runs, args.burst, args.timeout)
        crowding = crowd(kubectl, args.pods, args.configmaps)
        crowded = measure(env, kubeconfig, kubectl, workdir, "crowded", args.runs, args.burst, args.timeout)

        print(f"unrelated objects: {args.pods} pods + {args.configmaps} ConfigMaps (created in {crowding:.0f} s)")
        rows = [
            (f"1 job x 2 nodes, apply -> pods, p50 ({args.runs} runs)", "p50_ms", "{:.0f} ms"),
            (f"1 job x 2 nodes, apply -> pods, p99 ({args.runs} runs)", "p99_ms", "{:.0f} ms"),
            (f"control, no operator: create 1 pod -> seen, p50 ({args.runs} runs)", "direct_p50_ms", "{:.0f} ms"),
            (f"control, no operator: create 1 pod -> seen, p99 ({args.runs} runs)", "direct_p99_ms", "{:.0f} ms"),
            (f"burst: {args.burst} jobs x 2 nodes, all pods exist", "burst_s", "{:.1f} s"),
            ("operator peak RSS (VmHWM)", "peak_rss_mb", "{:.0f} MB"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{'measurement':<{width}}  {'empty':>9}  {'crowded':>9}  ratio")
        for name, key, fmt in rows:
            print(f"{name:<{width}}  {fmt.format(empty[key]):>9}  {fmt.format(crowded[key]):>9}  "
                  f"{crowded[key] / empty[key]:.2f}x")
        shutil.rmtree(workdir, ignore_errors=True)  # kept (with the operators' logs) only when something failed
        return 0
    finally:
        if cluster:
            cluster.down()
            shutil.rmtree(cluster.directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
