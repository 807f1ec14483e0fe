"""The model directory that the trainer writes and the runtime (and transformers, vLLM) reads.

Layout: config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json and modelfleet.json (the manifest: weights digest and provenance).
The directory is written under a temporary name beside the target and renamed into place, so a
reader never sees half a model and a good model is only replaced by a complete one. It is mode 0755
with 0644 files whatever the umask: the serving pod may run as another uid.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from model_runtime.files import finish_tree, make_dirs, sha256_file, temp_path
from model_runtime.llama import LlamaForCausalLM
from model_runtime.tokenizer import special_token_ids, tokenizer_config

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "modelfleet.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model_dir(
    model: LlamaForCausalLM,
    tokenizer: Tokenizer,
    target: str | Path,
    manifest: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    base_model_dir: str | Path | None = None,
) -> str:
    """Write the model directory atomically; returns the weights digest ("sha256:...").

    A tokenizer without modelfleet's special tokens (a fine-tuned model keeping its base model's
    tokenizer) keeps the base model's tokenizer_config.json, generation_config.json and token ids.
    """
    target = Path(target)
    make_dirs(target.parent)
    staging = temp_path(target, "partial")
    staging.mkdir()
    try:
        ids = special_token_ids(tokenizer)
        foreign = ids["eos_token_id"] is None
        if foreign and base_model_dir is None:
            raise ValueError("the tokenizer has no modelfleet special tokens: pass the base model directory it came from")
        config = model.config.to_dict()
        if not foreign:
            config.update({k: v for k, v in ids.items() if k != "pad_token_id"})
        if dtype is not None:
            config["torch_dtype"] = str(dtype).removeprefix("torch.")
        _write_json(staging / "config.json", config)
        state = model.state_dict_for_save()
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        save_file({k: v.cpu() for k, v in state.items()}, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save(str(staging / "tokenizer.json"))
        if foreign:
            _copy_tokenizer_metadata(Path(base_model_dir), staging, config)  # type: ignore[arg-type]
        else:
            _write_json(staging / "tokenizer_config.json", tokenizer_config(tokenizer))
            _write_json(staging / "generation_config.json", {
                "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"], "pad_token_id": ids["pad_token_id"],
            })
        digest = sha256_file(staging / WEIGHTS_FILE)
        _write_json(staging / MANIFEST_FILE, {"digest": digest, **(manifest or {})})
        finish_tree(staging)
        _replace_dir(staging, target)
        return digest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_tokenizer_metadata(base: Path, staging: Path, config: dict[str, Any]) -> None:
    """The base model's tokenizer_config.json and generation_config.json (or one made from its token ids)."""
    if (base / "tokenizer_config.json").exists():
        shutil.copyfile(base / "tokenizer_config.json", staging / "tokenizer_config.json")
    if (base / "generation_config.json").exists():
        shutil.copyfile(base / "generation_config.json", staging / "generation_config.json")
    else:
        ids = {k: config[k] for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None}
        _write_json(staging / "generation_config.json", ids)


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST_FILE).read_text())


def _replace_dir(staging: Path, target: Path) -> None:
    """Rename staging into target. An existing target is moved aside first and removed only after."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = temp_path(target, "old")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
