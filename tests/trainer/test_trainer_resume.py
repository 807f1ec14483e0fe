"""Exact resume: a run killed with SIGKILL at a random step and restarted ends with the same weights."""

from __future__ import annotations

import random
import signal
import subprocess

from safetensors.torch import load_file

from trainer_testlib import REPO, read_history, train_command, trainer_env, write_config


def _variant(reference_run, tmp_path, **checkpoint):
    """The reference run's configuration with its own checkpoint and output directories."""
    config = {**reference_run["config"],
              "checkpoint": {**reference_run["config"]["checkpoint"], "dir": str(tmp_path / "checkpoints"), **checkpoint},
              "output": {"path": str(tmp_path / "model")}}
    return config, write_config(tmp_path / "config.yaml", config)


def _signal_at_step(path, step, sig):
    """Run the trainer and send `sig` once it reports `step` (one stdout line per step: logEvery 1)."""
    process = subprocess.Popen(train_command(path), env=trainer_env(), cwd=REPO, stdout=subprocess.PIPE,
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


def _resume_and_assert_reference_weights(path, tmp_path, reference_run):
    resumed = subprocess.run(train_command(path), env=trainer_env(), cwd=REPO, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    ours = load_file(str(tmp_path / "model" / "model.safetensors"))
    reference = load_file(str(reference_run["root"] / "model" / "model.safetensors"))
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

    _resume_and_assert_reference_weights(path, tmp_path, reference_run)
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

    returncode, stderr = _signal_at_step(path, stop_at, signal.SIGTERM)
    assert returncode == 143, stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1, checkpoints
    saved = int(checkpoints[0].split("-")[1])
    assert stop_at <= saved < total and "stopped by SIGTERM after checkpointing step" in stderr
    assert not (tmp_path / "model").exists()

    _resume_and_assert_reference_weights(path, tmp_path, reference_run)
