"""Which model a ModelDeployment serves: its own URI, or the output of the TrainingJob it references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet_operator.modeldeployment.spec import ModelSpec


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    digest: str | None = None
    training_job: str | None = None

    def to_status(self, served_name: str) -> dict[str, Any]:
        status: dict[str, Any] = {"name": served_name, "uri": self.uri}
        if self.digest:
            status["digest"] = self.digest
        if self.training_job:
            status["trainingJob"] = self.training_job
        return status

    @classmethod
    def from_status(cls, status_model: dict[str, Any] | None) -> ResolvedModel | None:
        if not status_model or not status_model.get("uri"):
            return None
        return cls(status_model["uri"], status_model.get("digest"), status_model.get("trainingJob"))


@dataclass(frozen=True)
class Resolution:
    """The outcome of resolving: a model (None while waiting) and the ModelResolved condition's reason and message."""

    model: ResolvedModel | None
    reason: str
    message: str

    @property
    def resolved(self) -> bool:
        return self.model is not None


def resolve_model(model: ModelSpec, trainingjob: dict[str, Any] | None) -> Resolution:
    """Resolve `model`; `trainingjob` is the referenced TrainingJob as read (None when it does not exist)."""
    if model.uri:
        return Resolution(ResolvedModel(model.uri, model.digest), "ModelURI", f"serving {model.uri}")
    name = model.training_job
    if trainingjob is None:
        return Resolution(None, "TrainingJobNotFound", f"TrainingJob {name} does not exist (yet)")
    status = trainingjob.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        why = _failed_message(status)
        return Resolution(None, "TrainingJobFailed", f"TrainingJob {name} failed" + (f": {why}" if why else ""))
    if phase != "Succeeded":
        return Resolution(None, "TrainingJobNotSucceeded", f"waiting for TrainingJob {name} to succeed (phase {phase})")
    output = (status.get("outputs") or {}).get("model") or {}
    if not output.get("uri"):
        return Resolution(None, "TrainingJobNoOutput",
                          f"TrainingJob {name} succeeded but reports no status.outputs.model.uri")
    digest = output.get("digest")
    resolved = ResolvedModel(output["uri"], digest, name)
    return Resolution(resolved, "TrainingJobSucceeded",
                      f"serving {resolved.uri}" + (f" ({digest})" if digest else "") + f" from TrainingJob {name}")


def _failed_message(status: dict[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return ": ".join(part for part in (cond.get("reason"), cond.get("message")) if part)
    return ""
