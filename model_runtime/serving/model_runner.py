"""Runs one engine step through the model: all scheduled tokens of all sequences in one [1, N] forward.

The KV cache is paged: per layer, K and V are [num_blocks, block_size, kv_heads, head_dim]; token ``p`` of
a sequence lives in block ``block_table[p // block_size]`` at offset ``p % block_size``. ``PagedAttention``
writes the step's new K/V into their slots, then attends each query over its own sequence's context:
- decode tokens (one query each) as one batch: their blocks gathered into [B, L_max] with a padding mask;
- each prefill chunk on its own: with no cached context its own K/V with a causal mask, otherwise its
  gathered context with a causal mask offset by the tokens already computed.
Only the last position of sequences that sample goes through the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model_runtime.llama import LlamaForCausalLM
from model_runtime.serving.sequence import Sequence


@dataclass
class _Prefill:
    start: int  # first row of this chunk in the flattened batch
    length: int  # query tokens
    block_ids: torch.Tensor | None  # context blocks, None when the chunk is the whole context so far
    context_len: int
    mask: torch.Tensor | None  # [length, context_len] (True = attend); None: plain causal


class PagedAttention:
    """The ``attend`` callable for one step; the metadata is built once and reused by every layer."""

    def __init__(self, runner: "ModelRunner", items: list[tuple[Sequence, int]], num_decodes: int) -> None:
        device, bs = runner.device, runner.block_size
        self.runner = runner
        slots: list[int] = []
        self.prefills: list[_Prefill] = []
        self.num_decodes = num_decodes
        ctx_lens = []
        tables = []
        row = 0
        for seq, n in items:
            start = seq.num_computed_tokens
            table = seq.block_table
            if n == 1:
                slots.append(table[start // bs] * bs + start % bs)
                ctx_lens.append(start + 1)
                tables.append(table[: -(-(start + 1) // bs)])
            else:
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
                total = start + n
                if start == 0:
                    self.prefills.append(_Prefill(row, n, None, n, None))
                else:
                    blocks = torch.tensor(table[: -(-total // bs)], dtype=torch.long, device=device)
                    mask = torch.ones(n, total, dtype=torch.bool, device=device).tril(diagonal=start)
                    self.prefills.append(_Prefill(row, n, blocks, total, mask))
            row += n
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        if num_decodes:
            width = max(len(t) for t in tables)
            self.decode_blocks = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=device)
            lens = torch.tensor(ctx_lens, device=device)
            positions = torch.arange(width * bs, device=device)
            self.decode_mask = (positions[None, :] < lens[:, None])[:, None, None, :]  # [B, 1, 1, L]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self.runner.k_cache[layer], self.runner.v_cache[layer]
        kv_heads, head_dim = k.shape[2], k.shape[3]
        k_cache.view(-1, kv_heads, head_dim).index_copy_(0, self.slots, k[0])
        v_cache.view(-1, kv_heads, head_dim).index_copy_(0, self.slots, v[0])
        parts = []
        b = self.num_decodes
        if b:
            qd = q[0, :b].unsqueeze(2)  # [B, H, 1, D]
            kd = k_cache.index_select(0, self.decode_blocks.view(-1)).view(b, -1, kv_heads, head_dim).transpose(1, 2)
            vd = v_cache.index_select(0, self.decode_blocks.view(-1)).view(b, -1, kv_heads, head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=self.decode_mask, enable_gqa=True)
            parts.append(out.squeeze(2))
        for p in self.prefills:
            qp = q[:, p.start:p.start + p.length].transpose(1, 2)
            if p.block_ids is None:
                kp = k[:, p.start:p.start + p.length].transpose(1, 2)
                vp = v[:, p.start:p.start + p.length].transpose(1, 2)
                out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
            else:
                kp = k_cache.index_select(0, p.block_ids).view(1, -1, kv_heads, head_dim)[:, :p.context_len].transpose(1, 2)
                vp = v_cache.index_select(0, p.block_ids).view(1, -1, kv_heads, head_dim)[:, :p.context_len].transpose(1, 2)
                out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, enable_gqa=True)
            parts.append(out.transpose(1, 2)[0])
        return torch.cat(parts).unsqueeze(0) if len(parts) > 1 else parts[0].unsqueeze(0)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int) -> None:
        cfg = model.config
        param = next(model.parameters())
        self.model = model
        self.device = param.device
        self.dtype = param.dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def execute(self, items: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor]:
        """Run the scheduled tokens; returns the sequences whose last token was computed and their logits."""
        items = sorted(items, key=lambda item: item[1] != 1)  # decodes first, so they are rows [0, B)
        num_decodes = sum(1 for _, n in items if n == 1)
        ids: list[int] = []
        positions: list[int] = []
        sample_rows: list[int] = []
        samplers: list[Sequence] = []
        for seq, n in items:
            start = seq.num_computed_tokens
            ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            if start + n == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
                samplers.append(seq)
        attend = PagedAttention(self, items, num_decodes)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.tensor([positions], dtype=torch.long, device=self.device)
        hidden = self.model.hidden_states(input_ids, pos, attend)
        if not samplers:
            return [], hidden.new_empty((0, self.model.config.vocab_size))
        rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
        return samplers, self.model.lm_head(hidden[0].index_select(0, rows))
