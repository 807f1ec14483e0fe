"""Rollouts and canaries of a ModelDeployment on the real node, under continuous client load through its Service
(the ClusterIP, reached from the host through kube-proxy; a new connection per request, so kube-proxy picks a pod
for every request):

- a model change rolls out with a surge pod and drops no request;
- without room for a surge pod (CPU requests fill the node), `whenNoRoom: Wait` keeps the old pod serving and
  rolls on when room appears, `Replace` replaces in place and the downtime shows, both as the status says;
- a canary whose version is slow (the runtime's latency fault) is rolled back on its TTFT p95 measured by a real
  Prometheus, with no failed request; a healthy one is promoted; one that fails requests (the error fault) is
  rolled back on its error rate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from model_runtime.artifact import save_model_dir
from model_runtime.llama import LlamaConfig, LlamaForCausalLM
from model_runtime.tokenizer import byte_tokenizer
from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.prometheus import Prometheus
from modelfleet.localcluster.realnode import NODE_NAME
from modelfleet_operator.modeldeployment.capacity import free_resources
from tests.helpers import wait_for
from tests.realnode.conftest import OperatorProcess, apply, claim, get, image_pod

pytestmark = pytest.mark.cluster

SERVED = "tiny"
RUNTIME_CPU = "100m"


@dataclass
class Load:
    """Clients sending completions through the Service without pause, each on a new connection."""

    url: str
    ok: list[float] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self._stop.is_set():
                at = time.monotonic()
                try:
                    response = client.post(f"{self.url}/v1/completions",
                                           json={"model": SERVED, "prompt": "once upon", "max_tokens": 4})
                    if response.status_code == 200:
                        self.ok.append(at)
                    else:
                        self.failed.append((at, f"{response.status_code} {response.text[:200]}"))
                except httpx.HTTPError as error:
                    self.failed.append((at, repr(error)))
                    time.sleep(0.05)  # no endpoint: do not spin

    @contextmanager
    def running(self, clients: int = 2) -> Iterator[Load]:
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(self.ok) >= 5, timeout=60, what=f"requests served through {self.url}")
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(40)

    def ok_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.ok if start <= at <= end)


@dataclass(frozen=True)
class Models:
    v1: tuple[str, str]  # (uri, digest)
    v2: tuple[str, str]


def write_models(cluster: LocalCluster, namespace: str) -> Models:
    root = claim(cluster, namespace, "models")
    versions = []
    for seed, name in ((0, "v1"), (1, "v2")):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256))
        model.init_weights(seed, std=0.2)
        save_model_dir(model, byte_tokenizer(), root / name)
        for path in [root / name, *(root / name).rglob("*")]:  # written as root; the runtime runs as 65532
            path.chmod(0o755 if path.is_dir() else 0o644)
        digest = json.loads((root / name / "modelfleet.json").read_text())["digest"]
        versions.append((f"pvc://models/{name}", digest))
    return Models(*versions)


def manifest(name: str, model: tuple[str, str], cpu: str = RUNTIME_CPU, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"uri": model[0], "digest": model[1], "servedModelName": SERVED}, "replicas": 1,
                     "probes": {"startupTimeoutSeconds": 240}, "runtime": {"drainTimeoutSeconds": 5},
                     "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}, **spec}}


def status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return get(cluster, namespace, "modeldeployment", name).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next((c for c in st.get("conditions") or [] if c["type"] == type_), {})
    return c.get("status", ""), c.get("reason", "")


def pods(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return get(cluster, namespace, "pods", "-l", f"modelfleet.dev/modeldeployment={name}")["items"]


def serving_only(cluster: LocalCluster, namespace: str, name: str, digest: str, count: int = 1) -> bool:
    """Exactly `count` pods exist (terminating ones included), all of `digest`, all ready."""
    found = pods(cluster, namespace, name)
    return len(found) == count and all(
        p["metadata"]["annotations"].get("modelfleet.dev/model-digest") == digest
        and not p["metadata"].get("deletionTimestamp")
        and all(s.get("ready") for s in p["status"].get("containerStatuses") or [{}]) for p in found)


def wait_ready(cluster: LocalCluster, namespace: str, name: str, digest: str, timeout: float = 240) -> dict[str, Any]:
    wait_for(lambda: status(cluster, namespace, name).get("phase") == "Ready"
             and serving_only(cluster, namespace, name, digest), timeout=timeout, interval=1,
             what=f"{name} Ready, serving only {digest[:15]}")
    return status(cluster, namespace, name)


def mdep_events(cluster: LocalCluster, namespace: str, name: str) -> list[tuple[str, str]]:
    found = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                       f"involvedObject.kind=ModelDeployment,involvedObject.name={name}",
                                       "-o", "json").stdout)["items"]
    return [(e["reason"], e.get("message", "")) for e in found]


def service_url(cluster: LocalCluster, namespace: str, name: str) -> str:
    return f"http://{get(cluster, namespace, 'service', name)['spec']['clusterIP']}:8000"


def patch_spec(cluster: LocalCluster, namespace: str, name: str, spec: dict[str, Any]) -> float:
    cluster.kubectl("patch", "modeldeployment", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))
    return time.monotonic()


def report(what: str, load: Load, started: float, finished: float) -> None:
    print(f"\n{what}: {finished - started:.1f} s; {len(load.ok)} requests served, {len(load.failed)} failed, "
          f"{load.ok_between(started, finished)} served during it")


# --- rolling updates ------------------------------------------------------------------------------------------


def test_a_model_change_under_load_drops_no_request(cluster: LocalCluster, namespace: str,
                                                    operator: OperatorProcess) -> None:
    models = write_models(cluster, namespace)
    apply(cluster, namespace, manifest("roll", models.v1))
    wait_ready(cluster, namespace, "roll", models.v1[1])
    with Load(service_url(cluster, namespace, "roll")).running() as load:
        started = patch_spec(cluster, namespace, "roll", {"model": {"uri": models.v2[0], "digest": models.v2[1]}})
        st = wait_ready(cluster, namespace, "roll", models.v2[1])
        finished = time.monotonic()
        time.sleep(2)
    report("surge rollout", load, started, finished)
    assert load.failed == []
    assert load.ok_between(started, finished) > 10  # requests really flowed during the rollout
    assert st["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "withoutSurge": False, "whenNoRoom": "Wait",
                             "message": ""}
    reasons = [r for r, _ in mdep_events(cluster, namespace, "roll")]
    assert "ModelChanged" in reasons and "RolloutComplete" in reasons


def node_free_cpu(cluster: LocalCluster) -> Decimal:
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    bound = json.loads(cluster.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={NODE_NAME}",
                                       "-o", "json").stdout)["items"]
    return free_resources([node], bound)[NODE_NAME]["cpu"]


def no_runtime_pods_elsewhere(cluster: LocalCluster, namespace: str) -> bool:
    found = json.loads(cluster.kubectl("get", "pods", "-A", "-l", "modelfleet.dev/role=runtime", "-o", "json").stdout)
    return not [p for p in found["items"] if p["metadata"]["namespace"] != namespace]


def fill_node(cluster: LocalCluster, namespace: str, leave: Decimal) -> None:
    """A pod requesting all of the node's free CPU but `leave`."""
    cpu = node_free_cpu(cluster) - leave
    assert cpu > 0, f"the node has only {cpu + leave} CPU free"
    filler = image_pod(cluster, "filler", ["sleep", "600"],
                       container={"resources": {"requests": {"cpu": f"{int(cpu * 1000)}m"}}})
    apply(cluster, namespace, filler)
    wait_for(lambda: get(cluster, namespace, "pod", "filler")["status"].get("phase") == "Running", timeout=60,
             what="the filler pod running")


