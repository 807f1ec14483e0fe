"""The engine core: requests in, one scheduled forward step at a time, token and text deltas out.

Not thread-safe on purpose: exactly one thread (``AsyncEngine``'s loop) calls it, and that thread owns the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from model_runtime.llama import LlamaForCausalLM
from model_runtime.serving.block_manager import BlockManager
from model_runtime.serving.metrics import FinishedStats, RuntimeMetrics, StepStats
from model_runtime.serving.model_runner import ModelRunner
from model_runtime.serving.sampling import SampleRow, SamplingParams, TokenLogprobs, sample
from model_runtime.serving.scheduler import ScheduledBatch, Scheduler
from model_runtime.serving.sequence import Sequence
from model_runtime.serving.structured import Guide, token_bitmasks
from model_runtime.serving.text import TextAssembler


class InvalidRequest(ValueError):
    """A request the engine cannot serve; ``param`` names the offending request field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    timeout: float | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    guides: list[Guide] | None = None  # structured output: one per choice, advanced as tokens are sampled


@dataclass
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[tuple[int, TokenLogprobs]]
    finish_reason: str | None


@dataclass
class RequestOutput:
    """What changed for one request in one step; ``completion_tokens`` counts all choices so far."""

    request_id: str
    choices: list[ChoiceDelta]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finished: bool
    error: str | None = None


@dataclass
class _Request:
    request: EngineRequest
    seqs: list[Sequence]
    deadline: float | None
    scheduled_time: float | None = None
    first_token_time: float | None = None
    cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)


@dataclass
class EngineLimits:
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_prefix_caching: bool = True


