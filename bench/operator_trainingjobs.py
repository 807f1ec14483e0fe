"""Benchmark: how fast the operator turns TrainingJobs into pods, and what it costs.

Against the local control plane (started here unless --kubeconfig is given) and the real operator
process, in one run:
  * idle: a single 4-node job at a time, N times -> p50/p99 apply-to-all-pods-created latency;
  * burst: 200 jobs of 2 nodes applied at once -> time until all 400 pods exist, p50/p99 per-job
    apply-to-pods-created latency, and the operator's peak RSS and CPU seconds.
Pod creation is observed with a watch (client-side arrival time of each pod's ADDED event).

    python bench/operator_trainingjobs.py [--jobs 200] [--nodes 2] [--idle-runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelfleet.dev", "v1alpha1", "trainingjobs"


def manifest(name: str, nodes: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"model": {"preset": "tiny"}, "data": {"uri": "pvc://store/data.txt"},
                     "training": {"steps": 10, "globalBatchSize": nodes * 2}, "output": {"uri": f"pvc://store/models/{name}"},
                     "nodes": nodes, "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}}


class PodClock:
    """Arrival time of each pod's first event, from a watch on the namespace."""

    def __init__(self, api: client.CoreV1Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: dict[str, float] = {}
        self.lock = threading.Condition()
        self.watch = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self.watch.stream(self.api.list_namespaced_pod, self.namespace, timeout_seconds=3600):
                now = time.perf_counter()
                name = event["raw_object"]["metadata"]["name"]
                with self.lock:
                    if event["type"] != "DELETED":
                        self.seen.setdefault(name, now)
                    self.lock.notify_all()
        except Exception:  # noqa: BLE001 - the watch ends when the benchmark tears down
            pass

    def wait(self, names: list[str], timeout: float) -> float:
        """The time the last of `names` appeared."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not all(n in self.seen for n in names):
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    missing = [n for n in names if n not in self.seen]
                    raise TimeoutError(f"pods never appeared: {missing[:5]} ({len(missing)} missing)")
            return max(self.seen[n] for n in names)

    def forget(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                self.seen.pop(name, None)


class Operator:
    """`modelfleet operator` as a process; with `leader`, waits until it holds the leader Lease."""

    def __init__(self, env: dict[str, str], log: Path, leader: bool = True) -> None:
        self.metrics_port, self.health_port = _free_port(), _free_port()
        env = {**env, "MODELFLEET_METRICS_PORT": str(self.metrics_port), "MODELFLEET_HEALTH_PORT": str(self.health_port)}
        self.log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "operator"], env=env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not become healthy; see {log}")
                time.sleep(0.2)
        while leader and not self.is_leader():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become leader; see {log}")
            time.sleep(0.2)

    def is_leader(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return "modelfleet_operator_leader 1.0" in response.read().decode()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def pod_names(job: str, nodes: int) -> list[str]:
    return [f"{job}-node-{rank}" for rank in range(nodes)]


def run_idle(custom: client.CustomObjectsApi, clock: PodClock, namespace: str, runs: int, timeout: float,
             nodes: int = 4) -> list[float]:
    latencies = []
    for _ in range(runs):
        name = f"idle-{uuid.uuid4().hex[:6]}"
        start = time.perf_counter()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(name, nodes))
        latencies.append(clock.wait(pod_names(name, nodes), timeout) - start)
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return latencies


def run_burst(custom: client.CustomObjectsApi, clock: PodClock, namespace: str, jobs: int, nodes: int,
              timeout: float) -> tuple[float, float, list[float]]:
    applied: dict[str, float] = {}

    def create(index: int) -> None:
        name = f"burst-{index}"
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(name, nodes))
        applied[name] = time.perf_counter()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(jobs)))
    created = time.perf_counter() - start
    latencies = [clock.wait(pod_names(name, nodes), timeout) - at for name, at in applied.items()]
    all_pods = clock.wait([p for name in applied for p in pod_names(name, nodes)], timeout) - start
    return created, all_pods, latencies


def cluster_for(kubeconfig: str | None) -> tuple[Any, str, dict[str, str]]:
    """(the cluster started here or None, its kubeconfig, the environment for the operator): an existing cluster,
    or the local control plane with kwok nodes only (a scale test)."""
    if kubeconfig:
        return None, kubeconfig, {**os.environ, "KUBECONFIG": kubeconfig}
    from modelfleet.localcluster import LocalCluster

    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")), real_node=False)
    cluster.up(timeout=180)
    return cluster, cluster.kubeconfig, cluster.env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--idle-runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=180.0, help="give up waiting for pods after this many seconds")
    parser.add_argument("--replicas", type=int, default=1, help="operator processes electing one leader (the chart runs 2)")
    parser.add_argument("--kubeconfig", help="an existing cluster (default: start the local control plane)")
    args = parser.parse_args(argv)

    cluster, kubeconfig, env = cluster_for(args.kubeconfig)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    operators: list[Operator] = []
    try:
        kubectl = [str(cluster.bin_dir / "kubectl") if cluster else "kubectl", f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds" / "trainingjob.yaml")], check=True,
                       capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd/trainingjobs.modelfleet.dev"], check=True,
                       capture_output=True)
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
        api = config.new_client_from_config(config_file=kubeconfig)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        clock = PodClock(core, namespace)
        lease = {"MODELFLEET_LEADER_ELECTION_LEASE": f"bench-{uuid.uuid4().hex[:6]}",
                 "MODELFLEET_LEADER_ELECTION_NAMESPACE": "default"}
        operator = Operator({**env, **lease}, workdir / "operator.log")
        operators.append(operator)
        standbys = [Operator({**env, **lease}, workdir / f"standby-{i}.log", leader=False)
                    for i in range(1, args.replicas)]
        operators += standbys
        rss_idle = operator.rss_mb()

        run_idle(custom, clock, namespace, 1, args.timeout)  # warm-up: connections, caches, first imports
        idle = run_idle(custom, clock, namespace, args.idle_runs, args.timeout)
        cpu_before = operator.cpu_seconds()
        created, all_pods, burst = run_burst(custom, clock, namespace, args.jobs, args.nodes, args.timeout)
        cpu_burst = operator.cpu_seconds() - cpu_before
        peak = operator.peak_rss_mb()

        rows = [
            ("idle: 1 job x 4 nodes, apply -> 4 pods, p50", f"{percentile(idle, 50) * 1000:.0f} ms", "-"),
            ("idle: 1 job x 4 nodes, apply -> 4 pods, p99", f"{percentile(idle, 99) * 1000:.0f} ms", "<= 1000 ms"),
            (f"burst: creating the {args.jobs} jobs (8 client threads)", f"{created:.1f} s", "-"),
            (f"burst: {args.jobs} jobs x {args.nodes} nodes, all {args.jobs * args.nodes} pods exist", f"{all_pods:.1f} s",
             "<= 30 s"),
            ("burst: per-job apply -> pods, p50", f"{percentile(burst, 50):.2f} s", "-"),
            ("burst: per-job apply -> pods, p99", f"{percentile(burst, 99):.2f} s", "-"),
            ("operator CPU seconds during the burst", f"{cpu_burst:.1f} s", "-"),
            ("operator RSS after start", f"{rss_idle:.0f} MB", "-"),
            ("operator peak RSS (VmHWM)", f"{peak:.0f} MB", "< 250 MB"),
        ] + [(f"standby replica {i} peak RSS (VmHWM)", f"{s.peak_rss_mb():.0f} MB", "-")
             for i, s in enumerate(standbys, 1)]
        if any(s.is_leader() for s in standbys):
            raise RuntimeError("a standby replica holds the Lease too")
        width = max(len(r[0]) for r in rows)
        print(f"{'measurement':<{width}}  {'result':>10}  goal")
        for name, value, goal in rows:
            print(f"{name:<{width}}  {value:>10}  {goal}")
        print(json.dumps({"idle_ms": [round(v * 1000, 1) for v in idle],
                          "burst_mean_s": round(statistics.mean(burst), 3)}))
        shutil.rmtree(workdir, ignore_errors=True)  # kept (with the operator's log) only when something failed
        return 0
    finally:
        for running in operators:
            running.stop()
        if cluster:
            cluster.down()
            shutil.rmtree(cluster.directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