@pytest.mark.parametrize("policy", ["Wait", "Replace"])
def test_without_room_for_a_surge_pod_the_spec_decides(cluster: LocalCluster, namespace: str,
                                                       operator: OperatorProcess, policy: str) -> None:
    models = write_models(cluster, namespace)
    wait_for(lambda: no_runtime_pods_elsewhere(cluster, namespace), timeout=90, interval=1,
             what="runtime pods of earlier tests gone")
    cpu = Decimal("0.3")
    apply(cluster, namespace, manifest("full", models.v1, cpu="300m", rollout={"whenNoRoom": policy}))
    wait_ready(cluster, namespace, "full", models.v1[1])
    fill_node(cluster, namespace, leave=cpu - Decimal("0.1"))  # no room for a second 300m pod
    with Load(service_url(cluster, namespace, "full")).running() as load:
        started = patch_spec(cluster, namespace, "full", {"model": {"uri": models.v2[0], "digest": models.v2[1]}})
        if policy == "Wait":
            st = wait_for(lambda: (s := status(cluster, namespace, "full"))
                          and condition(s, "Progressing") == ("True", "WaitingForRoom") and s,
                          timeout=60, interval=1, what="Progressing=True WaitingForRoom")
            assert st["phase"] == "Progressing" and condition(st, "Available") == ("True", "ReplicasAvailable")
            assert "Insufficient cpu" in next(c["message"] for c in st["conditions"] if c["type"] == "Progressing")
            waiting = time.monotonic()
            time.sleep(10)  # the old pod keeps serving while the new one waits for room
            assert load.ok_between(waiting, time.monotonic()) > 5
            assert any(p["status"].get("phase") == "Pending" for p in pods(cluster, namespace, "full"))
            cluster.kubectl("delete", "pod", "filler", "-n", namespace, "--wait=false")  # room appears
        unavailable_seen = False

        def done() -> bool:
            nonlocal unavailable_seen
            st = status(cluster, namespace, "full")
            unavailable_seen |= condition(st, "Available")[0] == "False"
            return st.get("phase") == "Ready" and serving_only(cluster, namespace, "full", models.v2[1])

        wait_for(done, timeout=240, interval=1, what=f"the {policy} rollout done")
        finished = time.monotonic()
        time.sleep(2)
    st = status(cluster, namespace, "full")
    reasons = [r for r, _ in mdep_events(cluster, namespace, "full")]
    report(f"whenNoRoom {policy}", load, started, finished)
    if policy == "Wait":
        assert load.failed == []
        assert st["rollout"]["withoutSurge"] is False and "WaitingForRoom" in reasons
    else:
        gap = load.failed[-1][0] - load.failed[0][0] if load.failed else 0
        print(f"whenNoRoom Replace: {len(load.failed)} requests failed over {gap:.1f} s of downtime "
              f"(first: {load.failed[0][1] if load.failed else '-'})")
        assert st["rollout"]["withoutSurge"] is True and st["rollout"]["whenNoRoom"] == "Replace"
        assert "whenNoRoom is Replace" in st["rollout"]["message"] and "RollingWithoutSurge" in reasons
        strategy = get(cluster, namespace, "deployment", "full")["spec"]["strategy"]["rollingUpdate"]
        assert (strategy["maxSurge"], strategy["maxUnavailable"]) == (0, 1)
        assert unavailable_seen and load.failed  # the downtime the spec chose, reported and felt


