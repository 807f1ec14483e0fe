"""Sampling parameters and the batched sampler.

Order of logit processing (as in vLLM and transformers): repetition penalty (prompt and output tokens),
frequency and presence penalties (output tokens, OpenAI's definition), no-repeat n-gram bans, logit bias,
the structured-output grammar's token mask (only for the rows that have one), then temperature, top-k, top-p
and min-p, then a draw. The draw uses the exponential-race form
``argmax(p / E), E ~ Exp(1)`` so that each seeded request gets its noise from its own generator and is
reproducible whatever else shares the batch. Logprobs are those of the model's raw distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20
_MIN_TEMPERATURE = 1e-5
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_p: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # number of top alternatives to return with each token's logprob

    def __post_init__(self) -> None:
        checks = {
            "max_tokens": self.max_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= -1,
            "n": self.n >= 1,
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
            "repetition_penalty": self.repetition_penalty > 0,
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "min_p": 0 <= self.min_p <= 1,
            "logprobs": self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid sampling parameter {bad[0]}={getattr(self, bad[0])!r}")

    @property
    def greedy(self) -> bool:
        # A vanishing temperature is greedy too (dividing by it would overflow the logits).
        return self.temperature < _MIN_TEMPERATURE or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass
class TokenLogprobs:
    """The chosen token's logprob and the top alternatives (token id -> logprob), best first."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SampleRow:
    """What the sampler needs to know about one sequence."""

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int
    generator: torch.Generator | None


TokenMasks = tuple[list[int], torch.Tensor]  # rows, and their allowed tokens as an int32 bitmask [rows, words]


def sample(logits: torch.Tensor, rows: list[SampleRow], masks: TokenMasks | None = None) \
        -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits: [batch, vocab] (one row per sequence that samples this step). Returns token ids and logprobs.

    ``masks`` (structured output) restricts the rows it names to the tokens whose bits are set."""
    logits = logits.float()
    want_logprobs = any(r.params.logprobs is not None for r in rows)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    penalized = any(r.params.penalized or r.params.no_repeat_ngram_size for r in rows)
    biased = any(r.params.logit_bias for r in rows)
    if penalized or biased or masks:
        logits = logits.clone()  # the model's output is an inference tensor, not to be edited in place
    if penalized:
        for i, row in enumerate(rows):
            _apply_penalties(logits[i], row)
    if biased:
        for i, row in enumerate(rows):
            if row.params.logit_bias:
                ids = torch.tensor(list(row.params.logit_bias), dtype=torch.long, device=logits.device)
                values = torch.tensor(list(row.params.logit_bias.values()), dtype=logits.dtype, device=logits.device)
                logits[i].index_add_(0, ids, values)
    if masks:
        _apply_masks(logits, *masks)
    tokens = _draw(logits, rows)
    logprobs: list[TokenLogprobs | None] = [None] * len(rows)
    if raw_logprobs is not None:
        for i, row in enumerate(rows):
            k = row.params.logprobs
            if k is None:
                continue
            top = torch.topk(raw_logprobs[i], k) if k else None
            alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
            logprobs[i] = TokenLogprobs(float(raw_logprobs[i, tokens[i]]), alternatives)
    return tokens, logprobs


def _apply_penalties(logits: torch.Tensor, row: SampleRow) -> None:
    p = row.params
    device = logits.device
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.token_ids)), dtype=torch.long, device=device)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and len(row.token_ids) > row.num_prompt_tokens:
        output = torch.tensor(row.token_ids[row.num_prompt_tokens:], dtype=torch.long, device=device)
        counts = torch.bincount(output, minlength=logits.shape[0])[: logits.shape[0]].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    if p.no_repeat_ngram_size:
        banned = banned_ngram_tokens(row.token_ids, p.no_repeat_ngram_size)
        if banned:
            logits[list(banned)] = float("-inf")


def _apply_masks(logits: torch.Tensor, guided: list[int], bitmask: torch.Tensor) -> None:
    """Disallowed tokens of the guided rows -> -inf; the other rows are not touched."""
    vocab = logits.shape[1]
    allowed = ((bitmask.unsqueeze(-1) >> _BIT_SHIFTS) & 1).view(len(guided), -1)[:, :vocab].bool()
    index = torch.tensor(guided, dtype=torch.long, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))


def banned_ngram_tokens(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``tokens`` (transformers' definition)."""
    if len(tokens) < n:
        return set()
    if n == 1:
        return set(tokens)
    prefix = tuple(tokens[len(tokens) - n + 1:])
    return {
        tokens[i + n - 1]
        for i in range(len(tokens) - n + 1)
        if tuple(tokens[i:i + n - 1]) == prefix
    }


def _draw(logits: torch.Tensor, rows: list[SampleRow]) -> list[int]:
    greedy = [r.params.greedy for r in rows]
    if all(greedy):
        return logits.argmax(dim=-1).tolist()
    device = logits.device
    temps = torch.tensor([1.0 if g else r.params.temperature for r, g in zip(rows, greedy)], device=device)
    scaled = logits / temps.unsqueeze(1)
    top_ks = [r.params.top_k for r in rows]
    if any(k > 0 for k in top_ks):
        vocab = logits.shape[-1]
        ks = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks], device=device)
        sorted_desc = scaled.sort(dim=-1, descending=True).values
        kth = sorted_desc.gather(1, (ks - 1).unsqueeze(1))
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    top_ps = [r.params.top_p for r in rows]
    if any(p < 1.0 for p in top_ps):
        scaled = _top_p(scaled, torch.tensor(top_ps, device=device))
    probs = torch.softmax(scaled, dim=-1)
    min_ps = [r.params.min_p for r in rows]
    if any(min_ps):  # keep tokens at least min_p times as likely as the best one
        floor = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_ps, device=device).unsqueeze(1)
        probs = probs.masked_fill(probs < floor, 0.0)
    noise = torch.empty_like(probs).exponential_()
    for i, row in enumerate(rows):
        if row.generator is not None and not greedy[i]:
            noise[i] = torch.empty_like(probs[i]).exponential_(generator=row.generator)
    sampled = (probs / noise).argmax(dim=-1)
    argmax = logits.argmax(dim=-1)
    chosen = torch.where(torch.tensor(greedy, device=device), argmax, sampled)
    return chosen.tolist()


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (always at least the best one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
    drop = before >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
