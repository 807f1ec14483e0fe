"""The real exporters as subprocesses (`modelfleet serve`, `modelfleet train`) and a real Prometheus scraping them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelfleet.localcluster.processes import free_port
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Subprocess:
    """A command whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path, self.env = args, log_path, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.args[:4]} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_command(model_dir: Path, port: int, name: str) -> list[str]:
    return [sys.executable, "-m", "modelfleet.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", name, "--max-model-len", "256", "--max-num-seqs", "8"]


def trainer_config(directory: Path) -> Path:
    """A tiny run that outlives the test (it is stopped), logging every step and checkpointing often, so every
    modelfleet_trainer_* series has samples quickly."""
    config = yaml.safe_load((REPO / "examples" / "trainer-config.yaml").read_text())
    config["data"]["path"] = str(REPO / "examples" / "data" / "corpus.txt")
    config["training"].update(steps=100_000, globalBatchSize=4, microBatchSize=4, sequenceLength=32, warmupSteps=1,
                              evalEvery=5, logEvery=1)
    config["checkpoint"] = {"dir": str(directory / "checkpoints"), "every": 5, "keep": 1}
    config["output"] = {"path": str(directory / "model")}
    path = directory / "trainer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus(Subprocess):
    """Debian's prometheus binary scraping static targets every second, on a free loopback port."""

    def __init__(self, directory: Path, jobs: dict[str, tuple[str, dict[str, str]]]) -> None:
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target], "labels": labels}]}
                                     for job, (target, labels) in jobs.items()]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        super().__init__(["prometheus", f"--config.file={directory / 'prometheus.yml'}",
                          f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                          "--log.level=warn"], directory / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        wait_for(lambda: self.alive() and self._ready(), timeout=60, what=f"prometheus ready (log: {self.log_path})")

    def _ready(self) -> bool:
        try:
            return "Ready" in http_get(f"{self.url}/-/ready", timeout=1)
        except OSError:
            return False

    def targets_up(self) -> bool:
        targets = json.loads(http_get(f"{self.url}/api/v1/targets"))["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a query Prometheus rejects)."""
        answer = json.loads(http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]
