"""Tokenize the dataset once into a memory-mapped token file, cached by data digest and tokenizer.

The file is a flat array of token ids (uint16 when the vocabulary fits, else uint32) with an EOS
token after each document. Training reads windows from the memory map, so data larger than memory
streams from disk. Files are written under a temporary name and renamed, so a crash mid-way leaves
no half file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from model_runtime.training.exitcodes import DataError, OutputNotWritableError

BATCH_CHARS = 4 << 20


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    return "sha256:" + hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_key(dataset_digest: str, data_format: str, field: str, tokenizer_sha: str) -> str:
    material = json.dumps([dataset_digest, data_format, field, tokenizer_sha])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def open_token_file(cache_dir: Path, key: str) -> np.memmap | None:
    """The cached tokens for ``key``, or None when absent or incomplete."""
    meta_path, data_path = cache_dir / f"tokens-{key}.json", cache_dir / f"tokens-{key}.bin"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    dtype = np.dtype(meta["dtype"])
    if not data_path.is_file() or data_path.stat().st_size != meta["tokens"] * dtype.itemsize:
        return None
    return np.memmap(data_path, dtype=dtype, mode="r")


def build_token_file(
    pieces: Iterable[tuple[str, bool]],
    tokenizer: Tokenizer,
    eos_id: int,
    cache_dir: Path,
    key: str,
) -> np.memmap:
    """Tokenize ``pieces`` (text, ends_document) into the cache and return the memory map."""
    dtype = token_dtype(tokenizer.get_vocab_size())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".tokens-{key}.bin.tmp-{os.getpid()}"
        count = content = 0
        with open(tmp, "wb") as f:
            for ids, ends in _encoded(pieces, tokenizer):
                if ids:
                    np.asarray(ids, dtype=dtype).tofile(f)
                    count += len(ids)
                    content += len(ids)
                if ends:
                    np.asarray([eos_id], dtype=dtype).tofile(f)
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        if content == 0:
            tmp.unlink()
            raise DataError("data.path: the data holds no text (every document is empty)")
        os.rename(tmp, cache_dir / f"tokens-{key}.bin")
        meta_tmp = cache_dir / f".tokens-{key}.json.tmp-{os.getpid()}"
        meta_tmp.write_text(json.dumps({"tokens": count, "dtype": dtype.name}))
        os.rename(meta_tmp, cache_dir / f"tokens-{key}.json")
    except OSError as error:
        raise OutputNotWritableError(f"data.cacheDir: cannot write the token cache in {cache_dir}: {error}") from None
    tokens = open_token_file(cache_dir, key)
    assert tokens is not None
    return tokens


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
