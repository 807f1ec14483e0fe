"""Tokens/s of the trainer with 1 and with 2 processes (DDP, gloo) on CPU, same global batch.

Each configuration runs through `modelfleet train` exactly as in a pod: one process directly, two via
the per-node launcher (PET_* variables). Rounds alternate; best and median rounds are reported.

  python bench/trainer_scaling.py
  python bench/trainer_scaling.py --preset small --batch 16 --seq 256 --steps 10
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from trainer_common import REPO, bench_config, measured_tokens_per_second, table


def run(args: argparse.Namespace, processes: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = bench_config(workdir, preset=args.preset, batch=args.batch, micro=args.batch // processes,
                              seq=args.seq, steps=2 * args.steps, interval=args.steps)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
        env["MODELFLEET_METRICS_PORT"] = "0"
        env["OMP_NUM_THREADS"] = str(max(1, args.cores // processes))
        if processes > 1:
            env.update(PET_NNODES="1", PET_NPROC_PER_NODE=str(processes), PET_NODE_RANK="0",
                       PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(_free_port()))
        subprocess.run([sys.executable, "-m", "modelfleet.cli", "train", "--config", str(workdir / "config.yaml")],
                       env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return measured_tokens_per_second(workdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    args = parser.parse_args()

    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for processes in results:
            results[processes].append(run(args, processes))
    base = max(results[1])
    rows = [[str(p), str(max(1, args.cores // p)), f"{max(r):,.0f}", f"{statistics.median(r):,.0f}", f"{max(r) / base:.2f}x"]
            for p, r in results.items()]
    print(f"preset={args.preset} batch={args.batch} seq={args.seq} steps={args.steps} rounds={args.rounds} "
          f"cores={args.cores} load={os.getloadavg()[0]:.1f}")
    print(table(["processes", "threads each", "tokens/s (best)", "tokens/s (median)", "speed-up (best)"], rows))


if __name__ == "__main__":
    main()
