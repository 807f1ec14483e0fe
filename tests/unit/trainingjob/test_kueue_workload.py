"""Kueue admission as pure functions: the Workload a queued job gets, and what its status means for the job."""

from __future__ import annotations

import copy

from modelfleet_operator.conditions import get_condition
from modelfleet_operator.trainingjob import kueue, render
from modelfleet_operator.trainingjob.spec import parse_spec
from modelfleet_operator.trainingjob.status import decide
from tj_builders import NOW, UID, base_spec, make_job, make_pod

T0 = "2030-01-01T11:59:00Z"


def gpu_job(status: dict | None = None) -> dict:
    spec = base_spec()
    spec["resources"] = {"limits": {"nvidia.com/gpu": "4", "memory": "1Gi"}}
    spec["training"]["globalBatchSize"] = 8
    job = make_job(spec, status=status)
    job["metadata"]["labels"] = {kueue.QUEUE_LABEL: "team-a"}
    return job


def rendered_workload(job: dict) -> dict:
    spec = parse_spec("tj", "ns", job["spec"])
    return kueue.workload(job, "team-a", spec.nodes, render.pod(spec, job, 0, 0, "img", "IfNotPresent"))


def with_status(workload: dict, *conditions: tuple[str, str, str, str], **status) -> dict:
    workload = copy.deepcopy(workload)
    workload["metadata"].update(generation=1, resourceVersion="5")
    workload["status"] = {"conditions": [{"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": T0}
                                         for t, s, r, m in conditions], **status}
    return workload


ADMISSION = {"clusterQueue": "gpus", "podSetAssignments": [
    {"name": "main", "count": 2, "flavors": {"nvidia.com/gpu": "h100", "memory": "h100"},
     "resourceUsage": {"nvidia.com/gpu": "8", "memory": "2Gi"}}]}
ADMITTED = (("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpus"),
            ("Admitted", "True", "Admitted", "The workload is admitted"))
PENDING = ("QuotaReserved", "False", "Pending",
           "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor h100, 8 more needed")


