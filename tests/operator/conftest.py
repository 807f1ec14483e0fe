"""Fixtures for operator tests: the CRDs installed, and the operator running as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.processes import free_port
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> list[str]:
    files = sorted((REPO / "crds").glob("*.yaml"))
    for file in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(file))  # the chart may have made them
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return [f.name for f in files]


class OperatorProcess:
    """`modelfleet operator` against the test cluster, as a subprocess that tests may kill and restart."""

    def __init__(self, cluster: LocalCluster, log_path: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.cluster = cluster
        self.log_path = log_path
        # Its own Lease (so operators of different test modules do not stand by for each other) and a stable
        # identity (so a restarted process takes its Lease back at once, like a restarted container of one pod).
        tag = uuid.uuid4().hex[:8]
        self.extra_env = {"MODELFLEET_LEADER_ELECTION_LEASE": f"test-operator-{tag}",
                          "MODELFLEET_LEADER_ELECTION_NAMESPACE": "default",
                          "MODELFLEET_LEADER_ELECTION_IDENTITY": f"test-operator-{tag}", **(env or {})}
        self.args = list(args or [])  # of `modelfleet operator`
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # what it was started with

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def start(self, timeout: float = 60) -> None:
        env = {**self.cluster.env, "MODELFLEET_METRICS_PORT": str(self.metrics_port),
               "MODELFLEET_HEALTH_PORT": str(self.health_port), "PYTHONUNBUFFERED": "1",
               "MODELFLEET_METRICS_ADDRESS": "127.0.0.1", "MODELFLEET_HEALTH_ADDRESS": "127.0.0.1"}
        runtime_image = getattr(self.cluster, "images", {}).get("runtime")
        if runtime_image:  # the image built from images/runtime.Dockerfile, loaded into the real node
            env |= {"MODELFLEET_TRAINER_IMAGE": runtime_image, "MODELFLEET_RUNTIME_IMAGE": runtime_image}
        env |= self.extra_env
        self.env = env
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "operator", *self.args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(self._healthy, timeout=timeout, what=f"operator /healthz (log: {self.log_path})")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}; log:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like a crashed or evicted operator pod."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory,
                 allow_host_paths: bool) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log",
                           {"MODELFLEET_ALLOW_HOST_PATHS": str(allow_host_paths).lower()})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        if os.environ.get("MODELFLEET_SHOW_OPERATOR_LOG"):
            print(proc.log()[-20000:])


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, crds: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """Configured like on a local cluster: host paths (file:// URIs) allowed."""
    yield from run_operator(cluster, tmp_path_factory, allow_host_paths=True)


@pytest.fixture(scope="module")
def strict_operator(cluster: LocalCluster, crds: list[str],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """Configured like the Helm chart's default: host paths refused."""
    yield from run_operator(cluster, tmp_path_factory, allow_host_paths=False)
