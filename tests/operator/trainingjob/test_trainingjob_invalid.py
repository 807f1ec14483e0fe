"""What admission cannot catch shows in the job's conditions, never as an empty status; a job cannot make the
operator do what its author could not (docs/security.md); `kubectl get tj` rounds the loss. The operator runs
with host paths refused."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for
from tests.operator.trainingjob.conftest import Jobs, job_manifest

pytestmark = pytest.mark.cluster

BAD_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zone", "operator": "Bogus", "values": ["a"]}]}]}}}


def test_pods_the_api_server_refuses_show_as_invalid_naming_the_field(jobs: Jobs, strict_operator) -> None:
    jobs.apply(job_manifest("affinity", affinity=BAD_AFFINITY))  # passed through: the schema cannot know
    running = wait_for(lambda: (c := jobs.condition("affinity", "Running")).get("reason") == "InvalidSpec" and c,
                       what="Running=False/InvalidSpec")
    assert running["status"] == "False"
    assert running["message"].startswith("spec.affinity: the API server refused the Pod affinity-node-")
    assert 'Invalid value: "Bogus": not a valid selector operator' in running["message"]
    assert jobs.condition("affinity", "Created")["reason"] == "InvalidSpec"
    assert jobs.status("affinity")["phase"] == "Pending" and jobs.pods("affinity") == []
    wait_for(lambda: any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in jobs.events("affinity")),
             what="an InvalidSpec Event")
    # Pod-template fields may change: fixing the field lets the job start.
    jobs.kubectl("patch", "trainingjob", "affinity", "--type=json", "-p", '[{"op": "remove", "path": "/spec/affinity"}]')
    jobs.wait_running_pods("affinity", 2, timeout=90)


def test_host_paths_fail_the_job_when_the_operator_does_not_allow_them(jobs: Jobs, strict_operator) -> None:
    jobs.apply(job_manifest("hostpath", data={"uri": "file:///srv/corpus/train.txt"}))
    status = jobs.wait_phase("hostpath", "Failed")
    failed = jobs.condition("hostpath", "Failed")
    assert failed["reason"] == "InvalidSpec" and jobs.condition("hostpath", "Running")["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.data.uri: file:// URIs mount a directory of the node")
    assert "MODELFLEET_ALLOW_HOST_PATHS=true" in failed["message"] and status["conditions"]
    assert jobs.pods("hostpath") == []


def test_an_existing_service_account_is_never_borrowed(jobs: Jobs, strict_operator) -> None:
    jobs.kubectl("create", "serviceaccount", "borrow-trainer")  # e.g. a more privileged identity
    jobs.apply(job_manifest("borrow"))
    running = wait_for(lambda: (c := jobs.condition("borrow", "Running")).get("reason") == "InvalidSpec" and c,
                       what="Running=False/InvalidSpec")
    assert running["message"].startswith("metadata.name: ServiceAccount borrow-trainer already exists and is not "
                                         "owned by this TrainingJob")
    assert jobs.pods("borrow") == []


def test_kubectl_get_shows_the_loss_rounded(jobs: Jobs, strict_operator) -> None:
    jobs.apply(job_manifest("loss"))
    jobs.wait_running_pods("loss", 2)
    jobs.report_progress("loss", {"step": 7, "totalSteps": 50, "loss": 2.4134567})
    wait_for(lambda: jobs.status("loss").get("progress", {}).get("lossDisplay") == "2.413", what="lossDisplay")
    table = jobs.kubectl("get", "tj", "loss").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "AGE"]
    assert table[1].split()[:5] == ["loss", "Running", "2", "7/50", "2.413"]