def test_the_workload_is_one_pod_set_of_all_nodes_with_the_pod_resources() -> None:
    job = gpu_job()
    wl = rendered_workload(job)
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    assert wl["metadata"]["name"] == f"trainingjob-tj-{UID[:8]}" and wl["metadata"]["namespace"] == "ns"
    assert wl["metadata"]["ownerReferences"] == [{"apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
                                                  "name": "tj", "uid": UID, "controller": True,
                                                  "blockOwnerDeletion": True}]
    assert wl["metadata"]["labels"]["modelfleet.dev/trainingjob"] == "tj"
    assert wl["spec"]["queueName"] == "team-a"
    [pod_set] = wl["spec"]["podSets"]
    assert pod_set["name"] == "main" and pod_set["count"] == 2
    [container] = pod_set["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "4", "memory": "1Gi"}}
    assert "modelfleet.dev/node-rank" not in pod_set["template"]["metadata"]["labels"]


def test_queue_name_comes_from_the_label_only() -> None:
    assert kueue.queue_name(gpu_job()) == "team-a"
    assert kueue.queue_name(make_job()) is None


def test_a_pending_workload_says_why_in_kueues_words() -> None:
    admission = kueue.observe(with_status(rendered_workload(gpu_job()), PENDING), "team-a")
    assert not admission.admitted and not admission.evicted and admission.reason == "WaitingForKueue"
    assert "LocalQueue team-a" in admission.message and "insufficient unused quota for nvidia.com/gpu" in admission.message
    missing = kueue.observe(None, "team-a")
    assert not missing.admitted and "LocalQueue team-a" in missing.message
    unseen = kueue.observe(with_status(rendered_workload(gpu_job())), "team-a")
    assert not unseen.admitted and "is Kueue running" in unseen.message


def test_an_admitted_workload_names_its_flavors_and_admission_check_updates() -> None:
    checks = [{"name": "prov", "state": "Ready", "message": "", "lastTransitionTime": T0,
               "podSetUpdates": [{"name": "main", "nodeSelector": {"pool": "spot"}}, {"name": "other", "labels": {"x": "y"}}]}]
    admission = kueue.observe(with_status(rendered_workload(gpu_job()), *ADMITTED, admission=ADMISSION,
                                          admissionChecks=checks), "team-a")
    assert admission.admitted and admission.reason == "Admitted" and "ClusterQueue gpus" in admission.message
    assert admission.flavors == ("h100",)
    assert admission.pod_set_updates == ({"name": "main", "nodeSelector": {"pool": "spot"}},)


def test_quota_reserved_but_checks_pending_is_not_admitted() -> None:
    admission = kueue.observe(with_status(rendered_workload(gpu_job()), ADMITTED[0],
                                          ("Admitted", "False", "UnsatisfiedChecks", "not all checks ready"),
                                          admission=ADMISSION), "team-a")
    assert not admission.admitted and "admission checks" in admission.message


def test_eviction_takes_the_admission_back() -> None:
    evicted = with_status(rendered_workload(gpu_job()), *ADMITTED,
                          ("Evicted", "True", "Preempted", "Preempted to accommodate a higher priority Workload"),
                          admission=ADMISSION)
    admission = kueue.observe(evicted, "team-a")
    assert not admission.admitted and admission.evicted and admission.reason == "EvictedByKueue"
    assert "higher priority" in admission.message


def test_flavor_labels_tolerations_and_updates_reach_the_pod_without_overriding_ours() -> None:
    job = gpu_job()
    admission = kueue.Admission(True, "Admitted", "", flavors=("h100",),
                                pod_set_updates=({"name": "main", "nodeSelector": {"pool": "spot"},
                                                  "labels": {"modelfleet.dev/trainingjob": "not-ours", "team": "a"}},))
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    flavor = {"metadata": {"name": "h100"}, "spec": {"nodeLabels": {"nvidia.com/gpu.product": "H100"},
                                                     "tolerations": [toleration, toleration]}}
    update = kueue.pod_update(admission, [flavor])
    assert update.node_selector == {"nvidia.com/gpu.product": "H100", "pool": "spot"}
    assert update.tolerations == [toleration]
    pod = render.pod(parse_spec("tj", "ns", job["spec"]), job, 1, 0, "img", "IfNotPresent")
    pod["spec"]["tolerations"] = [toleration]
    updated = kueue.apply(pod, update)
    assert updated["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100", "pool": "spot"}
    assert updated["spec"]["tolerations"] == [toleration]
    assert updated["metadata"]["labels"]["modelfleet.dev/trainingjob"] == "tj" and updated["metadata"]["labels"]["team"] == "a"
    assert "nodeSelector" not in pod["spec"]  # the input is not changed


def test_a_finished_job_finishes_its_workload_once() -> None:
    admitted = with_status(rendered_workload(gpu_job()), *ADMITTED, admission=ADMISSION)
    patch = kueue.finished_status(admitted, False, "pod tj-node-0 failed", "2030-01-01T12:00:00Z")
    finished = get_condition(patch["conditions"], "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == ("True", "Failed", "pod tj-node-0 failed")
    assert get_condition(patch["conditions"], "Admitted")["status"] == "True"  # Kueue's own conditions are kept
    done = with_status(admitted, *ADMITTED, ("Finished", "True", "Succeeded", "done"), admission=ADMISSION)
    assert kueue.finished_status(done, True, "done", "2030-01-01T12:00:00Z") is None


def test_an_evicted_workload_releases_its_quota_and_is_requeued_after_preemption() -> None:
    evicted = with_status(rendered_workload(gpu_job()), *ADMITTED,
                          ("Evicted", "True", "Preempted", "Preempted to accommodate a higher priority Workload"),
                          admission=ADMISSION)
    patch = kueue.release_status(evicted, "2030-01-01T12:00:00Z")
    assert patch["admission"] is None
    states = {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}
    assert states["QuotaReserved"] == ("False", "Pending") and states["Admitted"] == ("False", "NoReservation")
    assert states["Requeued"] == ("True", "Preempted") and states["Evicted"] == ("True", "Preempted")
    stopped = with_status(evicted, *ADMITTED, ("Evicted", "True", "ClusterQueueStopped", "stopped"), admission=ADMISSION)
    assert get_condition(kueue.release_status(stopped, T0)["conditions"], "Requeued")["status"] == "False"
    assert kueue.release_status(with_status(evicted, *ADMITTED, admission=ADMISSION), T0) is None
    released = with_status(evicted, ("Evicted", "True", "Preempted", "x"), ("QuotaReserved", "False", "Pending", "x"))
    assert kueue.release_status(released, T0) is None


def test_decide_keeps_a_queued_job_suspended_without_pods_until_admitted() -> None:
    job = gpu_job()
    waiting = kueue.observe(with_status(rendered_workload(job), PENDING), "team-a")
    plan = decide(job, [], NOW, admission=waiting)
    assert plan.status["phase"] == "Suspended" and plan.create_pods == []
    suspended = get_condition(plan.status["conditions"], "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "WaitingForKueue")
    assert "insufficient unused quota" in suspended["message"]

    admitted = kueue.observe(with_status(rendered_workload(job), *ADMITTED, admission=ADMISSION), "team-a")
    plan = decide(make_job(job["spec"], status=plan.status), [], NOW, admission=admitted)
    assert plan.create_pods == [0, 1]
    resumed = get_condition(plan.status["conditions"], "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "Admitted") and "ClusterQueue gpus" in resumed["message"]


def test_decide_deletes_the_pods_of_an_evicted_job_with_a_warning() -> None:
    job = gpu_job(status={"phase": "Running", "restartCount": 0, "startTime": "2030-01-01T11:00:00Z"})
    evicted = kueue.observe(with_status(rendered_workload(job), *ADMITTED, ("Evicted", "True", "Preempted", "preempted"),
                                        admission=ADMISSION), "team-a")
    plan = decide(job, [make_pod(job, 0), make_pod(job, 1)], NOW, admission=evicted)
    assert plan.status["phase"] == "Suspended" and sorted(plan.delete_pods) == ["tj-node-0", "tj-node-1"]
    assert plan.status["restartCount"] == 0 and "startTime" not in plan.status
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "EvictedByKueue")]
