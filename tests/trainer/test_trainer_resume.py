"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM, also through the per-node launcher) at a random
step and restarted ends with the same weights."""

from __future__ import annotations

import random
import signal
import subprocess

from safetensors.torch import load_file

import pytest

from trainer_testlib import REPO, launcher_env, read_history, run_train, tiny_config, train_command, trainer_env, write_config


def _variant(reference_run, tmp_path, **checkpoint):
    """The reference run's configuration with its own checkpoint and output directories."""
    config = {**reference_run["config"],
              "checkpoint": {**reference_run["config"]["checkpoint"], "dir": str(tmp_path / "checkpoints"), **checkpoint},
              "output": {"path": str(tmp_path / "model")}}
    return config, write_config(tmp_path / "config.yaml", config)


def _signal_at_step(path, step, sig, env=None):
    """Run the trainer and send `sig` once it reports `step` (one stdout line per step: logEvery 1)."""
    process = subprocess.Popen(train_command(path), env=env or trainer_env(), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= step:
                process.send_signal(sig)
                break
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, stderr


def _resume_and_assert_reference_weights(path, tmp_path, reference_root, env=None):
    resumed = run_train(path, env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    ours = load_file(str(tmp_path / "model" / "model.safetensors"))
    reference = load_file(str(reference_root / "model" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    for name in reference:
        assert ours[name].dtype == reference[name].dtype
        assert ours[name].equal(reference[name]), f"{name} differs after the restart"


def test_sigkill_at_random_step_then_restart_matches_uninterrupted_run(reference_run, tmp_path):
    config, path = _variant(reference_run, tmp_path)
    total = config["training"]["steps"]
    kill_at = random.SystemRandom().randint(4, total // 2)  # (pytest plugins may seed the global RNG)
    print(f"killing at step {kill_at} of {total}")

    returncode, _ = _signal_at_step(path, kill_at, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert not (tmp_path / "model").exists(), "the run finished before it was killed"

    _resume_and_assert_reference_weights(path, tmp_path, reference_run["root"])
    # The loss curve is the uninterrupted one too (records past the checkpoint were dropped and recomputed).
    def curve(directory):
        return [(r["step"], r["loss"], r["learningRate"], r.get("valLoss")) for r in read_history(directory)]

    assert curve(tmp_path / "checkpoints") == curve(reference_run["root"] / "checkpoints")


def test_sigterm_checkpoints_the_current_step_and_a_restart_matches_uninterrupted_run(reference_run, tmp_path):
    """Eviction and preemption send SIGTERM: the run saves the step it is on (not the last periodic
    checkpoint) and exits 143; the restarted run ends with the uninterrupted run's weights."""
    config, path = _variant(reference_run, tmp_path, every=1000)  # no periodic checkpoint before the end
    total = config["training"]["steps"]
    stop_at = random.SystemRandom().randint(4, total // 2)

    _stop_and_assert_one_checkpoint_at_the_current_step(path, tmp_path, stop_at, total, trainer_env())
    _resume_and_assert_reference_weights(path, tmp_path, reference_run["root"])


def _stop_and_assert_one_checkpoint_at_the_current_step(path, tmp_path, stop_at, total, env):
    returncode, stderr = _signal_at_step(path, stop_at, signal.SIGTERM, env)
    assert returncode == 143, stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1, checkpoints
    saved = int(checkpoints[0].split("-")[1])
    assert stop_at <= saved < total and "stopped by SIGTERM after checkpointing step" in stderr
    assert not (tmp_path / "model").exists()
    return stderr


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted run of 2 workers under the per-node launcher (the reference for its restarts)."""
    root = tmp_path_factory.mktemp("two-process")
    config = tiny_config(root, training={"steps": 16, "microBatchSize": 1, "evalEvery": 8},
                         checkpoint={"every": 1000})
    result = run_train(write_config(root / "config.yaml", config), launcher_env(2))
    assert result.returncode == 0, result.stderr
    return {"root": root, "config": config}


def test_sigterm_through_the_launcher_exits_143_after_every_rank_checkpointed(two_process_run, tmp_path):
    """The pod's SIGTERM reaches the per-node launcher (PID 1), which passes it to its workers: they agree on
    the step to stop after, rank 0 checkpoints it with every rank's RNG state, and the launcher exits 143."""
    config, path = _variant(two_process_run, tmp_path)
    total = config["training"]["steps"]
    stop_at = random.SystemRandom().randint(3, total // 2)
    stderr = _stop_and_assert_one_checkpoint_at_the_current_step(path, tmp_path, stop_at, total, launcher_env(2))
    assert stderr.count("stopped by SIGTERM after checkpointing step") == 2  # both ranks, the same step
    assert "every worker checkpointed its current step (exit 143)" in stderr

    _resume_and_assert_reference_weights(path, tmp_path, two_process_run["root"], launcher_env(2))