class LLMEngine:
    def __init__(self, model: LlamaForCausalLM, tokenizer: Tokenizer, limits: EngineLimits,
                 eos_token_ids: list[int], metrics: RuntimeMetrics | None = None) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.vocab_size = model.config.vocab_size
        self.metrics = metrics
        self.block_manager = BlockManager(limits.num_blocks, limits.block_size, limits.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, limits.max_num_seqs, limits.max_num_batched_tokens,
                                   limits.max_model_len, frozenset(eos_token_ids))
        self.runner = ModelRunner(model, limits.num_blocks, limits.block_size)
        self.requests: dict[str, _Request] = {}
        self.guided_requests: set[str] = set()  # with structured output; while empty, steps skip the mask logic
        self._next_seq_id = 0
        self._reported = (0, 0, 0)  # preemptions, prefix queries, prefix hits already exported

    def check_request(self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "prompt") -> None:
        """Raise InvalidRequest if this prompt and these parameters cannot be served."""
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", prompt_param)
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise InvalidRequest(f"token ids must be in [0, {self.vocab_size})", prompt_param)
        limit = self.limits.max_model_len
        if len(prompt_ids) + params.max_tokens > limit:
            raise InvalidRequest(
                f"this model's maximum context length is {limit} tokens; the prompt has {len(prompt_ids)} tokens "
                f"and max_tokens is {params.max_tokens}", "max_tokens" if len(prompt_ids) < limit else prompt_param)
        if any(t < 0 or t >= self.vocab_size for t in params.stop_token_ids):
            raise InvalidRequest(f"stop_token_ids must be in [0, {self.vocab_size})", "stop_token_ids")
        if any(t < 0 or t >= self.vocab_size for t in params.logit_bias):
            raise InvalidRequest(f"logit_bias token ids must be in [0, {self.vocab_size})", "logit_bias")

    def add_request(self, request: EngineRequest) -> None:
        if request.request_id in self.requests:
            raise InvalidRequest(f"duplicate request id {request.request_id!r}")
        self.check_request(request.prompt_ids, request.params)
        p = request.params
        seqs = []
        for index in range(p.n):
            generator = None
            if p.seed is not None:
                generator = torch.Generator(device=self.runner.device).manual_seed(p.seed + index)
            seq = Sequence(self._next_seq_id, request.request_id, index, list(request.prompt_ids),
                           len(request.prompt_ids), p, TextAssembler(self.tokenizer, request.prompt_ids, p.stop),
                           generator, guide=request.guides[index] if request.guides else None)
            self._next_seq_id += 1
            self.scheduler.add(seq)
            seqs.append(seq)
        deadline = request.arrival_time + request.timeout if request.timeout is not None else None
        self.requests[request.request_id] = _Request(request, seqs, deadline)
        if request.guides:
            self.guided_requests.add(request.request_id)

    def has_work(self) -> bool:
        return bool(self.requests)

    def abort_request(self, request_id: str, reason: str = "abort") -> RequestOutput | None:
        state = self.requests.get(request_id)
        if state is None:
            return None
        for seq in state.seqs:
            if not seq.finished:
                self.scheduler.finish(seq, reason)
        output = self._collect(state, {s.seq_id: [] for s in state.seqs}, {}, time.monotonic())
        self._record_step()  # the gauges must show the freed blocks even if no step follows
        return output

    def fail_request(self, request: EngineRequest) -> None:
        """A request the engine could not take after the API accepted it: counted as vLLM's ``error``."""
        self.requests.pop(request.request_id, None)
        if self.metrics is not None:
            self.metrics.record_finished(FinishedStats(
                "error", request.arrival_time, None, None, time.monotonic(), len(request.prompt_ids), 0, 0,
                request.params.n, request.params.max_tokens))

    def fail_all(self) -> None:
        """The engine loop died: every request in flight ends in ``error``."""
        for state in list(self.requests.values()):
            self.fail_request(state.request)

    def step(self) -> list[RequestOutput]:
        """Expire timed-out requests, run one scheduled batch, and report what changed."""
        outputs = self._expire(time.monotonic())
        batch = self.scheduler.schedule()
        samplers: list[Sequence] = []
        tokens: list[int] = []
        if batch.items:
            samplers, logits = self.runner.execute(batch.items)
            tokens, logprobs = self._sample(samplers, logits)
            self.scheduler.postprocess(batch, samplers, tokens)
            outputs += self._outputs(batch, samplers, tokens, logprobs, time.monotonic())
        self._record_step(batch.num_tokens, samplers)
        return outputs

    def _expire(self, now: float) -> list[RequestOutput]:
        expired = [rid for rid, st in self.requests.items() if st.deadline is not None and now >= st.deadline]
        return [out for rid in expired for out in [self.abort_request(rid, "timeout")] if out is not None]

    def _sample(self, samplers: list[Sequence], logits: torch.Tensor) \
            -> tuple[list[int], list[TokenLogprobs | None]]:
        if not samplers:
            return [], []
        rows = [SampleRow(s.params, s.token_ids, s.num_prompt_tokens, s.generator) for s in samplers]
        guided = [i for i, s in enumerate(samplers) if s.guide is not None] if self.guided_requests else []
        masks = (guided, token_bitmasks([samplers[i].guide for i in guided], self.vocab_size)) if guided else None
        return sample(logits, rows, masks)

    def _outputs(self, batch: ScheduledBatch, samplers: list[Sequence], tokens: list[int],
                 logprobs: list[TokenLogprobs | None], now: float) -> list[RequestOutput]:
        for seq, _ in batch.items:
            state = self.requests[seq.request_id]
            if state.scheduled_time is None:
                state.scheduled_time = now
            state.cached_tokens = max(state.cached_tokens, seq.num_cached_tokens)
        new_tokens = {seq.seq_id: [token] for seq, token in zip(samplers, tokens)}
        new_logprobs = {seq.seq_id: [(token, lp)] for seq, token, lp in zip(samplers, tokens, logprobs)
                        if lp is not None}
        touched = dict.fromkeys(s.request_id for s in samplers)
        return [self._collect(self.requests[rid], new_tokens, new_logprobs, now) for rid in touched]

    def _collect(self, state: _Request, new_tokens: dict[int, list[int]],
                 new_logprobs: dict[int, list[tuple[int, TokenLogprobs]]], now: float) -> RequestOutput:
        choices = []
        for seq in state.seqs:
            if seq.seq_id in new_tokens:
                choices.append(ChoiceDelta(seq.index, seq.text.take(final=seq.finished), new_tokens[seq.seq_id],
                                           new_logprobs.get(seq.seq_id, []), seq.finish_reason))
        req = state.request
        completion = sum(s.num_output_tokens for s in state.seqs)
        if state.first_token_time is None and completion:
            state.first_token_time = now
            if self.metrics is not None:
                self.metrics.record_first_token(len(req.prompt_ids), state.cached_tokens, now - req.arrival_time)
        finished = state.finished
        if finished:
            del self.requests[req.request_id]
            self.guided_requests.discard(req.request_id)
            if self.metrics is not None:
                self.metrics.record_finished(FinishedStats(
                    state.seqs[0].finish_reason or "abort", req.arrival_time, state.scheduled_time,
                    state.first_token_time, now, len(req.prompt_ids), completion,
                    max(s.num_output_tokens for s in state.seqs), req.params.n, req.params.max_tokens))
        return RequestOutput(req.request_id, choices, len(req.prompt_ids), completion, state.cached_tokens, finished)

    def _record_step(self, scheduled_tokens: int = 0, samplers: list[Sequence] = ()) -> None:
        if self.metrics is None:
            return
        s = self.scheduler
        current = (s.num_preemptions, s.prefix_queries, s.prefix_hits)
        preemptions, queries, hits = (c - r for c, r in zip(current, self._reported))
        self._reported = current
        now = time.monotonic()
        intervals = tuple(now - seq.last_token_time for seq in samplers if seq.last_token_time is not None)
        for seq in samplers:
            seq.last_token_time = now
        self.metrics.record_step(StepStats(
            running=len({seq.request_id for seq in s.running}), waiting=len({seq.request_id for seq in s.waiting}),
            kv_usage=self.block_manager.usage, preemptions=preemptions, prefix_queries=queries, prefix_hits=hits,
            scheduled_tokens=scheduled_tokens, generated_tokens=len(samplers), inter_token_latencies=intervals))
