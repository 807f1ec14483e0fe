"""A plain PyTorch training script (no modelfleet import) that a TrainingJob runs with spec.container.

It trains a tiny Llama-architecture language model on a text and writes it in Hugging Face's layout
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json), so a
ModelDeployment (`spec.model.trainingJobRef`), vLLM or transformers can serve it.

It uses what the operator gives every pod:
- MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK: torch.distributed's env:// rendezvous (one process per pod);
- MODELFLEET_CHECKPOINT_DIR: where to checkpoint, so a restarted gang resumes where it stopped;
- MODELFLEET_OUTPUT_DIR: where the finished model goes (written to a temporary name first, then renamed);
- MODELFLEET_REPORT_FILE: a file to append JSON lines to; the operator shows them in `kubectl get tj`:
  {"step": 10, "totalSteps": 200, "loss": 0.12} and, once the model is written, {"model": {"path": "..."}}.

Each of them is optional, so the script also runs on a laptop: `python train.py --steps 50`. It needs torch,
safetensors and tokenizers (modelfleet's runtime image has all three). Training is deterministic for a given
seed, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from torch.nn import functional as F

TEXT = ("The quick brown fox jumps over the lazy dog. A small model learns this text by heart, one byte at a "
        "time, and then says it back. ")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


# -- the model: Llama's architecture, with Hugging Face's parameter names ---------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        h, self.heads, self.head_dim = c["hidden_size"], c["num_attention_heads"], c["hidden_size"] // c["num_attention_heads"]
        self.q_proj, self.k_proj = nn.Linear(h, h, bias=False), nn.Linear(h, h, bias=False)
        self.v_proj, self.o_proj = nn.Linear(h, h, bias=False), nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h))


class MLP(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False), nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.self_attn, self.mlp = Attention(c), MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class TinyLlama(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.model, self.lm_head = Decoder(c), nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        dim = c["hidden_size"] // c["num_attention_heads"]
        self.register_buffer("inv_freq", 1.0 / c["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(ids.shape[1]).float()[:, None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))


# -- data, reporting, output -------------------------------------------------------------------------------------------

def byte_tokenizer() -> Tokenizer:
    """Bytes as tokens 0-255 (GPT-2's byte-to-character mapping), then BOS and EOS: no training needed."""
    chars = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        table[byte] = chr(byte) if byte in chars else chr(256 + extra)
        extra += byte not in chars
    tokenizer = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BOS, EOS])
    return tokenizer


def batch(tokens: torch.Tensor, step: int, rank: int, size: int, length: int, seed: int) -> torch.Tensor:
    """This rank's windows for `step`: deterministic, so a resumed run sees the data it would have seen."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    starts = torch.randint(0, len(tokens) - length - 1, (size,), generator=generator)
    return torch.stack([tokens[s:s + length + 1] for s in starts.tolist()])


def report(record: dict) -> None:
    """Append one JSON line to MODELFLEET_REPORT_FILE (rank 0 only; nothing when the variable is unset)."""
    path = os.environ.get("MODELFLEET_REPORT_FILE")
    if path and int(os.environ.get("RANK", "0")) == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@torch.no_grad()
def greedy(model: TinyLlama, tokenizer: Tokenizer, prompt: str, tokens: int) -> str:
    ids = tokenizer.encode(prompt).ids
    for _ in range(tokens):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return tokenizer.decode(ids[len(tokenizer.encode(prompt).ids):])


def write_model(output: str, model: TinyLlama, config: dict, tokenizer: Tokenizer) -> None:
    """The Hugging Face layout, complete under a temporary name before it takes the output's place."""
    staging = output.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(staging, "model.safetensors"))
    tokenizer.save(os.path.join(staging, "tokenizer.json"))
    files = {"config.json": config,
             "generation_config.json": {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]},
             "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
                                       "chat_template": CHAT_TEMPLATE}}
    for name, data in files.items():
        with open(os.path.join(staging, name), "w") as f:
            json.dump(data, f, indent=2)
    shutil.rmtree(output, ignore_errors=True)  # a model left by an earlier run of the same job
    os.rename(staging, output)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--text", help="a UTF-8 text file to learn (default: a built-in paragraph)")
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (to watch it run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", init_method="env://")  # MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE
    tokenizer = byte_tokenizer()
    text = open(args.text, encoding="utf-8").read() if args.text else TEXT * 8
    tokens = torch.tensor(tokenizer.encode(text).ids)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": tokenizer.get_vocab_size(),
              "hidden_size": args.hidden_size, "intermediate_size": 4 * args.hidden_size,
              "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 4 * args.seq_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
              "bos_token_id": tokenizer.token_to_id(BOS), "eos_token_id": tokenizer.token_to_id(EOS)}
    torch.manual_seed(args.seed)
    model = TinyLlama(config)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    checkpoints = os.environ.get("MODELFLEET_CHECKPOINT_DIR")
    checkpoint = os.path.join(checkpoints, "last.pt") if checkpoints else None
    start = 0
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"resuming from step {start}", flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)  # the pod is being stopped: checkpoint at the end of this step, then exit

    def save_checkpoint(step: int) -> None:
        if checkpoint and rank == 0:
            os.makedirs(checkpoints, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                       checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)

    for step in range(start + 1, args.steps + 1):
        for group in optimizer.param_groups:  # cosine decay to a tenth: a function of the step, so resumes match
            group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / args.steps)))
        windows = batch(tokens, step, rank, args.batch_size, args.seq_len, args.seed)
        logits = ddp(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if world > 1:  # the mean loss over all ranks, for the report
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            loss = mean / world
        if step % 10 == 0 or step in (start + 1, args.steps):
            print(f"step {step}/{args.steps} loss {loss.item():.5f}", flush=True)
            report({"step": step, "totalSteps": args.steps, "loss": loss.item()})
        if step % args.checkpoint_every == 0:
            save_checkpoint(step)
        if stopping:
            save_checkpoint(step)
            print(f"SIGTERM: checkpointed step {step}", flush=True)
            return 143
        time.sleep(args.step_seconds)

    output = os.environ.get("MODELFLEET_OUTPUT_DIR")
    if rank == 0:
        print(f"sample: {json.dumps(greedy(model, tokenizer, 'The quick', 24))}", flush=True)
        if output:
            write_model(output, model, config, tokenizer)
            report({"model": {"path": output}})
            print(f"wrote {output}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
