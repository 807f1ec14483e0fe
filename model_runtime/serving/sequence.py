"""One generated sequence (a request with ``n`` choices has ``n`` of them) and its bookkeeping."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from model_runtime.serving.sampling import SamplingParams
from model_runtime.serving.structured import Guide
from model_runtime.serving.text import TextAssembler


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """Token state of one choice. ``token_ids`` holds prompt then output; the first
    ``num_computed_tokens`` of them have their K/V in the cache blocks of ``block_table``."""

    seq_id: int
    request_id: str
    index: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    text: TextAssembler
    generator: torch.Generator | None = None
    guide: Guide | None = None  # structured output
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    finish_reason: str | None = None
    last_token_time: float | None = None  # monotonic, for the inter-token latency

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