# --- canaries -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with Prometheus(cluster, tmp_path_factory.mktemp("prometheus"), scrape_interval="2s") as server:
        yield server


def canary_spec(prometheus: Prometheus) -> dict[str, Any]:
    return {"steps": [{"weight": 50, "pauseSeconds": 20}],
            "analysis": {"prometheusAddress": prometheus.url,
                         "metrics": [{"name": "TimeToFirstTokenP95", "maxRatioToStable": 3},
                                     {"name": "ErrorRate", "max": 0.05}]}}


def canary_phase(cluster: LocalCluster, namespace: str, name: str, revision_not: str | None, phases: tuple[str, ...]):
    def check() -> dict[str, Any] | None:
        canary = status(cluster, namespace, name).get("canary") or {}
        return canary if canary.get("phase") in phases and canary.get("revision") != revision_not else None
    return check


def stable_hash(cluster: LocalCluster, namespace: str, name: str) -> str:
    return get(cluster, namespace, "deployment", name)["metadata"]["annotations"]["modelfleet.dev/template-hash"]


def canary_gone(cluster: LocalCluster, namespace: str, name: str) -> bool:
    return cluster.kubectl("get", "deployment", f"{name}-canary", "-n", namespace, check=False).returncode != 0 and \
        not [p for p in pods(cluster, namespace, name) if p["metadata"]["labels"].get("modelfleet.dev/track")]


