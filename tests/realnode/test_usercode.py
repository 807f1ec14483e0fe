"""TrainingJobs on the real node: your own PyTorch script on two pods (DNS rendezvous, gloo) whose model a
ModelDeployment serves, a failing pod's real last log lines in status, a hung program marked Stalled and
restarted, and a deleted and an evicted trainer pod that restart the gang from the step they checkpointed on
SIGTERM without using backoffLimit."""

from __future__ import annotations

import json
import re
import time

import openai
import pytest

from model_runtime.artifact import read_manifest
from model_runtime.files import sha256_file
from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.binaries import REPO_ROOT
from tests.helpers import wait_for
from tests.realnode.conftest import OperatorProcess, apply, claim, get

pytestmark = pytest.mark.cluster

SMALL = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def job(name: str, **spec) -> dict:
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def status(cluster: LocalCluster, namespace: str, name: str) -> dict:
    return get(cluster, namespace, "trainingjob", name).get("status") or {}


def finished(cluster: LocalCluster, namespace: str, name: str, timeout: float) -> dict:
    return wait_for(lambda: (s := status(cluster, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
                    timeout=timeout, what=f"{name} to finish")


def condition(state: dict, type_: str) -> dict:
    return next((c for c in state.get("conditions", []) if c["type"] == type_), {})


def test_user_code_trains_on_two_pods_through_dns_rendezvous_and_a_model_deployment_serves_its_model(
        cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    store = claim(cluster, namespace, "store")
    script = (REPO_ROOT / "examples" / "usercode" / "train.py").read_text()
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tinylm-script"},
                               "data": {"train.py": script}})
    steps = 60
    applied = time.monotonic()
    apply(cluster, namespace, job(
        "tinylm", container={"image": cluster.images["runtime"], "command": ["python", "/code/train.py"],
                             "args": ["--steps", str(steps), "--checkpoint-every", "20"], "workingDir": "/code"},
        output={"uri": "pvc://store/models/tinylm"}, nodes=2, env=[{"name": "OMP_NUM_THREADS", "value": "1"}],
        volumes=[{"name": "code", "configMap": {"name": "tinylm-script"}}],
        volumeMounts=[{"name": "code", "mountPath": "/code", "readOnly": True}], resources=SMALL,
        runPolicy={"backoffLimit": 0}))
    first = wait_for(lambda: (status(cluster, namespace, "tinylm").get("progress") or {}).get("step"), timeout=300,
                     interval=0.5, what="the first step in status")
    to_first_step = time.monotonic() - applied  # the script reports its first step, then every 10th
    final = finished(cluster, namespace, "tinylm", timeout=300)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=2)
    assert final["progress"]["stepOfTotal"] == f"{steps}/{steps}" and final["progress"]["loss"] < 1.0  # from ~5.6
    table = cluster.kubectl("get", "tj", "tinylm", "-n", namespace).stdout
    assert re.search(rf"tinylm\s+Succeeded\s+2\s+{steps}/{steps}\s+0\.\d{{3}}\s", table), table
    weights = store / "models" / "tinylm" / "model.safetensors"
    assert final["outputs"]["model"] == {"uri": "pvc://store/models/tinylm", "digest": sha256_file(weights)}
    # Both ranks trained in one process group: rank 1 reached MASTER_ADDR (rank 0's DNS name) and took part.
    worker_log = cluster.kubectl("logs", "-n", namespace, "tinylm-node-1", "-c", "trainer").stdout
    assert f"step {steps}/{steps} loss" in worker_log, worker_log[-2000:]
    leader_log = cluster.kubectl("logs", "-n", namespace, "tinylm-node-0", "-c", "trainer").stdout
    [sample] = [json.loads(line.removeprefix("sample: ")) for line in leader_log.splitlines() if line.startswith("sample: ")]

    # A ModelDeployment takes the model straight from the finished job, and continues text as the script did.
    apply(cluster, namespace, {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "tinylm"},
                               "spec": {"model": {"trainingJobRef": {"name": "tinylm"}, "servedModelName": "tinylm"},
                                        "replicas": 1, "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}})
    served = wait_for(lambda: (s := get(cluster, namespace, "modeldeployment", "tinylm").get("status") or {}).get(
        "phase") == "Ready" and s, timeout=240, what="the ModelDeployment Ready")
    assert served["model"]["digest"] == final["outputs"]["model"]["digest"], served["model"]
    service = get(cluster, namespace, "service", "tinylm")["spec"]["clusterIP"]
    client = openai.OpenAI(base_url=f"http://{service}:8000/v1", api_key="unused", max_retries=0, timeout=60)
    text = client.completions.create(model="tinylm", prompt="The quick", max_tokens=24, temperature=0).choices[0].text
    assert text == sample, (text, sample)
    print(f"\nuser code: step {first} in status {to_first_step:.1f}s after apply; served {text!r}")


def test_a_failing_pods_real_last_log_lines_are_in_status(cluster: LocalCluster, namespace: str,
                                                          operator: OperatorProcess) -> None:
    # The error comes a moment after the last stdout line, as a traceback does after work: containerd reads
    # stdout and stderr through separate pipes, and lines written to both at the same instant can be recorded in
    # either order (one run put the stderr line 16 lines early when it followed at once).
    program = ("import sys, time\nfor i in range(30): print(f'epoch {i} ok', flush=True)\n"
               "time.sleep(0.5)\nprint('ValueError: batch 31 has no labels', file=sys.stderr)\nsys.exit(3)\n")
    apply(cluster, namespace, job("broken", container={"image": cluster.images["runtime"],
                                                       "command": ["python", "-c", program]},
                                  resources=SMALL, runPolicy={"backoffLimit": 0}))
    final = finished(cluster, namespace, "broken", timeout=180)
    assert final["phase"] == "Failed" and condition(final, "Failed")["reason"] == "BackoffLimitExceeded"
    (failure,) = final["failures"]
    assert failure["exitCode"] == 3 and failure["pod"] == "broken-node-0"
    error = "ValueError: batch 31 has no labels"
    assert failure["lastLogLines"] == [f"epoch {i} ok" for i in range(11, 30)] + [error], failure
    # The kubelet kept the same tail as the termination message (FallbackToLogsOnError), for when logs are gone.
    pod = get(cluster, namespace, "pod", "broken-node-0")
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message.rstrip("\n").endswith(f"epoch 29 ok\n{error}"), message


def test_a_hung_user_program_is_marked_stalled_and_restarted(cluster: LocalCluster, namespace: str,
                                                             operator: OperatorProcess) -> None:
    hang = "echo '{\"step\": 1, \"totalSteps\": 10, \"loss\": 2.0}' >> \"$MODELFLEET_REPORT_FILE\"; exec sleep 3600"
    apply(cluster, namespace, job("hung", container={"image": cluster.images["runtime"], "command": ["sh", "-c", hang]},
                                  resources=SMALL,
                                  runPolicy={"backoffLimit": 1, "progressDeadlineSeconds": 15,
                                             "terminationGracePeriodSeconds": 2}))
    restarted = wait_for(lambda: (s := status(cluster, namespace, "hung")).get("restartCount", 0) >= 1 and s,
                         timeout=180, what="the hung job restarted")
    stalled = condition(restarted, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ProgressDeadlineExceeded", restarted
    assert "no progress for 15s" in stalled["message"] and "step 1 since" in stalled["message"]
    # The second attempt hangs too; the stall counts against backoffLimit 1, so the job fails.
    final = finished(cluster, namespace, "hung", timeout=180)
    assert final["phase"] == "Failed" and condition(final, "Failed")["reason"] == "BackoffLimitExceeded"
    assert final["restartCount"] == 1 and not final.get("disruptions")
    reasons = [e["reason"] for e in json.loads(cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=hung", "-o", "json").stdout)["items"]]
    assert "Stalled" in reasons


def test_a_deleted_and_an_evicted_trainer_pod_resume_from_their_sigterm_checkpoint_without_using_backoff(
        cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    """Compared with the same job left alone: the same weights, to the bit."""
    store = claim(cluster, namespace, "store")
    (store / "data").mkdir()
    (store / "data" / "corpus.txt").write_bytes((REPO_ROOT / "examples" / "data" / "corpus.txt").read_bytes())
    steps, every = 400, 1000  # periodic checkpoints never happen: only the SIGTERM handler's

    def trained(name: str) -> dict:
        return job(name, model={"preset": "tiny"}, tokenizer={"type": "byte"},
                   data={"uri": "pvc://store/data/corpus.txt", "format": "text"},
                   training={"steps": steps, "globalBatchSize": 8, "sequenceLength": 64, "logEvery": 5, "seed": 0},
                   checkpoint={"uri": f"pvc://store/checkpoints-{name}", "every": every, "keep": 2},
                   output={"uri": f"pvc://store/models/{name}"}, nodes=1, resources=SMALL,
                   env=[{"name": "OMP_NUM_THREADS", "value": "2"}],
                   runPolicy={"backoffLimit": 0, "terminationGracePeriodSeconds": 60})

    apply(cluster, namespace, trained("disrupted"), trained("reference"))  # the same run, left alone

    def step() -> int:
        return (status(cluster, namespace, "disrupted").get("progress") or {}).get("step", 0)

    def pod_of_attempt(attempt: int) -> dict | None:
        pods = get(cluster, namespace, "pods", "-l", "modelfleet.dev/trainingjob=disrupted")["items"]
        return next((p for p in pods if p["metadata"]["annotations"]["modelfleet.dev/attempt"] == str(attempt)
                     and not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"), None)

    def resumed_at(attempt: int) -> int:
        wait_for(lambda: pod_of_attempt(attempt), timeout=180, what=f"the trainer pod of attempt {attempt} running")
        found = wait_for(lambda: re.search(r"resuming from \S+ \(step (\d+)\)", cluster.kubectl(
            "logs", "-n", namespace, "disrupted-node-0", check=False).stdout), timeout=120, what="the resumed trainer")
        return int(found.group(1))

    wait_for(lambda: pod_of_attempt(0) and step() >= 20, timeout=240, what="training past step 20")
    cluster.kubectl("delete", "pod", "disrupted-node-0", "-n", namespace, "--wait=false")  # SIGTERM via the kubelet
    first = resumed_at(1)
    assert 20 <= first < steps
    wait_for(lambda: step() >= first + 20, timeout=180, what="training on after the first restart")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "disrupted-node-0",
                                                                            "namespace": namespace}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/disrupted-node-0/eviction", "-f", "-",
                    input=json.dumps(eviction))
    second = resumed_at(2)
    assert first + 20 <= second < steps  # the checkpoint its SIGTERM handler wrote, not the first one

    final = finished(cluster, namespace, "disrupted", timeout=300)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=2)
    assert (final["restartCount"], final["disruptions"]) == (2, 2)  # backoffLimit 0: neither restart counted
    assert final["progress"]["step"] == steps
    assert read_manifest(store / "models" / "disrupted")["digest"] == final["outputs"]["model"]["digest"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                        "involvedObject.name=disrupted", "-o", "json").stdout)["items"]
    disrupted = [e["message"] for e in events if e["reason"] == "Disrupted"]
    assert any("deleted while running" in m for m in disrupted) and any("EvictionByEvictionAPI" in m for m in disrupted)
    reference = finished(cluster, namespace, "reference", timeout=300)
    assert reference["phase"] == "Succeeded" and reference["restartCount"] == 0
    assert final["outputs"]["model"]["digest"] == reference["outputs"]["model"]["digest"]  # no work lost or redone
