"""The operator's own configuration, read once from its environment (set by the Helm chart)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/modelfleet/modelfleet:0.1.0"
ALLOW_HOST_PATHS_ENV = "MODELFLEET_ALLOW_HOST_PATHS"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


def env_flag(env: dict[str, str], name: str, default: bool = False) -> bool:
    """A boolean setting: "true" or "false" (any case; unset is `default`). Anything else is a startup error."""
    value = env.get(name, str(default)).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{name}: must be true or false, got {env[name]!r}")
    return value == "true"


def bind_address(name: str, value: str) -> str:
    """Setting `name`: an IP address to listen on ("0.0.0.0", "127.0.0.1", "::"...); else a startup error."""
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{name}: must be an IP address such as 0.0.0.0, 127.0.0.1 or ::, got {value!r}") from None


@dataclass(frozen=True)
class OperatorConfig:
    trainer_image: str = DEFAULT_IMAGE
    runtime_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 8080
    health_port: int = 8081
    # Addresses the /metrics and /healthz endpoints listen on (every IPv4 interface by default).
    metrics_address: str = "0.0.0.0"
    health_address: str = "0.0.0.0"
    # hostPath volumes (file:// URIs) give pods the node's filesystem: off unless the administrator opts in.
    allow_host_paths: bool = False
    prometheus_url: str = DEFAULT_PROMETHEUS_URL  # what a ModelDeployment's autoscaler queries
    # Leader election (operator/leader.py): only the holder of this Lease runs the controllers.
    leader_election: bool = True
    leader_election_lease: str = "modelfleet-operator"
    leader_election_namespace: str = ""  # "" -> the pod's namespace (or "default" outside a cluster)
    leader_election_identity: str = ""  # "" -> hostname-pid; the chart sets the pod's name

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorConfig":
        env = dict(os.environ if env is None else env)
        return cls(
            trainer_image=env.get("MODELFLEET_TRAINER_IMAGE", DEFAULT_IMAGE),
            runtime_image=env.get("MODELFLEET_RUNTIME_IMAGE", DEFAULT_IMAGE),
            image_pull_policy=env.get("MODELFLEET_IMAGE_PULL_POLICY", "IfNotPresent"),
            metrics_port=int(env.get("MODELFLEET_METRICS_PORT", "8080")),
            health_port=int(env.get("MODELFLEET_HEALTH_PORT", "8081")),
            metrics_address=bind_address("MODELFLEET_METRICS_ADDRESS", env.get("MODELFLEET_METRICS_ADDRESS", "0.0.0.0")),
            health_address=bind_address("MODELFLEET_HEALTH_ADDRESS", env.get("MODELFLEET_HEALTH_ADDRESS", "0.0.0.0")),
            allow_host_paths=env_flag(env, ALLOW_HOST_PATHS_ENV),
            prometheus_url=env.get("MODELFLEET_PROMETHEUS_URL", DEFAULT_PROMETHEUS_URL),
            leader_election=env_flag(env, "MODELFLEET_LEADER_ELECTION", default=True),
            leader_election_lease=env.get("MODELFLEET_LEADER_ELECTION_LEASE", "modelfleet-operator"),
            leader_election_namespace=env.get("MODELFLEET_LEADER_ELECTION_NAMESPACE", ""),
            leader_election_identity=env.get("MODELFLEET_LEADER_ELECTION_IDENTITY", ""),
        )
