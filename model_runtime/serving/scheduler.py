"""Decides, each step, which tokens of which sequences go through the model.

Policy (first come, first served, like vLLM's V1 scheduler): running sequences first — a decode is one
token, an unfinished prefill continues with the next chunk — then waiting sequences are admitted while the
token budget, the sequence limit and free KV blocks allow. Prefill chunks and decodes share one step. When
a running sequence needs a block and none is free, the most recently admitted sequence is preempted: its
blocks are freed and it returns to the head of the queue, to be recomputed (its prefix is often still cached).

The scheduler owns the sequences' lifecycle: after the model has run a batch, ``postprocess`` (nano-vllm's
``postprocess``, vLLM's ``update_from_output``) commits the computed tokens, appends the sampled ones and finishes
the sequences that reached a stop condition.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model_runtime.serving.block_manager import BlockManager
from model_runtime.serving.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """Sequences with the number of their next uncomputed tokens to run this step."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: float = float("inf"), eos_token_ids: frozenset[int] = frozenset()) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens whose K/V were found cached

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        idx = 0
        while idx < len(self.running) and budget > 0:
            seq = self.running[idx]
            n = min(seq.num_uncomputed_tokens, budget)
            while not bm.ensure_capacity(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                batch.items.append((seq, n))
                budget -= n
                idx += 1
        # Admitting new work right after a preemption would only thrash the cache.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not batch.num_preempted:
            seq = self.waiting[0]
            bm.match_prefix(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            if not bm.ensure_capacity(seq, seq.num_computed_tokens + n):
                bm.free(seq)
                break
            self.waiting.popleft()
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.items.append((seq, n))
            budget -= n
        return batch

    def postprocess(self, batch: ScheduledBatch, samplers: list[Sequence], tokens: list[int]) -> None:
        """The one update after a step: ``batch`` ran, ``samplers`` (the sequences whose last token it computed)
        sampled ``tokens``."""
        for seq, n in batch.items:
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)
        for seq, token in zip(samplers, tokens):
            seq.token_ids.append(token)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if seq.guide is not None:
            seq.guide.advance(token)
        if token in p.stop_token_ids or (token in self.eos_token_ids and not p.ignore_eos):
            reason = "stop"  # the stop token itself is not part of the text
        elif seq.text.append(token):
            return "stop"  # the text was cut before the stop string: nothing left to flush
        elif seq.guide is not None and seq.guide.done:
            reason = "stop"  # the grammar is complete: nothing else may follow
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        else:
            return None
        seq.text.flush()
        return reason

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark finished (stop, length, abort, timeout) and release its blocks, wherever it is."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
