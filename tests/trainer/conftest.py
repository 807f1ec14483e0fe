"""Shared fixtures for the trainer tests."""

from __future__ import annotations

from typing import Any

import pytest

from trainer_testlib import DIST_VARS, run_train, tiny_config, trainer_env, write_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For in-process runs of the CLI: a single process, no metrics endpoint, no progress sinks."""
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELFLEET_METRICS_PORT", "0")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted tiny run (shared by the resume, progress and manifest tests)."""
    root = tmp_path_factory.mktemp("reference")
    config = tiny_config(root, training={"steps": 48}, checkpoint={"every": 3, "keep": 2})
    path = write_config(root / "config.yaml", config)
    progress = root / "progress.json"
    result = run_train(path, trainer_env(MODELFLEET_PROGRESS_FILE=str(progress), MODELFLEET_JOB_NAME="fables",
                                         MODELFLEET_NAMESPACE="team-a"))
    assert result.returncode == 0, result.stderr
    return {"root": root, "config": config, "config_path": path, "progress": progress, "result": result}
