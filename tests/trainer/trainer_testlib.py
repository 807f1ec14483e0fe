"""Helpers for the trainer tests: tiny configurations, a clean environment, running `modelfleet train`."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "data" / "corpus.txt"
EXAMPLE_CONFIG = REPO / "examples" / "trainer-config.yaml"

# Variables that would turn a test run into a worker of someone else's job.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NNODES",
             "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "MODELFLEET_TRAINER_CONFIG",
             "MODELFLEET_PROGRESS_FILE", "MODELFLEET_PROGRESS_CONFIGMAP", "KUBECONFIG", "MODELFLEET_JOB_NAME",
             "MODELFLEET_NAMESPACE")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def tiny_config(tmp_path: Path, **override: Any) -> dict[str, Any]:
    """A run of a few seconds: a 2-layer, 32-wide model on the bundled corpus. ``None`` removes a key."""
    base = {
        "model": {"layers": 2, "hiddenSize": 32, "heads": 4, "kvHeads": 2, "contextLength": 64},
        "data": {"path": str(CORPUS), "format": "text", "validationFraction": 0.05},
        "tokenizer": {"type": "byte"},
        "training": {"steps": 8, "globalBatchSize": 4, "microBatchSize": 2, "sequenceLength": 32,
                     "learningRate": 3e-3, "warmupSteps": 2, "evalEvery": 4, "evalBatches": 2, "logEvery": 1, "seed": 0},
        "checkpoint": {"dir": str(tmp_path / "checkpoints"), "every": 4, "keep": 2},
        "output": {"path": str(tmp_path / "model")},
    }
    return deep_merge(base, override)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update({"MODELFLEET_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def launcher_env(nproc: int) -> dict[str, str]:
    """`modelfleet train` as the launcher of `nproc` local workers (one node)."""
    return trainer_env(PET_NNODES="1", PET_NPROC_PER_NODE=str(nproc), PET_NODE_RANK="0",
                       PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")


def train_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "modelfleet.cli", "train", "--config", str(config_path)]


def run_train(config_path: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config_path), env=env or trainer_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def read_history(checkpoint_dir: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(checkpoint_dir) / "history.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