def test_a_slow_canary_is_rolled_back_and_a_healthy_one_promoted(cluster: LocalCluster, namespace: str,
                                                                 operator: OperatorProcess,
                                                                 prometheus: Prometheus) -> None:
    models = write_models(cluster, namespace)
    apply(cluster, namespace, manifest("canary", models.v1, rollout={"canary": canary_spec(prometheus)}))
    wait_ready(cluster, namespace, "canary", models.v1[1])
    stable = stable_hash(cluster, namespace, "canary")
    with Load(service_url(cluster, namespace, "canary")).running() as load:
        # A slow version: every request waits 1 s more (the runtime's test-only latency fault).
        started = patch_spec(cluster, namespace, "canary", {"env": [{"name": "MODELFLEET_FAULT_LATENCY_MS",
                                                                     "value": "1000"}]})
        back = wait_for(canary_phase(cluster, namespace, "canary", None, ("RolledBack",)), timeout=180, interval=1,
                        what="the slow canary rolled back")
        rolled_back = time.monotonic()
        wait_for(lambda: canary_gone(cluster, namespace, "canary"), timeout=60, what="canary pods gone")
        assert stable_hash(cluster, namespace, "canary") == stable  # the stable version was never touched
        # A healthy version: the next model.
        promoting = patch_spec(cluster, namespace, "canary", {
            "env": None, "model": {"uri": models.v2[0], "digest": models.v2[1]}})
        done = wait_for(canary_phase(cluster, namespace, "canary", back["revision"], ("Promoted", "RolledBack")),
                        timeout=240, interval=1, what="the healthy canary decided")
        assert done["phase"] == "Promoted", json.dumps(done, indent=1)
        st = wait_ready(cluster, namespace, "canary", models.v2[1])
        promoted = time.monotonic()
        time.sleep(2)
    report("slow canary until rolled back", load, started, rolled_back)
    report("healthy canary until promoted", load, promoting, promoted)
    print("rolled back:", json.dumps(back["analysis"]), "\npromoted:", json.dumps(done["history"][-1]["analysis"]))
    assert load.failed == []  # the slow canary's requests were slow, not failed; promotion and rollback drop none
    ttft = next(a for a in back["analysis"] if a["metric"] == "TimeToFirstTokenP95")
    assert ttft["passed"] is False and float(ttft["value"]) >= 1.0 and float(ttft["value"]) > 3 * float(ttft["stableValue"])
    assert back["history"][-1]["decision"] == "Failed" and "TimeToFirstTokenP95" in back["message"]
    assert all(a["passed"] for a in done["history"][-1]["analysis"]) and done["history"][-1]["decision"] == "Passed"
    assert st["canary"]["phase"] == "Promoted" and canary_gone(cluster, namespace, "canary")
    assert stable_hash(cluster, namespace, "canary") == done["revision"]
    reasons = [r for r, _ in mdep_events(cluster, namespace, "canary")]
    assert {"CanaryStarted", "CanaryRolledBack", "CanaryPromoting", "CanaryPromoted"} <= set(reasons)


def test_a_failing_canary_is_rolled_back_on_its_error_rate(cluster: LocalCluster, namespace: str,
                                                           operator: OperatorProcess,
                                                           prometheus: Prometheus) -> None:
    models = write_models(cluster, namespace)
    apply(cluster, namespace, manifest("errors", models.v1, rollout={"canary": canary_spec(prometheus)}))
    wait_ready(cluster, namespace, "errors", models.v1[1])
    with Load(service_url(cluster, namespace, "errors")).running() as load:
        started = patch_spec(cluster, namespace, "errors", {"env": [{"name": "MODELFLEET_FAULT_ERROR_RATE",
                                                                     "value": "0.5"}]})
        back = wait_for(canary_phase(cluster, namespace, "errors", None, ("RolledBack",)), timeout=180, interval=1,
                        what="the failing canary rolled back")
        wait_for(lambda: canary_gone(cluster, namespace, "errors"), timeout=60, what="canary pods gone")
        after = time.monotonic()
        time.sleep(5)
    report("failing canary until rolled back", load, started, after)
    errors = next(a for a in back["analysis"] if a["metric"] == "ErrorRate")
    assert errors["passed"] is False and float(errors["value"]) > 0.05 and float(errors["stableValue"]) == 0
    # Only the canary's injected faults failed, and none once it was gone.
    assert load.failed and all("injected fault" in why for _, why in load.failed), load.failed[:3]
    assert all(at < after for at, _ in load.failed)
    st = status(cluster, namespace, "errors")
    assert st["phase"] == "Degraded" and condition(st, "Progressing") == ("False", "CanaryRolledBack")
    assert condition(st, "Available") == ("True", "ReplicasAvailable")
