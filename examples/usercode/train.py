"""A plain PyTorch training script (no modelfleet import) that a TrainingJob runs with spec.container.

It uses what the operator gives every pod:
- MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK: torch.distributed's env:// rendezvous (one process per pod);
- MODELFLEET_CHECKPOINT_DIR: where to checkpoint, so a restarted gang resumes where it stopped;
- MODELFLEET_OUTPUT_DIR: where the finished model goes (model.safetensors, written to a temporary name first);
- MODELFLEET_REPORT_FILE: a file to append JSON lines to; the operator shows them in `kubectl get tj`:
  {"step": 10, "totalSteps": 200, "loss": 0.12} and, once the model is written, {"model": {"path": "..."}}.

Each of them is optional, so the script also runs on a laptop: `python train.py --steps 50`.
It fits a small MLP to y = sin(3x) on synthetic data (the same data on every run, for a given seed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn


def report(record: dict) -> None:
    """Append one JSON line to MODELFLEET_REPORT_FILE (rank 0 only; nothing when the variable is unset)."""
    path = os.environ.get("MODELFLEET_REPORT_FILE")
    if path and int(os.environ.get("RANK", "0")) == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def batch(step: int, rank: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's batch for `step`: deterministic, so a resumed run sees the data it would have seen."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.rand(size, 1, generator=generator) * 4 - 2
    return x, torch.sin(3 * x)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (to watch it run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", init_method="env://")  # MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

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

    step = start
    for step in range(start + 1, args.steps + 1):
        x, y = batch(step, rank, args.batch_size, args.seed)
        loss = nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if world > 1:  # the mean loss over all ranks, for the report
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            loss = mean / world
        if step % 10 == 0 or step == args.steps:
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
    if output and rank == 0:
        staging = output.rstrip("/") + ".tmp"
        os.makedirs(staging, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(staging, "model.safetensors"))
        shutil.rmtree(output, ignore_errors=True)  # a model left by an earlier run of the same job
        os.rename(staging, output)
        report({"model": {"path": output}})
        print(f"wrote {output}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
