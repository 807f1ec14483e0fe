"""Kill-safety: SIGKILL the operator in the middle of its work; after a restart no pod is duplicated,
no restart is lost, and the job carries on."""

from __future__ import annotations

import threading
from typing import Callable

import pytest
from kubernetes import client, watch

from tests.helpers import wait_for
from tests.operator.trainingjob.conftest import Jobs, job_manifest

pytestmark = pytest.mark.cluster


class PodRecorder:
    """Watches a job's pods and remembers every pod object ever created (by UID), like an audit log."""

    def __init__(self, cluster, namespace: str, job: str) -> None:
        self.api = client.CoreV1Api(cluster.api_client())
        self.namespace, self.selector = namespace, f"modelfleet.dev/trainingjob={job}"
        self.created: dict[str, str] = {}  # uid -> pod name
        self.deleted: set[str] = set()
        self.on_event: Callable[[str, dict], None] | None = None
        self.stopped = False
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._record()
        except Exception:
            if not self.stopped:  # the connection breaks when the test's namespace goes away
                raise

    def _record(self) -> None:
        for event in self.watch.stream(self.api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                       timeout_seconds=300):
            pod = event["raw_object"]
            uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
            self.created.setdefault(uid, name)
            if event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp"):
                self.deleted.add(uid)
            if self.on_event:
                self.on_event(event["type"], pod)

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


def test_sigkill_mid_creation_and_mid_restart_duplicates_nothing(cluster, jobs: Jobs, operator) -> None:
    recorder = PodRecorder(cluster, jobs.namespace, "kill")
    killed = threading.Event()

    def kill_once(_type: str, _pod: dict) -> None:
        if not killed.is_set():
            killed.set()
            operator.kill()

    try:
        # 1. Killed as soon as the first of the 4 pods appears: the operator is in the middle of creating them.
        recorder.on_event = kill_once
        jobs.apply(job_manifest("kill", nodes=4, training={"steps": 10, "globalBatchSize": 4}))
        wait_for(killed.is_set, what="the first pod, to kill the operator")
        recorder.on_event = None
        operator.start()
        pods = jobs.wait_running_pods("kill", 4)
        assert [p["metadata"]["name"] for p in pods] == [f"kill-node-{r}" for r in range(4)]
        jobs.wait_phase("kill", "Running")
        assert sorted(recorder.created.values()) == [f"kill-node-{r}" for r in range(4)], "a pod was created twice"

        # 2. Killed as soon as the gang restart starts deleting pods: the restart is neither lost nor counted twice.
        killed.clear()
        recorder.on_event = lambda type_, pod: pod["metadata"].get("deletionTimestamp") and kill_once(type_, pod)
        jobs.end_pod("kill-node-2", 1)
        wait_for(killed.is_set, what="the restart's first deletion, to kill the operator")
        recorder.on_event = None
        operator.start()
        jobs.wait_running_pods("kill", 4, attempt=1)
        status = jobs.wait_phase("kill", "Running")
        assert status["restartCount"] == 1
        assert [(f["pod"], f["exitCode"]) for f in status["failures"]] == [("kill-node-2", 1)]
        wait_for(lambda: len(recorder.created) == 8, what="8 pod objects seen")
        assert sorted(recorder.created.values()) == sorted([f"kill-node-{r}" for r in range(4)] * 2)
    finally:
        recorder.stop()
