"""Tokenize the dataset once into a memory-mapped token file, cached by data digest and tokenizer.

The file is a flat array of token ids (uint16 when the vocabulary fits, else uint32) with an EOS
token after each document. Training reads windows from the memory map, so data larger than memory
streams from disk. ``tokens-<key>.bin`` and then ``tokens-<key>.json`` (its length and dtype) are
written under unique temporary names and renamed into place, and a reader checks the one against the
other, so a crash leaves no half file that a later run would trust. Builders on several nodes may
share the cache directory (a ReadWriteMany volume): each builds its own temporary, and since the key
fixes the content, one that finds the file already there at full length keeps that one (other nodes
may be reading it) and drops its own. Temporaries untouched for ``STALE_SECONDS`` are what killed
builders left (a live one writes every batch) and are removed before a build.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from model_runtime.files import atomic_file, make_dirs, remove_stale_temporaries, write_atomic
from model_runtime.training.exitcodes import DataError, OutputNotWritableError

BATCH_CHARS = 4 << 20
STALE_SECONDS = 15 * 60


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    return "sha256:" + hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_key(dataset_digest: str, data_format: str, field: str, tokenizer_sha: str) -> str:
    material = json.dumps([dataset_digest, data_format, field, tokenizer_sha])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"tokens-{key}.bin", cache_dir / f"tokens-{key}.json"


def open_token_file(cache_dir: Path, key: str) -> np.memmap | None:
    """The cached tokens for ``key``, or None when absent or incomplete."""
    data_path, meta_path = _paths(cache_dir, key)
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        complete = data_path.stat().st_size == meta["tokens"] * dtype.itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return np.memmap(data_path, dtype=dtype, mode="r") if complete else None


def build_token_file(
    pieces: Iterable[tuple[str, bool]],
    tokenizer: Tokenizer,
    eos_id: int,
    cache_dir: Path,
    key: str,
) -> np.memmap:
    """Tokenize ``pieces`` (text, ends_document) into the cache and return the memory map."""
    dtype = token_dtype(tokenizer.get_vocab_size())
    data_path, meta_path = _paths(cache_dir, key)
    eos = np.asarray([eos_id], dtype=dtype).tobytes()
    try:
        make_dirs(cache_dir)
        remove_stale_temporaries(cache_dir, STALE_SECONDS)
        with atomic_file(data_path, keep_existing=lambda tmp: _size(data_path) == tmp.stat().st_size) as f:
            count = content = 0
            for ids, ends in _encoded(pieces, tokenizer):
                if ids:
                    f.write(np.asarray(ids, dtype=dtype).tobytes())  # f.write: a full disk raises ENOSPC
                    count += len(ids)
                    content += len(ids)
                if ends:
                    f.write(eos)
                    count += 1
            if content == 0:
                raise DataError("data.path: the data holds no text (every document is empty)")
        write_atomic(meta_path, json.dumps({"tokens": count, "dtype": dtype.name}))
    except OSError as error:
        raise OutputNotWritableError(f"data.cacheDir: cannot write the token cache {data_path}: {error}") from None
    tokens = open_token_file(cache_dir, key)
    assert tokens is not None
    return tokens


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _encoded(pieces: Iterable[tuple[str, bool]], tokenizer: Tokenizer) -> Iterator[tuple[list[int], bool]]:
    """Encode pieces in batches of about BATCH_CHARS characters (the tokenizers library parallelises a batch)."""
    batch: list[tuple[str, bool]] = []
    size = 0
    for text, ends in pieces:
        batch.append((text, ends))
        size += len(text)
        if size >= BATCH_CHARS:
            yield from _encode_batch(batch, tokenizer)
            batch, size = [], 0
    yield from _encode_batch(batch, tokenizer)


def _encode_batch(batch: list[tuple[str, bool]], tokenizer: Tokenizer) -> Iterator[tuple[list[int], bool]]:
    if not batch:
        return
    encodings = tokenizer.encode_batch([text for text, _ in batch], add_special_tokens=False)
    for encoding, (_, ends) in zip(encodings, batch):
        yield encoding.ids, ends
