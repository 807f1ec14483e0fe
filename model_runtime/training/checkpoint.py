"""Training checkpoints: ``step-00000100/`` directories in ``checkpoint.dir``.

Each is written under a temporary name (``.step-00000100.tmp-<pid>``) and renamed into place, so a
directory with a ``step-`` name is always complete; only the newest ``keep`` are kept. The state is
loaded with ``weights_only=True``: a checkpoint volume cannot smuggle code into the trainer.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_runtime.training.exitcodes import OutputNotWritableError
from model_runtime.training.output import probe_writable

STATE_FILE = "state.pt"
META_FILE = "meta.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def prepare(self) -> None:
        """Create the directory and remove temporaries left by a run that died mid-write."""
        try:
            probe_writable(self.directory, ".probe")
        except OSError as error:
            raise OutputNotWritableError(f"checkpoint.dir: cannot write to {self.directory}: {error}") from None
        for leftover in self.directory.glob(".step-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        found = []
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _NAME.match(path.name)
                if match and (path / META_FILE).is_file() and (path / STATE_FILE).is_file():
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self) -> Path | None:
        checkpoints = self.complete()
        return checkpoints[-1][1] if checkpoints else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        final = self.directory / checkpoint_name(step)
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            torch.save(state, tmp / STATE_FILE)
            (tmp / META_FILE).write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
            _fsync_dir(tmp)
            if final.exists():  # written before a restart; the same step yields the same state
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, final)
                _fsync(self.directory)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputNotWritableError(f"checkpoint.dir: cannot write checkpoint {final}: {error}") from None
        self._prune()
        return final

    @staticmethod
    def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        return state, json.loads((path / META_FILE).read_text())

    def _prune(self) -> None:
        for _, path in self.complete()[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    for file in directory.iterdir():
        _fsync(file)
    _fsync(directory)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
