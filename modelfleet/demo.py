"""`modelfleet demo`: the whole lifecycle on the embedded local cluster, in real containers.

Brings the local cluster up with its real node (and the images built from images/), installs the chart (the
operator runs as a pod from the operator image, with only its ServiceAccount's rights), then walks what a
user does: put a corpus on a PersistentVolumeClaim -> apply a TrainingJob (2 pods, torch.distributed over
gloo, rendezvous through the headless Service's DNS name) -> watch its progress -> it succeeds with a model
digest on the claim -> apply a ModelDeployment that serves that job's model -> call the OpenAI-compatible
endpoint through `kubectl port-forward` with the `openai` client.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.binaries import REPO_ROOT, cache_dir
from modelfleet.localcluster.processes import poll_until

NAMESPACE = "modelfleet-demo"
OPERATOR_NAMESPACE = "modelfleet-system"
CLAIM = "fables"
CORPUS = REPO_ROOT / "examples" / "data" / "corpus.txt"
CHART = REPO_ROOT / "charts" / "modelfleet"


@dataclass
class DemoResult:
    digest: str
    completion: str
    chat: str
    final_loss: float


def claim_manifest() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}


def trainingjob_manifest(steps: int, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "fables", "namespace": NAMESPACE},
        "spec": {
            "model": {"preset": "tiny"},
            "data": {"uri": f"pvc://{CLAIM}/data/corpus.txt", "format": "text", "validationFraction": 0.05},
            "tokenizer": {"type": "byte"},
            "training": {"steps": steps, "globalBatchSize": 16, "microBatchSize": 16 // nodes, "sequenceLength": 64,
                         "learningRate": 0.003, "warmupSteps": min(20, steps // 5), "evalEvery": 50, "logEvery": 10,
                         "seed": 0},
            "checkpoint": {"uri": f"pvc://{CLAIM}/checkpoints/fables", "every": 50, "keep": 2},
            "output": {"uri": f"pvc://{CLAIM}/models/fables"},
            "nodes": nodes,
            "processesPerNode": 1,
            # The real node has 2 cores: two trainer pods and the operator fit side by side.
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
        },
    }


def modeldeployment_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fables", "namespace": NAMESPACE},
        "spec": {
            "model": {"trainingJobRef": {"name": "fables"}, "servedModelName": "fables"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
        },
    }


def loader_pod(image: str) -> dict[str, Any]:
    """A pod that mounts the claim, so that data can be copied onto it with `kubectl exec` (as a user would)."""
    from modelfleet_operator.security import container_security_context, pod_security_context

    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fables-loader", "namespace": NAMESPACE},
            "spec": {"securityContext": pod_security_context(), "restartPolicy": "Never",
                     "containers": [{"name": "loader", "image": image, "command": ["sleep", "600"],
                                     "securityContext": container_security_context(),
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}]}}


class PortForward:
    """`kubectl port-forward` to a Service, on a free local port."""

    def __init__(self, cluster: LocalCluster, target: str, port: int) -> None:
        self.process = subprocess.Popen([str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n",
                                         NAMESPACE, "port-forward", target, f"0:{port}"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"kubectl port-forward {target}: {line.strip() or 'exited'}")
        self.local_port = int(match.group(1))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Demo:
    def __init__(self, cluster: LocalCluster, say: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.say = say
        self.forward: PortForward | None = None

    # -- plumbing -------------------------------------------------------------------------------
    def kubectl_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        return poll_until(check, time.monotonic() + timeout, f"timed out after {timeout:.0f}s waiting for {what}",
                          interval=0.5)

    def install_operator(self) -> None:
        """`helm install` the chart with the locally built images, as a user installs it on their cluster."""
        from modelfleet.images import chart_values

        images = self.cluster.images
        helm = [str(self.cluster.bin_dir / "helm"), "--kubeconfig", self.cluster.kubeconfig]
        result = subprocess.run([*helm, "upgrade", "--install", "modelfleet", str(CHART), "--namespace",
                                 OPERATOR_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s",
                                 "--values", "-"], input=json.dumps(chart_values(images)),
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"helm install failed: {result.stderr.strip()}")
        self.say(f"operator installed with helm ({images['operator']}, as a pod in {OPERATOR_NAMESPACE})")

    def start(self) -> None:
        self.install_operator()
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        self.cluster.kubectl("delete", "trainingjobs,modeldeployments", "--all", "-n", NAMESPACE, "--wait=true",
                             "--timeout=120s", check=False)
        self.cluster.kubectl("delete", "pod", "fables-loader", "-n", NAMESPACE, "--ignore-not-found", "--wait=true",
                             "--grace-period=0", check=False)
        self._wait(lambda: self.cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
                   30, "the namespace's default ServiceAccount")

    def upload_corpus(self) -> None:
        self.apply(claim_manifest())
        self.apply(loader_pod(self.cluster.images["runtime"]))
        self.cluster.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "pod/fables-loader", "--timeout=120s",
                             timeout=150)
        with open(CORPUS, "rb") as corpus:
            subprocess.run([str(self.cluster.bin_dir / "kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", "-n",
                            NAMESPACE, "exec", "-i", "fables-loader", "--", "sh", "-c",
                            "rm -rf /data/checkpoints /data/models && mkdir -p /data/data && cat > /data/data/corpus.txt"],
                           stdin=corpus, check=True, capture_output=True, timeout=60)
        self.cluster.kubectl("delete", "pod", "fables-loader", "-n", NAMESPACE, "--wait=false", "--grace-period=0")
        self.say(f"copied {CORPUS.name} onto PersistentVolumeClaim {NAMESPACE}/{CLAIM} with kubectl exec")

    def stop(self) -> None:
        if self.forward:
            self.forward.close()

    # -- the lifecycle --------------------------------------------------------------------------
    def train(self, steps: int, nodes: int, timeout: float) -> tuple[str, float]:
        self.apply(trainingjob_manifest(steps, nodes))
        self.say(f"applied TrainingJob {NAMESPACE}/fables ({nodes} pods, {steps} steps)")
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

        def ready() -> dict[str, Any] | None:
            status = self.kubectl_json("get", "modeldeployment", "fables", "-n", NAMESPACE).get("status", {})
            return status if status.get("phase") == "Ready" else None

        status = self._wait(ready, timeout, "the ModelDeployment to become Ready")
        self.forward = PortForward(self.cluster, "service/fables", 8000)
        url = f"http://127.0.0.1:{self.forward.local_port}"
        self._wait(lambda: httpx.get(f"{url}/ready", timeout=5).status_code == 200, 30, "the runtime through the Service")
        self.say(f"ModelDeployment ready: in-cluster URL {status.get('url')}, port-forwarded to {url}/v1")
        return f"{url}/v1"

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


def run(cluster: LocalCluster, steps: int = 300, nodes: int = 2, say: Callable[[str], None] = print,
        timeout: float = 900) -> DemoResult:
    demo = Demo(cluster, say)
    try:
        demo.start()
        demo.upload_corpus()
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
    parser.add_argument("--nodes", type=int, default=2, choices=(1, 2), help="trainer pods (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards (stop it with "
                                                            "`modelfleet cluster down --dir DIR/cluster`)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir / "cluster", say=print)
    start = time.monotonic()
    print("starting the local cluster (the first run builds Kubernetes and the images: 30-40 minutes)")
    cluster.up(timeout=300)
    print(f"local cluster up in {time.monotonic() - start:.0f}s; KUBECONFIG={cluster.kubeconfig}")
    try:
        result = run(cluster, steps=args.steps, nodes=args.nodes)
        print(f"\ndone in {time.monotonic() - start:.0f}s: trained (final loss {result.final_loss:.3f}), "
              f"served and queried model {result.digest}")
    finally:
        if args.keep:
            print(f"cluster left running: export KUBECONFIG={cluster.kubeconfig}; kubectl get tj,mdep,pods -n {NAMESPACE}")
        else:
            cluster.down()
    return 0
