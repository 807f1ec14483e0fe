"""Prepare a run's data: list and digest the files, pick the tokenizer, tokenize once (cached), pack and split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from model_runtime.training import distributed
from model_runtime.training.batches import PackedSequences, split
from model_runtime.training.build import build_tokenizer, eos_token_id
from model_runtime.training.config import TrainerConfig
from model_runtime.training.sources import dataset_digest, iter_pieces, list_files
from model_runtime.training.tokencache import build_token_file, cache_key, open_token_file, tokenizer_digest

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    sequences: PackedSequences
    train: np.ndarray
    validation: np.ndarray
    dataset_digest: str
    tokenizer_digest: str


def cache_dir_for(config: TrainerConfig) -> Path:
    return Path(config.data.cache_dir or Path(config.checkpoint.dir) / "data-cache")


def prepare_data(config: TrainerConfig) -> PreparedData:
    """Every rank gets the same tokenizer and token file. Rank 0 digests the data and trains a BPE tokenizer;
    the first process on each node builds the node's token file while the others wait."""
    files = list_files(config.data)
    digest = distributed.broadcast_object(dataset_digest(config.data, files) if distributed.is_main_process() else None)
    assert isinstance(digest, str)
    cache_dir = cache_dir_for(config)
    tokenizer = build_tokenizer(config, files, digest, cache_dir)
    tok_digest = tokenizer_digest(tokenizer)
    key = cache_key(digest, config.data.format, config.data.field, tok_digest)
    if distributed.is_local_leader() and open_token_file(cache_dir, key) is None:
        log.info("tokenizing %s (%d file(s)) into %s", config.data.path, len(files), cache_dir)
        build_token_file(iter_pieces(config.data, files), tokenizer, eos_token_id(config, tokenizer), cache_dir, key)
    distributed.barrier()
    tokens = open_token_file(cache_dir, key)
    assert tokens is not None, f"token file {key} missing in {cache_dir} after the local leader built it"
    sequences = PackedSequences(tokens, config.training.sequence_length)
    train, validation = split(sequences.count, config.data.validation_fraction, config.training.seed)
    return PreparedData(tokenizer, sequences, train, validation, digest, tok_digest)
