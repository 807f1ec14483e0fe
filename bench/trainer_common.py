"""Shared pieces of the trainer benchmarks: a configuration on the bundled corpus and reading throughput back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "data" / "corpus.txt"


def bench_config(workdir: Path, *, preset: str, batch: int, micro: int, seq: int, steps: int, interval: int,
                 precision: str = "fp32", compile_model: bool = False, vocab: int | None = None) -> dict[str, Any]:
    """No evaluation, no checkpoints: only the training loop is timed (two log intervals; the second is measured).

    ``vocab`` sizes the embeddings beyond the byte tokenizer's 259 tokens (the cost of a BPE vocabulary)."""
    model: dict[str, Any] = {"preset": preset, "contextLength": max(seq, 256)}
    if vocab:
        model["vocabSize"] = vocab
    return {
        "model": model,
        "data": {"path": str(CORPUS), "validationFraction": 0.0, "cacheDir": str(workdir / "cache")},
        "tokenizer": {"type": "byte"},
        "training": {"steps": steps, "globalBatchSize": batch, "microBatchSize": micro, "sequenceLength": seq,
                     "learningRate": 1e-3, "evalEvery": 0, "logEvery": interval, "precision": precision,
                     "compile": compile_model},
        "checkpoint": {"dir": str(workdir / "checkpoints"), "every": 0},
        "output": {"path": str(workdir / "model")},
    }


def measured_tokens_per_second(workdir: Path) -> float:
    """Throughput of the last log interval (the first one includes warm-up)."""
    lines = (workdir / "checkpoints" / "history.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["tokensPerSecond"])


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(headers, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
