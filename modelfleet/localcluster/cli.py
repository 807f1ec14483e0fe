"""`modelfleet cluster up | down | status | kubeconfig`: the embedded local cluster."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from modelfleet.localcluster.cluster import LocalCluster, default_directory


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelfleet cluster", description=__doc__)
    parser.add_argument("action", choices=("up", "down", "status", "kubeconfig"))
    parser.add_argument("--dir", type=Path, default=default_directory(),
                        help="where the cluster keeps its certificates, data, logs and kubeconfig (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the cluster to come up")
    parser.add_argument("--no-real-node", dest="real_node", action="store_false",
                        help="only kwok's fake nodes: no containers run, no root needed (fast scheduling tests)")
    parser.add_argument("--kueue", action="store_true",
                        help="also run Kueue, built from its Go module (docs/kueue.md)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.action == "up":
        real_node, kueue = args.real_node, args.kueue
    else:  # as it was started, so that `down` undoes the real node and `status` checks Kueue
        state = LocalCluster(args.dir, real_node=False).load_state()
        real_node, kueue = state.real_node, state.kueue
    cluster = LocalCluster(args.dir, real_node=real_node, say=print, kueue=kueue)
    if args.action == "up":
        start = time.monotonic()
        cluster.up(timeout=args.timeout)
        print(f"local cluster is up ({time.monotonic() - start:.1f}s); binaries in {cluster.bin_dir}")
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count").stdout)
        print(f"export KUBECONFIG={cluster.kubeconfig}\nexport PATH={cluster.bin_dir}:$PATH")
        return 0
    if args.action == "down":
        cluster.down()
        left = cluster.leftovers()
        print("local cluster stopped" + (f"; left on the host: {', '.join(left)}" if left else ""))
        return 1 if left else 0
    if args.action == "kubeconfig":
        print(cluster.kubeconfig)
        return 0
    health = cluster.status()
    for name, ok in health.items():
        print(f"{name:<24} {'running' if ok else 'stopped'}")
    return 0 if all(health.values()) else 1
