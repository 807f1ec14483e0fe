"""The finished model directory at ``output.path``: checked before training, written atomically after.

``save_model_dir`` stages the directory beside the target (``.<name>.partial-*``) and renames it into
place. Before training we remove stagings left by a run that was killed mid-save, and put back a
previous good output if a kill landed between its two renames.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from model_runtime.artifact import save_model_dir
from model_runtime.files import make_dirs, os_error, unique_suffix
from model_runtime.llama import LlamaForCausalLM
from model_runtime.training.exitcodes import OutputNotWritableError

log = logging.getLogger(__name__)


def probe_writable(directory: Path, probe_name: str) -> None:
    """Create `directory` and write, then remove, an empty file in it; OSError when either fails."""
    make_dirs(directory)
    probe = directory / f"{probe_name}-{unique_suffix()}"
    probe.write_bytes(b"")
    probe.unlink()


def prepare_output(path: str | Path) -> None:
    """Fail fast (exit 73) when the output cannot be written, and tidy what an interrupted save left."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputNotWritableError(f"output.path: {target} exists and is not a directory")
    try:
        probe_writable(target.parent, f".{target.name}.probe")
    except OSError as error:
        raise OutputNotWritableError(f"output.path: cannot write in {target.parent}: {error.strerror or error}") from None
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    previous = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if previous and not target.exists():
        log.warning("restoring %s from %s (a save was interrupted)", target, previous[-1])
        os.rename(previous.pop(), target)
    for stale in previous:
        shutil.rmtree(stale, ignore_errors=True)


def save_output(model: LlamaForCausalLM, tokenizer: Tokenizer, path: str | Path, manifest: dict[str, Any],
                base_model_dir: str | Path | None = None) -> str:
    """Write the model directory; an I/O failure (a full disk) leaves any previous output intact and exits 73."""
    try:
        return save_model_dir(model, tokenizer, path, manifest=manifest, base_model_dir=base_model_dir)
    except Exception as error:
        cause = os_error(error)
        if cause is None:
            raise
        raise OutputNotWritableError(f"output.path: cannot write the model to {path}: {cause}") from None
