"""Tokens/s of the trainer against a bare PyTorch loop (goal: overhead <= 5%) and against what a user would pick
instead, PyTorch Lightning and transformers' Trainer (goal: at least as fast as the fastest), side by side.

All run the same model (our LlamaForCausalLM), AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), gradient
clipping at 1.0, gradient accumulation and batch shape; the bare loop, Lightning and the HF Trainer feed
pre-built random batches and do nothing else (no logging, no checkpoints), the trainer reads its tokenized
corpus. Rounds alternate to spread machine noise; the best and the median round per system are reported.
On a GPU it also prints model FLOPs utilization (MFU). Lightning and accelerate are not project dependencies:
`pip install -e '.[bench]'` installs the pinned versions; a system whose package is missing is listed as such.

  python bench/trainer_overhead.py                                  # CPU, tiny model
  python bench/trainer_overhead.py --device cuda --preset base --vocab 32000 --precision bf16 --batch 32 --micro 32 \
      --seq 1024 --compile
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from pathlib import Path
from typing import Any, Callable

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
    optimizer = adamw(model, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    accumulation = args.batch // args.micro
    batches = torch.randint(0, 259, (accumulation, args.micro, args.seq + 1), device=device)

    def step() -> None:
        for batch in batches:
            loss = lm_loss(net, batch, autocast)
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


def random_batches(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """(steps x accumulation, micro, seq + 1) token ids: the inputs and shifted labels of every micro-batch."""
    return torch.randint(0, 259, (2 * args.steps * (args.batch // args.micro), args.micro, args.seq + 1), device=device)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor, autocast: Any) -> torch.Tensor:
    with autocast:
        logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def lightning_run(args: argparse.Namespace) -> float:
    """The same model and optimizer as a LightningModule, run by lightning.Trainer with its extras switched off."""
    import lightning as L

    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = LlamaForCausalLM(llama_config(args))
            self.model.init_weights(0)
            self.net = torch.compile(self.model) if args.compile else self.model

        def training_step(self, batch: torch.Tensor, index: int) -> torch.Tensor:
            return lm_loss(self.net, batch, autocast)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return adamw(self.model, device)

    clock = StepClock(args.steps)

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, index: int) -> None:
            if (index + 1) % (args.batch // args.micro) == 0:
                clock.tick(device)

    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=2 * args.steps,
                        accumulate_grad_batches=args.batch // args.micro, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Timer()])
    loader = torch.utils.data.DataLoader(list(random_batches(args, torch.device("cpu"))), batch_size=None)
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        trainer.fit(Module(), loader)
    return clock.tokens_per_second(args)


def hf_trainer_run(args: argparse.Namespace) -> float:
    """The same model behind transformers' Trainer (loss returned by the model, as the Trainer expects)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    device = torch.device(args.device)
    autocast = nullcontext()  # the Trainer autocasts itself with bf16=True

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = LlamaForCausalLM(llama_config(args))
            self.model.init_weights(0)
            self.net = torch.compile(self.model) if args.compile else self.model

        def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": lm_loss(self.net, input_ids, autocast)}

    clock = StepClock(args.steps)

    class Timer(TrainerCallback):
        def on_step_end(self, *unused: Any, **kwargs: Any) -> None:
            clock.tick(device)

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, max_steps=2 * args.steps, per_device_train_batch_size=args.micro,
            gradient_accumulation_steps=args.batch // args.micro, learning_rate=1e-3, weight_decay=0.1,
            adam_beta2=0.95, max_grad_norm=1.0, lr_scheduler_type="constant", logging_strategy="no",
            save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=device.type == "cpu",
            bf16=args.precision == "bf16", dataloader_num_workers=0, optim="adamw_torch_fused" if device.type == "cuda"
            else "adamw_torch")
        rows = [{"input_ids": row} for row in random_batches(args, torch.device("cpu")).flatten(0, 1)]
        trainer = Trainer(model=WithLoss(), args=training, train_dataset=rows, callbacks=[Timer()])
        trainer.train()
    return clock.tokens_per_second(args)


class StepClock:
    """Times the second half of the optimizer steps (the first half is warm-up)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.started, self.ended = warmup, 0, 0.0, 0.0

    def tick(self, device: torch.device) -> None:
        _sync(device)
        self.steps += 1
        if self.steps == self.warmup:
            self.started = time.perf_counter()
        self.ended = time.perf_counter()

    def tokens_per_second(self, args: argparse.Namespace) -> float:
        assert self.steps == 2 * self.warmup, f"{self.steps} optimizer steps, expected {2 * self.warmup}"
        return args.steps * args.batch * args.seq / (self.ended - self.started)


def adamw(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), fused=device.type == "cuda")


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
    parser.add_argument("--only", nargs="*", default=None, help="frameworks to compare (default: every installed one)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    args = parser.parse_args()
    # The trainer turns on deterministic algorithms on CPU for exact resume; the bare loop runs under the same setting.
    torch.use_deterministic_algorithms(args.device == "cpu")

    systems: dict[str, Callable[[argparse.Namespace], float]] = {
        "bare PyTorch loop": bare_loop, "modelfleet trainer": trainer_run}
    missing = []
    for name, package, run in (("PyTorch Lightning", "lightning", lightning_run),
                               ("transformers Trainer", "accelerate", hf_trainer_run)):
        if args.only and name not in args.only:
            continue
        if importlib.util.find_spec(package) is None:
            missing.append(f"{name} (pip install -e '.[bench]')")
        else:
            systems[name] = run
    rounds: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.rounds):
        for name, run in systems.items():
            rounds[name].append(run(args))
    best = {name: max(values) for name, values in rounds.items()}
    median = {name: statistics.median(values) for name, values in rounds.items()}
    bare, ours = "bare PyTorch loop", "modelfleet trainer"
    rows = []
    for name in systems:
        overhead = "" if name == bare else (f"{100 * (best[bare] - best[name]) / best[bare]:+.1f}% / "
                                            f"{100 * (median[bare] - median[name]) / median[bare]:+.1f}%")
        versus = "" if name in (bare, ours) else f"{best[ours] / best[name]:.2f}x / {median[ours] / median[name]:.2f}x"
        rows.append([name, f"{best[name]:,.0f}", f"{median[name]:,.0f}", overhead, versus, ""])
    if args.device.startswith("cuda"):
        per_token = flops_per_token(args)
        for row, name in zip(rows, systems):
            row[5] = f"{100 * best[name] * per_token / (args.peak_tflops * 1e12):.1f}%"
    print(f"device={args.device} preset={args.preset} vocab={args.vocab or 259} precision={args.precision} batch={args.batch} "
          f"micro={args.micro} seq={args.seq} steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.1f}")
    print("per-round tokens/s: " + "; ".join(f"{name} {[round(x) for x in values]}" for name, values in rounds.items()))
    print(table(["system", "tokens/s (best)", "tokens/s (median)", "slower than bare (best / median)",
                 "modelfleet speed-up (best / median)", "MFU (best)"], rows))
    for name in missing:
        print(f"not run: {name}")


if __name__ == "__main__":
    main()
