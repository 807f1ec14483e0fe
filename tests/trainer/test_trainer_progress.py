"""Progress: stdout lines, the JSON file, the ConfigMap reporter (against a stand-in API server), Prometheus."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from model_runtime.artifact import read_manifest
from model_runtime.training.metrics import TrainerMetrics
from model_runtime.training.progress import ConfigMapReporter, FileReporter, Progress, format_line
from trainer_testlib import free_port

REPORT_KEYS = {"step", "totalSteps", "loss", "valLoss", "learningRate", "tokensPerSecond", "etaSeconds", "phase",
               "checkpointStep", "updatedAt"}


def test_a_run_reports_progress_on_stdout_in_the_file_and_in_the_manifest(reference_run):
    report = json.loads(reference_run["progress"].read_text())
    manifest = read_manifest(reference_run["root"] / "model")
    assert set(report) == REPORT_KEYS | {"output"}
    assert report["phase"] == "Succeeded" and report["step"] == report["totalSteps"] == 48
    assert report["checkpointStep"] == 48
    assert report["output"] == {"path": str(reference_run["root"] / "model"), "digest": manifest["digest"]}
    assert report["loss"] == manifest["finalLoss"] and report["valLoss"] == manifest["finalValLoss"]
    assert manifest["source"] == {"trainingJob": "fables", "namespace": "team-a"}
    assert manifest["datasetDigest"].startswith("sha256:") and manifest["createdAt"].endswith("Z")
    assert manifest["hyperparameters"]["training"]["globalBatchSize"] == 4

    lines = [line for line in reference_run["result"].stdout.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 1/48 (2.1%) loss ")
    for part in (" lr ", " tokens/s ", " eta "):
        assert part in lines[0]
    assert lines[-1].startswith("step 48/48 succeeded: model ")


def test_format_line():
    progress = Progress(step=120, total_steps=1000, loss=2.31414, val_loss=2.4012, learning_rate=2.95e-4,
                        tokens_per_second=18204.4, eta_seconds=242)
    assert format_line(progress) == "step 120/1000 (12.0%) loss 2.3141 val 2.4012 lr 2.95e-04 tokens/s 18,204 eta 4m02s"
    assert format_line(Progress(step=5, total_steps=10, phase="Checkpointing")) == "step 5/10 checkpointing"


def test_file_reporter_rewrites_valid_json_and_never_writes_nan(tmp_path):
    path = tmp_path / "sub" / "progress.json"
    reporter = FileReporter(path)
    reporter.report(Progress(step=1, total_steps=2, loss=float("nan")))
    reporter.report(Progress(step=2, total_steps=2, loss=1.5, phase="Saving"))
    report = json.loads(path.read_text())
    assert set(report) == REPORT_KEYS
    assert (report["step"], report["loss"], report["phase"]) == (2, 1.5, "Saving")
    assert json.loads(json.dumps(Progress(step=1, total_steps=2, loss=float("inf")).to_json()))["loss"] is None
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]


class FakeApiServer:
    """Answers PATCH /api/v1/namespaces/<ns>/configmaps/<name> the way kube-apiserver does, or with a chosen error."""

    def __init__(self) -> None:
        self.patches: list[dict] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.patches.append({"path": self.path, "contentType": self.headers["Content-Type"], "body": body})
                reply = (json.dumps({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "p"}, **body})
                         if outer.status == 200 else json.dumps({"kind": "Status", "code": outer.status}))
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def steps(self) -> list[int]:
        return [json.loads(p["body"]["data"]["progress"])["step"] for p in self.patches]


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    server = FakeApiServer()
    server.thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server.url}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield server
    server.server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_configmap_reporter_patches_at_most_once_per_interval_and_always_the_final_report(api_server):
    clock = Clock()
    reporter = ConfigMapReporter("job-progress", "team-a", min_interval=5, clock=clock)
    for step, at in [(1, 0), (2, 1), (3, 4.9), (4, 5.0), (5, 6)]:
        clock.now = 1000 + at
        reporter.report(Progress(step=step, total_steps=9))
    clock.now = 1006.5
    reporter.report(Progress(step=9, total_steps=9, phase="Succeeded", output={"path": "/m", "digest": "sha256:x"}),
                    final=True)
    assert api_server.steps() == [1, 4, 9]
    patch = api_server.patches[-1]
    assert patch["path"] == "/api/v1/namespaces/team-a/configmaps/job-progress"
    assert "merge-patch" in patch["contentType"]
    final = json.loads(patch["body"]["data"]["progress"])
    assert set(final) == REPORT_KEYS | {"output"} and final["phase"] == "Succeeded"


def test_configmap_reporter_survives_a_failing_api_with_one_warning_and_backs_off(api_server, caplog):
    clock = Clock()
    reporter = ConfigMapReporter("job-progress", "team-a", min_interval=5, max_interval=20, clock=clock)
    api_server.status = 500
    with caplog.at_level(logging.WARNING):
        for step, at in enumerate([0, 10, 30, 50], start=1):  # failures double the wait: 10, 20, then capped at 20
            clock.now = 1000 + at
            reporter.report(Progress(step=step, total_steps=99))
        clock.now = 1069
        reporter.report(Progress(step=5, total_steps=99))  # within the backoff: not attempted
    assert api_server.steps() == [1, 2, 3, 4]
    warnings = [r for r in caplog.records if "cannot patch ConfigMap team-a/job-progress" in r.getMessage()]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0].getMessage()
    assert "not-a-secret" not in caplog.text

    api_server.status = 200  # recovers: back to the normal interval
    clock.now = 1070
    reporter.report(Progress(step=6, total_steps=99))
    clock.now = 1075
    reporter.report(Progress(step=7, total_steps=99))
    assert api_server.steps()[-2:] == [6, 7]


def test_configmap_reporter_without_any_cluster_does_not_raise(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    reporter = ConfigMapReporter("p", "ns", clock=Clock())
    with caplog.at_level(logging.WARNING):
        reporter.report(Progress(step=1, total_steps=2), final=True)
        reporter.report(Progress(step=2, total_steps=2), final=True)
    assert len([r for r in caplog.records if "cannot patch ConfigMap" in r.getMessage()]) == 1


def test_prometheus_endpoint_serves_trainer_metrics():
    metrics = TrainerMetrics()
    port = metrics.serve(free_port(), addr="127.0.0.1")
    metrics.observe(Progress(step=7, total_steps=10, loss=1.25, learning_rate=3e-4, tokens_per_second=1234.0,
                             eta_seconds=3.0, checkpoint_step=5))
    metrics.checkpoint_duration.observe(0.2)
    metrics.tokens.inc(4096)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in ("modelfleet_trainer_step 7.0", "modelfleet_trainer_total_steps 10.0", "modelfleet_trainer_loss 1.25",
                 "modelfleet_trainer_learning_rate 0.0003", "modelfleet_trainer_tokens_per_second 1234.0",
                 "modelfleet_trainer_tokens_total 4096.0", "modelfleet_trainer_checkpoint_step 5.0",
                 'modelfleet_trainer_checkpoint_duration_seconds_bucket{le="0.25"} 1.0'):
        assert line in text, line
