"""Tokens/s of the trainer against a bare PyTorch loop on the same model and batch (goal: overhead <= 5%).

Both run the same model (our LlamaForCausalLM), AdamW, gradient clipping and batch shape; the bare loop
feeds pre-built random batches and does nothing else. Rounds alternate to spread machine noise; the
best and the median round per side are reported. On a GPU it also prints model FLOPs utilization (MFU).

  python bench/trainer_overhead.py                                  # CPU, tiny model
  python bench/trainer_overhead.py --device cuda --preset base --vocab 32000 --precision bf16 --batch 32 --micro 32 \
      --seq 1024 --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer_common import bench_config, measured_tokens_per_second, table

from model_runtime.llama import LlamaConfig, LlamaForCausalLM
from model_runtime.training.config import parse_config
from model_runtime.training.distributed import WorkerEnv
from model_runtime.training.trainer import run_worker


def bare_loop(args: argparse.Namespace) -> float:
    """The same work as the trainer, written as the shortest PyTorch loop; returns tokens/s of the timed half."""
    device = torch.device(args.device)
    model = LlamaForCausalLM(llama_config(args))
    model.init_weights(0)
    model.to(device).train()
    net = torch.compile(model) if args.compile else model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    accumulation = args.batch // args.micro
    batches = torch.randint(0, 259, (accumulation, args.micro, args.seq + 1), device=device)

    def step() -> None:
        for batch in batches:
            with autocast:
                logits = net(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the trainer syncs once per log interval; one sync per step is a fair upper bound here

    for _ in range(args.steps):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return args.steps * args.batch * args.seq / (time.perf_counter() - started)


def trainer_run(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = parse_config(bench_config(workdir, **_shape(args), steps=2 * args.steps, interval=args.steps,
                                           precision=args.precision, compile_model=args.compile))
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
            run_worker(config, WorkerEnv(), {"MODELFLEET_METRICS_PORT": "0"})
        return measured_tokens_per_second(workdir)


def llama_config(args: argparse.Namespace) -> LlamaConfig:
    """The architecture the trainer builds for these arguments (byte tokenizer: 259 tokens unless --vocab)."""
    spec = parse_config(bench_config(Path("/unused"), **_shape(args), steps=1, interval=1)).model
    return spec.to_llama_config(args.vocab or 259)


def _shape(args: argparse.Namespace) -> dict:
    return {"preset": args.preset, "batch": args.batch, "micro": args.micro, "seq": args.seq, "vocab": args.vocab}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(args: argparse.Namespace) -> float:
    """6 x parameters in matmuls (embeddings excluded, lm_head included) + attention (PaLM's appendix B)."""
    config = llama_config(args)
    matmul_params = config.num_parameters - config.vocab_size * config.hidden_size
    return 6 * matmul_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--vocab", type=int, default=None, help="model vocabulary (e.g. 32000 for a BPE-sized head)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    args = parser.parse_args()
    # The trainer turns on deterministic algorithms on CPU for exact resume; the bare loop runs under the same setting.
    torch.use_deterministic_algorithms(args.device == "cpu")

    bare, trainer = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(args))
        trainer.append(trainer_run(args))
    best_b, best_t = max(bare), max(trainer)
    med_b, med_t = statistics.median(bare), statistics.median(trainer)
    rows = [["bare PyTorch loop", f"{best_b:,.0f}", f"{med_b:,.0f}", "", ""],
            ["modelfleet trainer", f"{best_t:,.0f}", f"{med_t:,.0f}",
             f"{100 * (best_b - best_t) / best_b:+.1f}% / {100 * (med_b - med_t) / med_b:+.1f}%", ""]]
    if args.device.startswith("cuda"):
        per_token = flops_per_token(args)
        for row, rate in zip(rows, (best_b, best_t)):
            row[4] = f"{100 * rate * per_token / (args.peak_tflops * 1e12):.1f}%"
    print(f"device={args.device} preset={args.preset} vocab={args.vocab or 259} precision={args.precision} batch={args.batch} "
          f"micro={args.micro} seq={args.seq} steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"per-round tokens/s: bare {[round(x) for x in bare]} trainer {[round(x) for x in trainer]}")
    print(table(["loop", "tokens/s (best)", "tokens/s (median)", "overhead (best / median)", "MFU (best)"], rows))


if __name__ == "__main__":
    main()
