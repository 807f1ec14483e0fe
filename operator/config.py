"""The operator's own configuration, read once from its environment (set by the Helm chart)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/modelfleet/modelfleet:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    trainer_image: str = DEFAULT_IMAGE
    runtime_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 8080
    health_port: int = 8081

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorConfig":
        env = dict(os.environ if env is None else env)
        return cls(
            trainer_image=env.get("MODELFLEET_TRAINER_IMAGE", DEFAULT_IMAGE),
            runtime_image=env.get("MODELFLEET_RUNTIME_IMAGE", DEFAULT_IMAGE),
            image_pull_policy=env.get("MODELFLEET_IMAGE_PULL_POLICY", "IfNotPresent"),
            metrics_port=int(env.get("MODELFLEET_METRICS_PORT", "8080")),
            health_port=int(env.get("MODELFLEET_HEALTH_PORT", "8081")),
        )
