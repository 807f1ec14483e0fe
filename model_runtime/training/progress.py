"""The progress report (rank 0): a readable line on stdout, a JSON file, and a Kubernetes ConfigMap.

The JSON is what the TrainingJob controller reads: ``{"step", "totalSteps", "loss", "valLoss",
"learningRate", "tokensPerSecond", "etaSeconds", "phase", "checkpointStep", "updatedAt"}`` plus
``"output": {"path", "digest"}`` once the model is saved, and ``"metrics"`` (names to numbers) when
user code reports its own (see ``report.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass
class Progress:
    step: int
    total_steps: int
    phase: str = "Training"  # Training | Checkpointing | Saving | Succeeded
    loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    checkpoint_step: int | None = None
    output: dict[str, str] | None = None
    metrics: dict[str, float | None] | None = None

    def to_json(self) -> dict[str, Any]:
        report = {
            "step": self.step,
            "totalSteps": self.total_steps,
            "loss": _finite(self.loss),
            "valLoss": _finite(self.val_loss),
            "learningRate": _finite(self.learning_rate),
            "tokensPerSecond": _finite(self.tokens_per_second),
            "etaSeconds": _finite(self.eta_seconds),
            "phase": self.phase,
            "checkpointStep": self.checkpoint_step,
            "updatedAt": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        if self.output is not None:
            report["output"] = self.output
        if self.metrics:
            report["metrics"] = {name: _finite(value) for name, value in self.metrics.items()}
        return report


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or Infinity; report them as null."""
    return value if value is not None and math.isfinite(value) else None


def format_line(p: Progress) -> str:
    """``step 120/1000 (12.0%) loss 2.3141 val 2.4012 lr 2.95e-04 tokens/s 18,204 eta 4m02s``"""
    head = f"step {p.step}/{p.total_steps}"
    if p.phase == "Succeeded" and p.output:
        return f"{head} succeeded: model {p.output['path']} ({p.output['digest']})"
    if p.phase != "Training":
        return f"{head} {p.phase.lower()}"
    parts = [f"{head} ({100 * p.step / max(1, p.total_steps):.1f}%)"]
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.val_loss is not None:
        parts.append(f"val {p.val_loss:.4f}")
    if p.learning_rate is not None:
        parts.append(f"lr {p.learning_rate:.2e}")
    if p.tokens_per_second is not None:
        parts.append(f"tokens/s {p.tokens_per_second:,.0f}")
    if p.eta_seconds is not None:
        parts.append(f"eta {_duration(p.eta_seconds)}")
    return " ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Reporter(Protocol):
    def report(self, progress: Progress, *, final: bool = False) -> None: ...


class StdoutReporter:
    def report(self, progress: Progress, *, final: bool = False) -> None:
        print(format_line(progress), flush=True)


class FileReporter:
    """Atomically rewrites a JSON file (a reader never sees half a report)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def report(self, progress: Progress, *, final: bool = False) -> None:
        write_json_atomic(self.path, progress.to_json())


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ConfigMapReporter:
    """Patches ``data.progress`` of a ConfigMap, at most once per ``min_interval`` seconds.

    A failed patch never stops training: it logs one warning and backs off (doubling the interval up to
    ``max_interval``). The final report is always attempted.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        api: Any = None,
        *,
        min_interval: float = 5.0,
        max_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.namespace = name, namespace
        self._api = api
        self.min_interval, self.max_interval = min_interval, max_interval
        self._clock = clock
        self._interval = min_interval
        self._next = float("-inf")
        self._warned = False

    def report(self, progress: Progress, *, final: bool = False) -> None:
        now = self._clock()
        if not final and now < self._next:
            return
        body = {"data": {"progress": json.dumps(progress.to_json())}}
        try:
            self._core_api().patch_namespaced_config_map(self.name, self.namespace, body, _request_timeout=10)
        except Exception as error:  # noqa: BLE001 - any failure here must not end training
            if not self._warned:
                log.warning("cannot patch ConfigMap %s/%s with progress (will keep trying, quietly): %s",
                            self.namespace, self.name, _short(error))
                self._warned = True
            self._interval = min(self.max_interval, self._interval * 2)
        else:
            self._interval = self.min_interval
        self._next = now + self._interval

    def _core_api(self) -> Any:
        if self._api is None:
            self._api = _kubernetes_core_api()
        return self._api


def _kubernetes_core_api() -> Any:
    """CoreV1Api from KUBECONFIG when set, else the pod's in-cluster service account."""
    from kubernetes import client, config

    if os.environ.get("KUBECONFIG"):
        return client.CoreV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


def _short(error: Exception) -> str:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    return f"HTTP {status} {reason}" if status else f"{type(error).__name__}: {error}"


def pod_namespace(env: Mapping[str, str]) -> str:
    if env.get("MODELFLEET_NAMESPACE"):
        return env["MODELFLEET_NAMESPACE"]
    try:
        return Path(NAMESPACE_FILE).read_text().strip()
    except OSError:
        return "default"


class Fanout:
    """Sends each report to every reporter; a failing reporter is logged once and never stops training."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters
        self._failed: set[int] = set()

    def report(self, progress: Progress, *, final: bool = False) -> None:
        for i, reporter in enumerate(self.reporters):
            try:
                reporter.report(progress, final=final)
            except Exception as error:  # noqa: BLE001
                if i not in self._failed:
                    log.warning("progress reporter %s failed (ignored from now on): %s", type(reporter).__name__, error)
                    self._failed.add(i)


def reporters_from_env(env: Mapping[str, str]) -> list[Reporter]:
    """stdout always; the file and the ConfigMap when their env vars are set."""
    reporters: list[Reporter] = [StdoutReporter()]
    if env.get("MODELFLEET_PROGRESS_FILE"):
        reporters.append(FileReporter(env["MODELFLEET_PROGRESS_FILE"]))
    if env.get("MODELFLEET_PROGRESS_CONFIGMAP"):
        reporters.append(ConfigMapReporter(env["MODELFLEET_PROGRESS_CONFIGMAP"], pod_namespace(env)))
    return reporters
