"""Distributed training: the per-node launcher (PET_* env), DDP on gloo, exit codes through the launcher."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from safetensors.torch import load_file

from model_runtime.artifact import read_manifest
from model_runtime.training.distributed import (
    LauncherEnv,
    MasterUnreachableError,
    WorkerEnv,
    exit_code_after_signal,
    record_exit_code,
    root_cause_exit_code,
    wait_for_master,
)
from model_runtime.training.exitcodes import NONFINITE_LOSS, ConfigError
from trainer_testlib import REPO, free_port, launcher_env, read_history, run_train, tiny_config, trainer_env, write_config


def test_two_processes_give_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    steps = 6
    # One process: 2 micro-batches of 2 (gradient accumulation). Two: 2 micro-batches of 1 each (no_sync + allreduce).
    single = tiny_config(tmp_path / "one", training={"steps": steps, "microBatchSize": 2, "evalEvery": 3})
    double = tiny_config(tmp_path / "two", training={"steps": steps, "microBatchSize": 1, "evalEvery": 3})
    one = run_train(write_config(tmp_path / "one.yaml", single), trainer_env(OMP_NUM_THREADS="1"))
    assert one.returncode == 0, one.stderr
    two = run_train(write_config(tmp_path / "two.yaml", double), launcher_env(2))
    assert two.returncode == 0, two.stderr
    assert read_manifest(tmp_path / "two" / "model")["hyperparameters"]["worldSize"] == 2

    curve_one, curve_two = read_history(tmp_path / "one" / "checkpoints"), read_history(tmp_path / "two" / "checkpoints")
    assert [r["step"] for r in curve_one] == [r["step"] for r in curve_two] == list(range(1, steps + 1))
    for a, b in zip(curve_one, curve_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
        assert ("valLoss" in a) == ("valLoss" in b) == (a["step"] % 3 == 0)
        if "valLoss" in a:  # both evaluate the same validation sequences, split differently over ranks
            assert a["valLoss"] == pytest.approx(b["valLoss"], rel=1e-5), a["step"]
    assert curve_one[-1]["loss"] < curve_one[0]["loss"]
    weights_one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for name, tensor in weights_one.items():
        assert (tensor - weights_two[name]).abs().max().item() < 1e-4, name


def test_nonfinite_loss_in_a_worker_exits_70_through_the_launcher_and_keeps_the_last_checkpoint(tmp_path):
    # An absurd learning rate blows the weights up within a couple of updates.
    config = tiny_config(tmp_path, training={"steps": 6, "learningRate": 1e30, "warmupSteps": 0, "gradClip": 0,
                                             "globalBatchSize": 2, "microBatchSize": 1},
                         checkpoint={"every": 1, "keep": 3})
    result = run_train(write_config(tmp_path / "config.yaml", config), launcher_env(2))
    assert result.returncode == NONFINITE_LOSS, result.stderr
    found = re.search(r"training loss is (nan|inf) at step (\d+); the last good checkpoint is step (\d+)", result.stderr)
    assert found, result.stderr
    bad, kept = int(found.group(2)), int(found.group(3))
    assert kept == bad - 1 >= 1
    checkpoints = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert checkpoints[-1].name == f"step-{kept:08d}"
    for checkpoint in checkpoints:
        assert math.isfinite(json.loads((checkpoint / "meta.json").read_text())["loss"])
    assert not (tmp_path / "model").exists()


def test_wait_for_master_waits_until_the_port_accepts_connections():
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later() -> None:
        time.sleep(0.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    started = time.monotonic()
    try:
        wait_for_master("127.0.0.1", port, timeout=30, interval=0.1)
    finally:
        thread.join()
        listener.close()
    assert time.monotonic() - started >= 0.4


def test_wait_for_master_gives_up_with_a_clear_error():
    port = free_port()
    with pytest.raises(MasterUnreachableError, match=rf"master 127.0.0.1:{port} did not accept TCP connections within 1s"):
        wait_for_master("127.0.0.1", port, timeout=1, interval=0.2)


def test_launcher_mode_only_with_pet_variables_and_without_local_rank():
    pet = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0.job",
           "PET_MASTER_PORT": "29500"}
    launcher = LauncherEnv.from_env(pet)
    assert launcher == LauncherEnv(nnodes=2, nproc_per_node=4, node_rank=1, master_addr="job-node-0.job", master_port=29500)
    assert launcher.world_size == 8
    assert LauncherEnv.from_env({**pet, "LOCAL_RANK": "0"}) is None  # a worker started by torchrun or by us
    assert LauncherEnv.from_env({}) is None
    with pytest.raises(ConfigError, match="PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK"):
        LauncherEnv.from_env({**pet, "PET_NODE_RANK": "2"})


def test_worker_env_reads_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    assert WorkerEnv.from_env(env) == WorkerEnv(rank=3, world_size=4, local_rank=1, master_addr="10.0.0.1", master_port=1234)
    assert WorkerEnv.from_env({}) == WorkerEnv()
    with pytest.raises(ConfigError, match="RANK/WORLD_SIZE"):
        WorkerEnv.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE: must be an integer"):
        WorkerEnv.from_env({"WORLD_SIZE": "two"})


def test_runs_under_plain_torchrun(tmp_path):
    config = tiny_config(tmp_path, training={"steps": 2, "evalEvery": 0, "microBatchSize": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "model_runtime.training.cli", "--config", str(write_config(tmp_path / "config.yaml", config))]
    result = subprocess.run(command, env=trainer_env(OMP_NUM_THREADS="1"), cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "model")["hyperparameters"]["worldSize"] == 2


def test_the_launcher_reports_the_root_cause_not_the_teardown():
    # rank 1 exited 70; rank 0 was SIGTERMed by the agent in the same second.
    assert root_cause_exit_code([-15, 70], [100, 100]) == 70
    assert root_cause_exit_code([-15, 70], [99, 100]) == 143  # killed first: the signal is the cause
    assert root_cause_exit_code([1, 65], [101, 100]) == 65


def test_after_a_signal_the_launcher_exits_143_only_when_every_worker_stopped_by_itself(tmp_path):
    assert exit_code_after_signal([143, 143]) == 143  # every worker checkpointed and stopped
    assert exit_code_after_signal([143, None]) == 1  # one was killed before it could: retryable failure
    assert exit_code_after_signal([143, 70]) == 70  # a worker's own failure wins
    assert exit_code_after_signal([0, 0]) == 0  # the run had finished
    record_exit_code({"MODELFLEET_EXIT_STATUS_DIR": str(tmp_path), "LOCAL_RANK": "1"}, 143)
    record_exit_code({"MODELFLEET_EXIT_STATUS_DIR": str(tmp_path)}, 1)  # not a worker: nothing recorded
    assert [p.name for p in tmp_path.iterdir()] == ["1"] and (tmp_path / "1").read_text() == "143"
