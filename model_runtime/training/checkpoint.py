"""Training checkpoints: ``step-00000100/`` directories in ``checkpoint.dir``.

Each is written under a unique temporary name (``.step-00000100.tmp-<host>-<pid>-<random>``) and
renamed into place, so a directory with a ``step-`` name is always complete; only the newest ``keep``
are kept. Pruning first renames a checkpoint to ``.step-*.prune-*`` and then deletes it, so a kill
mid-delete never leaves a half ``step-`` directory; the next start finishes what a killed run left.
A full disk exits 73 and keeps the checkpoints already written. The state is loaded with
``weights_only=True``: a checkpoint volume cannot smuggle code into the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_runtime.files import finish_tree, fsync_path, os_error, temp_path
from model_runtime.training.exitcodes import OutputNotWritableError
from model_runtime.training.output import probe_writable

STATE_FILE = "state.pt"
META_FILE = "meta.json"
_NAME = re.compile(r"^step-(\d{8})$")
_LEFTOVERS = (".step-*.tmp-*", ".step-*.prune-*")

log = logging.getLogger(__name__)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def prepare(self) -> None:
        """Create the directory and finish what a run killed mid-write or mid-prune left behind."""
        try:
            probe_writable(self.directory, ".probe")
        except OSError as error:
            raise OutputNotWritableError(f"checkpoint.dir: cannot write to {self.directory}: {error}") from None
        for pattern in _LEFTOVERS:
            for leftover in self.directory.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
        # A step directory is only ever renamed in complete, so an incomplete one is what a kill during an
        # older trainer's in-place delete left. (Complete ones wait for _prune: they may be another run's.)
        self._remove(path for _, path, complete in self._steps() if not complete)

    def _steps(self) -> list[tuple[int, Path, bool]]:
        """(step, path, complete) of every ``step-*`` directory, oldest first."""
        found = []
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _NAME.match(path.name)
                if match:
                    complete = (path / META_FILE).is_file() and (path / STATE_FILE).is_file()
                    found.append((int(match.group(1)), path, complete))
        return sorted(found)

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        return [(step, path) for step, path, complete in self._steps() if complete]

    def latest(self) -> Path | None:
        checkpoints = self.complete()
        return checkpoints[-1][1] if checkpoints else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        final = self.directory / checkpoint_name(step)
        tmp = temp_path(final)
        try:
            tmp.mkdir()
            with open(tmp / STATE_FILE, "wb") as f:  # a file object: a failed write surfaces its OSError
                torch.save(state, f)
            (tmp / META_FILE).write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
            finish_tree(tmp)
            if final.exists():  # written before a restart; the same step yields the same state
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, final)
                fsync_path(self.directory)
        except Exception as error:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = os_error(error)
            if cause is None:
                raise
            raise OutputNotWritableError(f"checkpoint.dir: cannot write checkpoint {final}: {cause}") from None
        self._prune()
        return final

    @staticmethod
    def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        return state, json.loads((path / META_FILE).read_text())

    def _prune(self) -> None:
        """Remove every ``step-*`` directory but the newest ``keep`` complete ones."""
        kept = {path for _, path in self.complete()[-self.keep:]}
        self._remove(path for _, path, _ in self._steps() if path not in kept)

    @staticmethod
    def _remove(paths: Iterable[Path]) -> None:
        """Rename each aside (atomic: it stops being a checkpoint at once), then delete it."""
        for path in paths:
            doomed = temp_path(path, "prune")
            try:
                os.rename(path, doomed)
            except OSError as error:  # pruning is housekeeping: never worth failing a run for
                log.warning("cannot remove old checkpoint %s: %s", path, error)
                continue
            shutil.rmtree(doomed, ignore_errors=True)


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
