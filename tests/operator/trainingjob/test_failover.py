"""High availability: two operator processes elect a leader on one Lease; the leader is SIGKILLed in the middle of
a burst of TrainingJobs, gang restarts and ModelDeployment rollouts. The standby takes over, and nothing is lost or
done twice: every job gets its pods exactly once per attempt, no restart is counted twice, no Event is posted twice.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.helpers import ON_FAKE_NODES, wait_for
from tests.operator.conftest import OperatorProcess
from tests.operator.trainingjob.conftest import Jobs, job_manifest
from tests.operator.trainingjob.test_trainingjob_kill import PodRecorder

pytestmark = pytest.mark.cluster

JOBS = 24
RESTARTED = 4  # jobs whose rank-1 pod fails just before the kill
DEPLOYMENTS = 3
TAKEOVER_LIMIT_SECONDS = 25.0  # lease 15 s + retry 2 s + the new leader's start, on a loaded machine


def metric(operator: OperatorProcess, series: str) -> float:
    with urllib.request.urlopen(operator.metrics_url, timeout=2) as response:
        line = next((l for l in response.read().decode().splitlines() if l.startswith(series + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def is_leader(operator: OperatorProcess) -> bool:
    try:
        return metric(operator, "modelfleet_operator_leader") == 1
    except OSError:
        return False


def mdep(name: str, replicas: int, image_tag: str) -> dict[str, Any]:
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"uri": "s3://models/tiny", "digest": "sha256:" + "11" * 32}, "replicas": replicas,
                     "image": f"registry.k8s.io/pause:{image_tag}", **ON_FAKE_NODES}}


def events_by(jobs: Jobs, kind: str) -> Counter[tuple[str, str, str]]:
    out = jobs.kubectl("get", "events", "--field-selector", f"involvedObject.kind={kind}", "-o", "json").stdout
    return Counter((e["involvedObject"]["name"], e["reason"], e["message"]) for e in json.loads(out)["items"])


@pytest.fixture
def pair(cluster: Any, crds: list[str], tmp_path: Any) -> Any:
    """Two operators on one Lease: the first to start leads, the second stands by."""
    tag = uuid.uuid4().hex[:8]
    shared = {"MODELFLEET_LEADER_ELECTION_LEASE": f"failover-{tag}", "MODELFLEET_ALLOW_HOST_PATHS": "true"}
    first = OperatorProcess(cluster, tmp_path / "first.log",
                            {**shared, "MODELFLEET_LEADER_ELECTION_IDENTITY": f"first-{tag}"})
    second = OperatorProcess(cluster, tmp_path / "second.log",
                             {**shared, "MODELFLEET_LEADER_ELECTION_IDENTITY": f"second-{tag}"})
    first.start()
    wait_for(lambda: is_leader(first), timeout=30, what="the first operator to lead")
    second.start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_standby_takes_over_a_burst_without_losing_or_doubling_anything(jobs: Jobs, pair: Any) -> None:
    leader, standby = pair
    time.sleep(3)  # a standby that would (wrongly) lead says so on its first bid, within one retry period
    assert not is_leader(standby), "the second operator leads although the first holds the Lease"
    names = [f"fo-{i}" for i in range(JOBS)]
    recorders = {name: PodRecorder(jobs.cluster, jobs.namespace, name) for name in names[:RESTARTED + 1]}
    trigger = recorders[names[RESTARTED]]
    try:
        # The ModelDeployments first, so that their rollouts (a new image) overlap the kill.
        for i in range(DEPLOYMENTS):
            jobs.apply(mdep(f"fo-md-{i}", 2, "3.9"))
        for i in range(DEPLOYMENTS):
            wait_for(lambda i=i: (jobs.get("modeldeployment", f"fo-md-{i}") or {}).get("status", {}).get("phase")
                     == "Ready", timeout=60, what=f"fo-md-{i} Ready")
        for name in names[:RESTARTED]:
            jobs.apply(job_manifest(name, training={"steps": 10, "globalBatchSize": 4}))
        for name in names[:RESTARTED]:
            jobs.wait_running_pods(name, 2, timeout=60)
            jobs.wait_phase(name, "Running", timeout=30)

        # The burst: failing pods (gang restarts), rollouts and new jobs, all at once; the leader dies amid it, once
        # a restart is under way and the first of the new jobs' pods exists.
        for name in names[:RESTARTED]:
            jobs.end_pod(f"{name}-node-1", 1)
        wait_for(lambda: any(jobs.status(n).get("restartCount") for n in names[:RESTARTED]), timeout=30,
                 interval=0.05, what="a gang restart under way")
        for i in range(DEPLOYMENTS):
            jobs.apply(mdep(f"fo-md-{i}", 3, "3.10"))
        killed_at: list[float] = []

        def kill_once(_type: str, _pod: dict[str, Any]) -> None:
            if not killed_at:
                leader.kill()
                killed_at.append(time.monotonic())

        trigger.on_event = kill_once  # at the first pod of the burst's first job, from the watch's thread
        jobs.apply({"apiVersion": "v1", "kind": "List", "items": [
            job_manifest(name, training={"steps": 10, "globalBatchSize": 4}) for name in names[RESTARTED:]]})
        wait_for(lambda: killed_at, timeout=30, interval=0.05, what="the first pod of the burst, to kill the leader")
        trigger.on_event = None
        killed = killed_at[0]
        wait_for(lambda: is_leader(standby), timeout=TAKEOVER_LIMIT_SECONDS, interval=0.1,
                 what="the standby to take the Lease over")
        takeover = time.monotonic() - killed
        print(f"\ntakeover after SIGKILL of the leader: {takeover:.1f} s")

        for name in names[RESTARTED:]:
            pods = jobs.wait_running_pods(name, 2, timeout=90)
            assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-node-0", f"{name}-node-1"]
            assert jobs.wait_phase(name, "Running").get("restartCount", 0) == 0
        for name in names[:RESTARTED]:
            jobs.wait_running_pods(name, 2, attempt=1, timeout=90)
            status = jobs.wait_phase(name, "Running")
            assert status["restartCount"] == 1, f"{name}: the restart was lost or counted twice"
            assert [(f["pod"], f["exitCode"]) for f in status["failures"]] == [(f"{name}-node-1", 1)]
            recorder = recorders[name]
            wait_for(lambda r=recorder: len(r.created) == 4, what=f"{name}: 4 pod objects seen")
            assert sorted(recorder.created.values()) == sorted([f"{name}-node-0", f"{name}-node-1"] * 2), \
                f"{name}: a pod was created twice"
        for i in range(DEPLOYMENTS):
            name = f"fo-md-{i}"
            st = wait_for(lambda n=name: (s := (jobs.get("modeldeployment", n) or {}).get("status") or {})
                          .get("phase") == "Ready" and s.get("readyReplicas") == 3 and s, timeout=90,
                          what=f"{name} rolled out to 3 ready replicas")
            deployment = jobs.get("deployment", name)
            assert deployment["spec"]["replicas"] == 3
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.k8s.io/pause:3.10"
            assert st["observedGeneration"] == jobs.get("modeldeployment", name)["metadata"]["generation"]

        # Not one Event twice: the old leader writes status before it posts, and the new one posts only changes.
        for kind in ("TrainingJob", "ModelDeployment"):
            doubled = {key: n for key, n in events_by(jobs, kind).items() if n > 1}
            assert not doubled, f"{kind} Events posted more than once: {doubled}"
        assert "became leader" in standby.log()
        assert metric(standby, 'modelfleet_operator_pods_created_total{kind="TrainingJob"}') > 0, \
            "the new leader created no pod: the leader was not killed mid-burst"
        assert standby.process is not None and standby.process.poll() is None

        # A leader that is stopped (SIGTERM, as when its pod is deleted) hands the Lease over at once.
        standby.stop()
        assert standby.process.returncode == 0, standby.log()[-2000:]
        lease = jobs.cluster.kubectl("get", "lease", standby.extra_env["MODELFLEET_LEADER_ELECTION_LEASE"], "-n",
                                     "default", "-o", "json").stdout
        assert json.loads(lease)["spec"]["holderIdentity"] == ""
    finally:
        for recorder in recorders.values():
            recorder.stop()
