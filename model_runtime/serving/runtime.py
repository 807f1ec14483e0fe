"""Everything one server process holds: the loaded model, its engine and metrics, and the lifecycle state."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from tokenizers import Tokenizer

from model_runtime.serving.async_engine import AsyncEngine
from model_runtime.serving.config import ServeConfig, plan_kv_cache
from model_runtime.serving.errors import APIError
from model_runtime.serving.engine import EngineLimits, EngineRequest, LLMEngine
from model_runtime.serving.loader import load_model_dir
from model_runtime.serving.metrics import RuntimeMetrics
from model_runtime.serving.sampling import SamplingParams
from model_runtime.serving.structured import GrammarCompiler

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ServerState:
    """Readiness, and the generation requests and sequences in flight (see api.AdmissionMiddleware)."""

    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    seqs_in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


@dataclass
class Runtime:
    cfg: ServeConfig
    model_name: str
    max_model_len: int
    tokenizer: Tokenizer
    chat_template: str
    special_tokens: dict[str, str]
    engine: AsyncEngine
    metrics: RuntimeMetrics
    pool: ThreadPoolExecutor
    max_prompt_chars: int
    grammars: GrammarCompiler
    created: int = field(default_factory=lambda: int(time.time()))
    _token_strings: dict[int, str] = field(default_factory=dict)

    async def offload(self, fn: Callable[..., T], *args) -> T:
        """Run CPU-heavy request preparation (template rendering, tokenization, grammar compilation) on the
        tokenizer threads, so one huge request never stalls the event loop and every other client."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def check_prompt_chars(self, text: str, param: str) -> None:
        """Refuse text that cannot fit the context before spending time tokenizing it."""
        if len(text) > self.max_prompt_chars:
            raise APIError(400, f"{param} has {len(text)} characters; this model's maximum context length of "
                                f"{self.max_model_len} tokens holds at most {self.max_prompt_chars}",
                           param=param, code="context_length_exceeded")

    def token_string(self, token_id: int) -> str:
        text = self._token_strings.get(token_id)
        if text is None:
            text = self._token_strings[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text


def build_runtime(cfg: ServeConfig) -> Runtime:
    """Load the model and build its engine (blocking: call it off the event loop)."""
    loaded = load_model_dir(cfg.model, cfg.dtype, cfg.device)
    dtype = next(loaded.model.parameters()).dtype
    num_blocks, max_model_len = plan_kv_cache(cfg, loaded.model.config, dtype)
    limits = EngineLimits(num_blocks=num_blocks, block_size=cfg.block_size, max_num_seqs=cfg.max_num_seqs,
                          max_num_batched_tokens=max(cfg.max_num_batched_tokens, cfg.max_num_seqs),
                          max_model_len=max_model_len, enable_prefix_caching=cfg.enable_prefix_caching)
    metrics = RuntimeMetrics(cfg.model_name, max_model_len)
    engine = LLMEngine(loaded.model, loaded.tokenizer, limits, loaded.eos_token_ids, metrics)
    log.info("loaded %s (%s, %s): %d KV blocks of %d tokens, context %d", cfg.model, dtype, cfg.device, num_blocks,
             cfg.block_size, max_model_len)
    pool = ThreadPoolExecutor(cfg.tokenizer_threads, thread_name_prefix="tokenize")
    return Runtime(cfg, cfg.model_name, max_model_len, loaded.tokenizer, loaded.chat_template,
                   loaded.special_tokens, AsyncEngine(engine), metrics, pool,
                   max_model_len * longest_token_chars(loaded.tokenizer),
                   GrammarCompiler(loaded.tokenizer, loaded.model.config.vocab_size, loaded.eos_token_ids))


def longest_token_chars(tokenizer: Tokenizer) -> int:
    """No token decodes to more characters than its vocabulary entry has, so a text longer than
    ``context * this`` cannot fit the context, whatever it is."""
    return max(len(piece) for piece in tokenizer.get_vocab(with_added_tokens=True))


async def warm_up(runtime: Runtime) -> None:
    """One short generation through every layer of the engine, so the first real request pays no warm-up cost."""
    request = EngineRequest(f"warmup-{uuid.uuid4().hex}", [0, 1, 2, 3], SamplingParams(max_tokens=4, temperature=0,
                                                                                   ignore_eos=True))
    async for _ in runtime.engine.generate(request):
        pass
