"""Runtime settings (one dataclass, filled by the CLI from flags and MODELFLEET_* env vars) and KV sizing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model_runtime.llama import LlamaConfig

DEFAULT_KV_CACHE_MEMORY_CPU = 2 << 30
CUDA_KV_CACHE_FRACTION = 0.8  # of the GPU memory free after loading the model

_BYTE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """'1073741824', '512Mi', '2G' (Kubernetes quantity suffixes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a byte size: {text!r} (examples: 1073741824, 512Mi, 2Gi)")
    return int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "").lower()]


@dataclass
class ServeConfig:
    model: Path
    host: str = "0.0.0.0"
    port: int = 8000
    served_model_name: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    max_model_len: int | None = None
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None
    block_size: int = 16
    max_waiting_requests: int = 1024
    request_timeout: float = 600.0
    drain_timeout: float = 30.0
    api_keys: list[str] = field(default_factory=list, repr=False)
    enable_prefix_caching: bool = True
    max_request_bytes: int = 32 << 20
    tokenizer_threads: int = 4
    fault_latency_ms: float = 0.0  # testing only (faults.py)
    fault_error_rate: float = 0.0  # testing only (faults.py)

    def __post_init__(self) -> None:
        positive = ("port", "max_num_seqs", "max_num_batched_tokens", "block_size", "max_waiting_requests",
                    "request_timeout", "drain_timeout", "max_request_bytes", "tokenizer_threads")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_model_len", "num_kv_blocks", "kv_cache_memory"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.fault_latency_ms < 0:
            raise ValueError(f"fault_latency_ms must be >= 0, got {self.fault_latency_ms}")
        if not 0 <= self.fault_error_rate <= 1:
            raise ValueError(f"fault_error_rate must be from 0 to 1, got {self.fault_error_rate}")
        if self.num_kv_blocks is not None and self.kv_cache_memory is not None:
            raise ValueError("give num_kv_blocks or kv_cache_memory, not both")

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).name


def kv_block_bytes(config: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return per_token * block_size * torch.empty((), dtype=dtype).element_size()


def plan_kv_cache(cfg: ServeConfig, model_config: LlamaConfig, dtype: torch.dtype) -> tuple[int, int]:
    """Returns (num_kv_blocks, max_model_len).

    Without an explicit size the cache gets room for max_num_seqs full-length sequences, capped by the
    memory budget. The context length is the model's, limited to what the cache can hold for one sequence.
    """
    block_bytes = kv_block_bytes(model_config, cfg.block_size, dtype)
    max_len = cfg.max_model_len or model_config.max_position_embeddings
    if cfg.max_model_len and cfg.max_model_len > model_config.max_position_embeddings:
        raise ValueError(f"max_model_len {cfg.max_model_len} exceeds the model's max_position_embeddings "
                         f"{model_config.max_position_embeddings}")
    if cfg.num_kv_blocks is not None:
        blocks = cfg.num_kv_blocks
    else:
        budget = cfg.kv_cache_memory or _default_kv_budget(cfg.device)
        wanted = cfg.max_num_seqs * -(-max_len // cfg.block_size)
        blocks = min(wanted, budget // block_bytes)
    capacity = blocks * cfg.block_size
    if blocks < 1:
        raise ValueError(f"the KV cache budget holds no block of {block_bytes} bytes; raise kv_cache_memory")
    if cfg.max_model_len and cfg.max_model_len > capacity:
        raise ValueError(f"max_model_len {cfg.max_model_len} does not fit the KV cache ({capacity} tokens); "
                         "raise num_kv_blocks or kv_cache_memory")
    return blocks, min(max_len, capacity)


def _default_kv_budget(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(free * CUDA_KV_CACHE_FRACTION)
    return DEFAULT_KV_CACHE_MEMORY_CPU
