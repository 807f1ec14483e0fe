"""Shared pieces of the serving benchmarks: the ~20M-parameter benchmark model and a bare batched decode loop."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenizers import Tokenizer, decoders, models

from model_runtime.artifact import save_model_dir
from model_runtime.llama import LlamaConfig, LlamaForCausalLM
from model_runtime.tokenizer import SPECIAL_TOKENS

# ~20M parameters, Llama-style with grouped-query attention (8 query heads share 2 KV heads).
BENCH_CONFIG = dict(vocab_size=259, hidden_size=512, intermediate_size=1408, num_hidden_layers=7,
                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)


def char_tokenizer() -> Tokenizer:
    """One token per character: printable ASCII, then Latin Extended letters, then BOS/EOS/PAD.

    A random model over bytes emits broken UTF-8 that a server must hold back until it becomes text, which
    would distort time-to-first-token and inter-token latency; every token of this one is a whole character."""
    chars = [chr(c) for c in range(32, 127)] + [chr(0x100 + i) for i in range(256 - 95)]
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def build_bench_model(target: Path) -> Path:
    if not (target / "config.json").exists():
        model = LlamaForCausalLM(LlamaConfig(**BENCH_CONFIG))
        model.init_weights(0)
        save_model_dir(model, char_tokenizer(), target)
    return target


def random_prompts(count: int, length: int, seed: int = 0) -> list[str]:
    """Printable ASCII, so the benchmark tokenizer gives exactly `length` tokens."""
    gen = torch.Generator().manual_seed(seed)
    return ["".join(chr(32 + c) for c in torch.randint(0, 95, (length,), generator=gen).tolist())
            for _ in range(count)]


@torch.inference_mode()
def bare_decode_loop(model: LlamaForCausalLM, batch: int, input_len: int, output_len: int) -> dict[str, float]:
    """The ideal static batch: one batched prefill, then greedy decode steps over a contiguous KV cache.

    No scheduler, no paging, no sampling options, no text: the upper bound an engine is measured against."""
    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    total = input_len + output_len
    shape = (cfg.num_hidden_layers, batch, total, cfg.num_key_value_heads, cfg.head_dim)
    k_cache = torch.zeros(shape, dtype=dtype, device=device)
    v_cache = torch.zeros(shape, dtype=dtype, device=device)
    length = 0

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[1]
        k_cache[layer, :, length:length + n] = k
        v_cache[layer, :, length:length + n] = v
        keys = k_cache[layer, :, :length + n].transpose(1, 2)
        values = v_cache[layer, :, :length + n].transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, is_causal=n > 1, enable_gqa=True)
        return out.transpose(1, 2)

    ids = torch.randint(0, 256, (batch, input_len), device=device)
    start = time.perf_counter()
    logits = model(ids, attend=attend)[:, -1]
    length = input_len
    prefill_done = time.perf_counter()
    for _ in range(output_len - 1):
        token = logits.argmax(-1, keepdim=True)
        positions = torch.full((batch, 1), length, device=device)
        logits = model(token, positions, attend=attend)[:, -1]
        length += 1
    logits.argmax(-1).tolist()
    end = time.perf_counter()
    return {"tokens_per_s": batch * output_len / (end - start),
            "decode_tokens_per_s": batch * (output_len - 1) / (end - prefill_done)}
