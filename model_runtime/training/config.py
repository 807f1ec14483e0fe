"""The trainer's configuration: JSON or YAML whose top-level keys mirror the TrainingJob spec.

Sections use camelCase keys and reject unknown keys (a typo is an error that names the field);
unknown *top-level* keys are ignored so the operator can pass the whole spec through.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from model_runtime.llama import LlamaConfig
from model_runtime.training.exitcodes import ConfigError

# Architecture presets. "base" is GPT-2-small sized (~125M parameters with a 32k vocabulary).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"layers": 2, "hidden_size": 64, "heads": 4, "kv_heads": 2, "context_length": 256},
    "small": {"layers": 4, "hidden_size": 256, "heads": 8, "kv_heads": 4, "context_length": 512},
    "base": {"layers": 12, "hidden_size": 768, "heads": 12, "kv_heads": 12, "context_length": 2048},
}


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSpec(_Section):
    """A new model: a preset, explicit sizes, or a preset with some sizes overridden."""

    preset: Literal["tiny", "small", "base"] | None = None
    layers: PositiveInt | None = None
    hidden_size: PositiveInt | None = None
    heads: PositiveInt | None = None
    kv_heads: PositiveInt | None = None
    vocab_size: PositiveInt | None = None
    context_length: PositiveInt | None = None
    intermediate_size: PositiveInt | None = None
    rope_theta: PositiveFloat = 10000.0
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "ModelSpec":
        missing = [to_camel(f) for f in ("layers", "hidden_size", "heads", "context_length") if self.resolved(f) is None]
        if missing:
            raise ValueError(f"set preset (tiny, small, base) or all of: {', '.join(missing)}")
        hidden, heads, kv = self.resolved("hidden_size"), self.resolved("heads"), self.resolved("kv_heads") or self.resolved("heads")
        if hidden % heads:
            raise ValueError(f"hiddenSize ({hidden}) must be divisible by heads ({heads})")
        if (hidden // heads) % 2:
            raise ValueError(f"hiddenSize / heads ({hidden // heads}) must be even for rotary embeddings")
        if heads % kv:
            raise ValueError(f"heads ({heads}) must be divisible by kvHeads ({kv})")
        return self

    def resolved(self, name: str) -> Any:
        """The field as given, else the preset's value."""
        value = getattr(self, name)
        if value is None and self.preset is not None:
            return PRESETS[self.preset].get(name)
        return value

    def to_llama_config(self, vocab_size: int) -> LlamaConfig:
        hidden = self.resolved("hidden_size")
        heads = self.resolved("heads")
        # SwiGLU keeps the parameter count of a 4x MLP with 8/3 x hidden, rounded up to a multiple of 32.
        intermediate = self.intermediate_size or 32 * math.ceil(8 * hidden / 3 / 32)
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=self.resolved("layers"),
            num_attention_heads=heads,
            num_key_value_heads=self.resolved("kv_heads") or heads,
            max_position_embeddings=self.resolved("context_length"),
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
        )


class BaseModelSpec(_Section):
    """A local Llama-family model directory (config.json + *.safetensors) to fine-tune."""

    path: str

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise ValueError(f"{path} is not a model directory (no config.json)")
        if not any(directory.glob("*.safetensors")):
            raise ValueError(f"{path} has no *.safetensors weights")
        return path


class DataSpec(_Section):
    path: str
    format: Literal["text", "jsonl"] = "text"
    field: str = "text"
    validation_fraction: NonNegativeFloat = Field(default=0.05, lt=0.5)
    cache_dir: str | None = None


class TokenizerSpec(_Section):
    type: Literal["byte", "bpe", "base"] | None = None
    vocab_size: int = Field(default=8192, ge=259, le=2**32 - 1)
    min_frequency: PositiveInt = 2


class TrainingSpec(_Section):
    steps: PositiveInt | None = None
    epochs: PositiveFloat | None = None
    global_batch_size: PositiveInt = 8
    micro_batch_size: PositiveInt | None = None
    sequence_length: PositiveInt = 256
    learning_rate: PositiveFloat = 3e-4
    min_learning_rate_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    warmup_steps: NonNegativeInt = 0
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    weight_decay: NonNegativeFloat = 0.1
    grad_clip: NonNegativeFloat = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: NonNegativeInt = 0
    eval_every: NonNegativeInt = 100
    eval_batches: PositiveInt = 16
    log_every: PositiveInt = 10
    compile: bool = False

    @model_validator(mode="after")
    def _length(self) -> "TrainingSpec":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of steps or epochs")
        return self


class CheckpointSpec(_Section):
    dir: str = "checkpoints"
    every: NonNegativeInt = 100
    keep: PositiveInt = 3


class OutputSpec(_Section):
    path: str


class TrainerConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    model: ModelSpec | None = None
    base_model: BaseModelSpec | None = None
    data: DataSpec
    tokenizer: TokenizerSpec = TokenizerSpec()
    training: TrainingSpec
    checkpoint: CheckpointSpec = CheckpointSpec()
    output: OutputSpec

    @model_validator(mode="after")
    def _consistent(self) -> "TrainerConfig":
        if (self.model is None) == (self.base_model is None):
            raise ValueError("set exactly one of model (a new model) or baseModel (a model directory to fine-tune)")
        if self.tokenizer.type == "base" and self.base_model is None:
            raise ValueError("tokenizer.type: 'base' needs baseModel")
        if self.model is not None and self.training.sequence_length > self.model.resolved("context_length"):
            raise ValueError(
                f"training.sequenceLength ({self.training.sequence_length}) exceeds "
                f"model.contextLength ({self.model.resolved('context_length')})"
            )
        return self

    @property
    def tokenizer_type(self) -> str:
        """The tokenizer to use: as configured, else the base model's when fine-tuning, else bytes."""
        return self.tokenizer.type or ("base" if self.base_model else "byte")

    def micro_batch_size(self, world_size: int) -> int:
        return self.training.micro_batch_size or self.training.global_batch_size // world_size

    def check_world_size(self, world_size: int) -> None:
        """The global batch must split evenly into ranks x micro-batches (x accumulation steps)."""
        train = self.training
        micro = self.micro_batch_size(world_size)
        if micro == 0 or train.global_batch_size % (world_size * micro):
            raise ConfigError(
                f"training.globalBatchSize: must be divisible by world size x microBatchSize "
                f"(={world_size * max(micro, 1)}); got {train.global_batch_size}"
            )

    def hyperparameters(self) -> dict[str, Any]:
        """What went into the model, for its manifest (camelCase, like the configuration)."""
        return self.model_dump(by_alias=True, include={"model", "base_model", "tokenizer", "training"}, exclude_none=True)


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if part != "__root__")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)


def parse_config(raw: Any) -> TrainerConfig:
    if not isinstance(raw, dict):
        raise ConfigError("configuration: must be a mapping with keys model/baseModel, data, training, output")
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def load_config(path: str | Path) -> TrainerConfig:
    """Read a JSON or YAML configuration file (JSON is YAML)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror or error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: {path} is not valid JSON or YAML: {error}") from None
    return parse_config(raw)
