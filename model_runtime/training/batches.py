"""From a token file to batches: packing, the train/validation split and each rank's share of a step.

The sample order is a pure function of (seed, step), so a resumed run reads exactly the batches an
uninterrupted one would, and N processes together read what one process reads for the same global
batch: step s takes global samples [s*G, (s+1)*G) of an endless stream of per-epoch shuffles, and
rank r takes the r-th contiguous slice of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model_runtime.training.exitcodes import DataError


class PackedSequences:
    """Token windows of ``length + 1`` (inputs plus next-token targets) at stride ``length``."""

    def __init__(self, tokens: np.ndarray, length: int) -> None:
        self.tokens = tokens
        self.length = length
        self.count = max(0, (len(tokens) - 1) // length)
        if self.count == 0:
            raise DataError(
                f"data.path: the data has {len(tokens)} tokens; training.sequenceLength={length} needs at least {length + 1}"
            )

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """int64 tensor [len(indices), length + 1]."""
        rows = [np.asarray(self.tokens[i * self.length:i * self.length + self.length + 1], dtype=np.int64) for i in indices]
        return torch.from_numpy(np.stack(rows))


def split(count: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of sequence indices (a seeded permutation)."""
    n_val = 0 if validation_fraction == 0 else max(1, round(count * validation_fraction))
    if count - n_val < 1:
        raise DataError(
            f"data.path: only {count} sequence(s) of training.sequenceLength tokens; too few to hold out "
            f"data.validationFraction={validation_fraction} for validation"
        )
    order = np.random.default_rng([seed, 0x5A17]).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class BatchPlan:
    """Which training sequences each rank reads at each step."""

    train: np.ndarray
    global_batch: int
    micro_batch: int
    seed: int
    _epoch: int = field(default=-1, init=False)
    _order: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), init=False)

    def samples(self, step: int) -> np.ndarray:
        """The global batch of ``step``: sequence indices in order."""
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        n = len(self.train)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self.train[self._epoch_order(int(epoch))[positions[mask] % n]]
        return out

    def micro_batches(self, step: int, rank: int, world_size: int) -> list[np.ndarray]:
        """This rank's slice of the global batch, split into micro-batches (gradient accumulation)."""
        share = self.global_batch // world_size
        mine = self.samples(step)[rank * share:(rank + 1) * share]
        return [mine[i:i + self.micro_batch] for i in range(0, share, self.micro_batch)]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
            self._epoch = epoch
        return self._order


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """A contiguous, nearly equal share of ``indices`` for ``rank`` (validation)."""
    return np.array_split(indices, world_size)[rank]
