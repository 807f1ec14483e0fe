"""Real exporters for the metrics tests: the runtime server on a tiny model, a running trainer, and (for the
cluster tests) the operator fixtures of tests/operator, reused as they are."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from model_runtime.artifact import save_model_dir
from model_runtime.llama import LlamaConfig, LlamaForCausalLM
from model_runtime.tokenizer import byte_tokenizer
from modelfleet.localcluster.processes import free_port
from tests.helpers import wait_for
from tests.metrics.exporters import Subprocess, http_get, serve_command, trainer_config
from tests.operator.conftest import crds, operator  # noqa: F401  (fixtures, re-exported for tests/metrics)
from tests.operator.trainingjob.conftest import jobs  # noqa: F401  (a namespace with a bound claim)

MODEL_NAME = "tiny-metrics"


@dataclass
class Exporter:
    process: Subprocess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return http_get(f"{self.url}/metrics")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    model.init_weights(0)
    target = tmp_path_factory.mktemp("models") / MODEL_NAME
    save_model_dir(model, byte_tokenizer(), target)
    return target


@pytest.fixture(scope="session")
def runtime(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """`modelfleet serve` as a real process, ready to answer."""
    port = free_port()
    process = Subprocess(serve_command(model_dir, port, MODEL_NAME), tmp_path_factory.mktemp("runtime") / "serve.log")
    process.start()
    exporter = Exporter(process, port)

    def ready() -> bool:
        process.alive()
        try:
            http_get(f"{exporter.url}/ready", timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_for(ready, timeout=300, what=f"modelfleet serve /ready (log: {process.log_path})")
        yield exporter
    finally:
        process.stop()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """`modelfleet train` as a real process, past its first checkpoint and evaluation. Module-scoped: it trains
    (and takes a CPU) until stopped."""
    directory = tmp_path_factory.mktemp("trainer")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(directory), "MODELFLEET_METRICS_PORT": str(port),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = Subprocess([sys.executable, "-m", "modelfleet.cli", "train", "--config", str(trainer_config(directory))],
                         directory / "train.log", env)
    process.start()
    exporter = Exporter(process, port)

    def checkpointed() -> bool:
        process.alive()
        try:
            text = exporter.metrics()
        except OSError:
            return False
        return "modelfleet_trainer_checkpoint_duration_seconds_count 0.0" not in text and \
            "modelfleet_trainer_validation_loss " in text

    try:
        wait_for(checkpointed, timeout=120, what=f"a trainer checkpoint and evaluation (log: {process.log_path})")
        yield exporter
    finally:
        process.stop()
