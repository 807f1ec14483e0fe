"""On a CUDA machine: bf16 training on the GPU (NCCL when two GPUs exist) writes a model that loads in fp32."""

from __future__ import annotations

import pytest
import torch

from model_runtime.artifact import read_manifest
from model_runtime.llama import load_pretrained
from trainer_testlib import free_port, read_history, run_train, tiny_config, trainer_env, write_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_training_on_gpus(tmp_path):
    processes = min(2, torch.cuda.device_count())
    config = tiny_config(tmp_path, training={"steps": 20, "precision": "bf16", "microBatchSize": 4 // processes,
                                             "learningRate": 3e-3})
    env = trainer_env()
    if processes > 1:
        env.update(PET_NNODES="1", PET_NPROC_PER_NODE=str(processes), PET_NODE_RANK="0",
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(free_port()))
    result = run_train(write_config(tmp_path / "config.yaml", config), env)
    assert result.returncode == 0, result.stderr
    history = read_history(tmp_path / "checkpoints")
    assert history[-1]["loss"] < history[0]["loss"]
    assert read_manifest(tmp_path / "model")["hyperparameters"]["worldSize"] == processes
    model = load_pretrained(tmp_path / "model")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
