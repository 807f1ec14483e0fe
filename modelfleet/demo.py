"""`modelfleet demo`: the whole lifecycle on the embedded local cluster.

Brings the local cluster up, installs the CRDs, starts the operator, then walks what a user does:
apply a TrainingJob (2 nodes, torch.distributed over gloo) -> watch its progress -> it succeeds with a
model digest -> apply a ModelDeployment that serves that job's model -> call the OpenAI-compatible
endpoint with the `openai` client. kwok's nodes run no containers, so a local pod runner stands in for
the kubelet and runs the pods' commands as processes on this machine (see docs/local-cluster.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.binaries import REPO_ROOT, cache_dir
from modelfleet.localcluster.podrunner import PodRunner
from modelfleet.localcluster.processes import free_port, poll_until

NAMESPACE = "modelfleet-demo"
CORPUS = REPO_ROOT / "examples" / "data" / "corpus.txt"


@dataclass
class DemoResult:
    digest: str
    completion: str
    chat: str
    final_loss: float


def trainingjob_manifest(work_dir: Path, steps: int, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "fables", "namespace": NAMESPACE},
        "spec": {
            "model": {"preset": "tiny"},
            "data": {"uri": f"file://{CORPUS}", "format": "text", "validationFraction": 0.05},
            "tokenizer": {"type": "byte"},
            "training": {"steps": steps, "globalBatchSize": 16, "microBatchSize": 16 // nodes, "sequenceLength": 64,
                         "learningRate": 0.003, "warmupSteps": min(20, steps // 5), "evalEvery": 50, "logEvery": 10,
                         "seed": 0},
            "checkpoint": {"uri": f"file://{work_dir / 'checkpoints'}", "every": 50, "keep": 2},
            "output": {"uri": f"file://{work_dir / 'models' / 'fables'}"},
            "nodes": nodes,
            "processesPerNode": 1,
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
        },
    }


def modeldeployment_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fables", "namespace": NAMESPACE},
        "spec": {
            "model": {"trainingJobRef": {"name": "fables"}, "servedModelName": "fables"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
        },
    }


class Demo:
    def __init__(self, cluster: LocalCluster, work_dir: Path, say: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.work_dir = work_dir
        self.say = say
        self.operator: subprocess.Popen[bytes] | None = None
        self.runner: PodRunner | None = None

    # -- plumbing -------------------------------------------------------------------------------
    def kubectl_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def start(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # a rerun starts from scratch
        self.work_dir.mkdir(parents=True)
        for crd in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            self.cluster.kubectl("apply", "--server-side", "-f", str(crd))
        self.cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        # hostPath (file://) volumes are not allowed under the "restricted" Pod Security level: warn only.
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE, "labels": {"pod-security.kubernetes.io/warn": "restricted"}}})
        self.cluster.kubectl("delete", "trainingjobs,modeldeployments", "--all", "-n", NAMESPACE, "--wait=true",
                             "--timeout=60s", check=False)
        self._wait(lambda: self.cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
                   30, "the namespace's default ServiceAccount")
        env = {**self.cluster.env, "MODELFLEET_METRICS_PORT": str(free_port()), "MODELFLEET_HEALTH_PORT": str(free_port()),
               "PYTHONUNBUFFERED": "1"}
        with open(self.work_dir / "operator.log", "ab") as log:
            self.operator = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "operator", "-n", NAMESPACE],
                                             env=env, stdout=log, stderr=subprocess.STDOUT)
        self.say(f"operator started (log: {self.work_dir / 'operator.log'})")
        server = json.loads(Path(self.cluster.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
        self.runner = PodRunner(self.cluster.api_client(), NAMESPACE, self.work_dir / "pods", server, str(self.cluster.pki.ca_cert))
        self.runner.start()

    def stop(self) -> None:
        if self.runner:
            self.runner.stop()
        if self.operator and self.operator.poll() is None:
            self.operator.terminate()
            self.operator.wait(timeout=30)

    def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        def operator_running() -> None:
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.operator.returncode}); see {self.work_dir / 'operator.log'}")

        return poll_until(check, time.monotonic() + timeout, f"timed out after {timeout:.0f}s waiting for {what}",
                          operator_running, interval=0.5)

    # -- the lifecycle --------------------------------------------------------------------------
    def train(self, steps: int, nodes: int, timeout: float) -> tuple[str, float]:
        self.apply(trainingjob_manifest(self.work_dir, steps, nodes))
        self.say(f"applied TrainingJob {NAMESPACE}/fables ({nodes} nodes, {steps} steps)")
        last_step = [-1]

        def finished() -> dict[str, Any] | None:
            status = self.kubectl_json("get", "trainingjob", "fables", "-n", NAMESPACE).get("status", {})
            progress = status.get("progress", {})
            if progress.get("step", -1) != last_step[0] and "loss" in progress:
                last_step[0] = progress["step"]
                self.say(f"  training: step {progress.get('step')}/{progress.get('totalSteps')}  "
                         f"loss {progress['loss']:.3f}  phase {status.get('phase')}")
            if status.get("phase") == "Failed":
                raise RuntimeError(f"training failed: {json.dumps(status.get('failures', status), indent=2)}")
            return status if status.get("phase") == "Succeeded" else None

        status = self._wait(finished, timeout, "the TrainingJob to succeed")
        model = status["outputs"]["model"]
        self.say(f"TrainingJob succeeded: model {model['uri']} digest {model['digest']}")
        return model["digest"], float(status.get("progress", {}).get("loss", float("nan")))

    def serve(self, timeout: float) -> str:
        import httpx

        self.apply(modeldeployment_manifest())
        self.say(f"applied ModelDeployment {NAMESPACE}/fables (model from TrainingJob fables)")
        assert self.runner is not None

        def endpoint() -> str | None:
            pods = self.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", "modelfleet.dev/modeldeployment=fables")["items"]
            for pod in pods:
                port = self.runner.port(pod["metadata"]["name"], "MODELFLEET_PORT")
                if port is None:
                    continue
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                        return f"http://127.0.0.1:{port}/v1"
                except httpx.HTTPError:
                    pass
            return None

        url = self._wait(endpoint, timeout, "the runtime to become ready")
        status = self.kubectl_json("get", "modeldeployment", "fables", "-n", NAMESPACE).get("status", {})
        self.say(f"ModelDeployment ready: in-cluster URL {status.get('url')}, local URL {url}")
        return url

    def query(self, base_url: str) -> tuple[str, str]:
        from openai import OpenAI

        client = OpenAI(base_url=base_url, api_key="unused")
        completion = client.completions.create(model="fables", prompt="Once upon a time", max_tokens=48, temperature=0)
        self.say(f"completion: Once upon a time{completion.choices[0].text!r}")
        stream = client.chat.completions.create(model="fables", messages=[{"role": "user", "content": "Tell me a fable."}],
                                                max_tokens=48, temperature=0.7, seed=1, stream=True)
        chat = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        self.say(f"chat (streamed): {chat!r}")
        return completion.choices[0].text, chat


def run(cluster: LocalCluster, work_dir: Path, steps: int = 300, nodes: int = 2,
        say: Callable[[str], None] = print, timeout: float = 900) -> DemoResult:
    demo = Demo(cluster, work_dir, say)
    try:
        demo.start()
        digest, loss = demo.train(steps, nodes, timeout)
        url = demo.serve(timeout=300)
        completion, chat = demo.query(url)
        return DemoResult(digest, completion, chat, loss)
    finally:
        demo.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=cache_dir() / "demo", help="working directory (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=2, choices=(1, 2, 4), help="training nodes (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards (stop it with "
                                                            "`modelfleet cluster down --dir DIR/cluster`)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir / "cluster")
    start = time.monotonic()
    print("starting the local cluster (the first run builds Kubernetes from source: ~10 minutes)")
    cluster.up(timeout=300)
    print(f"local cluster up; KUBECONFIG={cluster.kubeconfig}")
    try:
        result = run(cluster, args.dir / "work", steps=args.steps, nodes=args.nodes)
        print(f"\ndone in {time.monotonic() - start:.0f}s: trained (final loss {result.final_loss:.3f}), "
              f"served and queried model {result.digest}")
    finally:
        if args.keep:
            print(f"cluster left running: export KUBECONFIG={cluster.kubeconfig}; kubectl get tj,mdep,pods -n {NAMESPACE}")
        else:
            cluster.down()
    return 0
