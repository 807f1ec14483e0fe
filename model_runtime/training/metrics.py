"""``modelfleet_trainer_*`` Prometheus metrics, served by rank 0 on MODELFLEET_METRICS_PORT (default 9400)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from model_runtime.training.exitcodes import ConfigError
from model_runtime.training.progress import Progress

DEFAULT_PORT = 9400
_CHECKPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step = Gauge("modelfleet_trainer_step", "Optimizer steps completed.", registry=r)
        self.total_steps = Gauge("modelfleet_trainer_total_steps", "Optimizer steps the run will take.", registry=r)
        self.loss = Gauge("modelfleet_trainer_loss", "Training loss (mean over the last log interval).", registry=r)
        self.val_loss = Gauge("modelfleet_trainer_validation_loss", "Validation loss at the last evaluation.", registry=r)
        self.learning_rate = Gauge("modelfleet_trainer_learning_rate", "Current learning rate.", registry=r)
        self.tokens_per_second = Gauge("modelfleet_trainer_tokens_per_second", "Training throughput, all ranks.", registry=r)
        self.eta = Gauge("modelfleet_trainer_eta_seconds", "Estimated seconds until training ends.", registry=r)
        self.tokens = Counter("modelfleet_trainer_tokens", "Tokens trained on, all ranks.", registry=r)
        self.checkpoint_duration = Histogram(
            "modelfleet_trainer_checkpoint_duration_seconds", "Time to write a checkpoint.",
            buckets=_CHECKPOINT_BUCKETS, registry=r,
        )
        self.checkpoint_step = Gauge("modelfleet_trainer_checkpoint_step", "Step of the newest checkpoint.", registry=r)
        self.step_duration = Histogram(
            "modelfleet_trainer_step_duration_seconds", "Wall time per optimizer step (mean over a log interval).",
            registry=r,
        )

    def observe(self, progress: Progress) -> None:
        self.step.set(progress.step)
        self.total_steps.set(progress.total_steps)
        for gauge, value in ((self.loss, progress.loss), (self.val_loss, progress.val_loss),
                             (self.learning_rate, progress.learning_rate), (self.eta, progress.eta_seconds),
                             (self.tokens_per_second, progress.tokens_per_second),
                             (self.checkpoint_step, progress.checkpoint_step)):
            if value is not None:
                gauge.set(value)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the /metrics endpoint; returns the bound port (``port=0`` picks a free one)."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return server.server_port


def metrics_port(env: Mapping[str, str]) -> int:
    """The port from MODELFLEET_METRICS_PORT (default 9400); 0 means no endpoint."""
    raw = env.get("MODELFLEET_METRICS_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"MODELFLEET_METRICS_PORT: must be a port number 0-65535 (0 disables); got {raw!r}")
    return int(raw)
