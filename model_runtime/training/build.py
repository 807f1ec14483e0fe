"""The tokenizer and the model a run starts from: new (byte or BPE tokenizer, seeded weights) or a base model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from model_runtime.files import make_dirs, write_atomic
from model_runtime.llama import LlamaForCausalLM, load_pretrained
from model_runtime.tokenizer import EOS_TOKEN, byte_tokenizer, train_bpe_tokenizer
from model_runtime.training import distributed
from model_runtime.training.config import TrainerConfig
from model_runtime.training.exitcodes import ConfigError, OutputNotWritableError
from model_runtime.training.sources import iter_pieces

log = logging.getLogger(__name__)


def build_tokenizer(config: TrainerConfig, files: list[Path], dataset_digest: str, cache_dir: Path) -> Tokenizer:
    """byte: fixed; base: the base model's tokenizer.json; bpe: trained on the data by rank 0 (cached, then broadcast)."""
    kind = config.tokenizer_type
    if kind == "byte":
        return byte_tokenizer()
    if kind == "base":
        assert config.base_model is not None
        path = Path(config.base_model.path) / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"tokenizer.type: base model {config.base_model.path} has no tokenizer.json; use byte or bpe")
        return Tokenizer.from_file(str(path))
    spec = config.tokenizer
    cached = cache_dir / f"bpe-{dataset_digest.removeprefix('sha256:')[:24]}-{spec.vocab_size}-{spec.min_frequency}.json"
    serialized = None
    if distributed.is_main_process():
        if cached.is_file():
            serialized = cached.read_text()
        else:
            log.info("training a BPE tokenizer (vocabulary %d) on the data", spec.vocab_size)
            texts = (text for text, _ in iter_pieces(config.data, files) if text)
            serialized = train_bpe_tokenizer(texts, spec.vocab_size, spec.min_frequency).to_str()
            try:
                make_dirs(cache_dir)
                write_atomic(cached, serialized)
            except OSError as error:
                raise OutputNotWritableError(f"data.cacheDir: cannot write the tokenizer {cached}: {error}") from None
    serialized = distributed.broadcast_object(serialized)
    assert isinstance(serialized, str)
    return Tokenizer.from_str(serialized)


def eos_token_id(config: TrainerConfig, tokenizer: Tokenizer) -> int:
    """The id appended after each document: our EOS token, else the base model's eos_token_id."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is None and config.base_model is not None:
        raw = json.loads((Path(config.base_model.path) / "config.json").read_text()).get("eos_token_id")
        eos = raw[0] if isinstance(raw, list) else raw
    if eos is None:
        raise ConfigError(f"tokenizer: has no {EOS_TOKEN} token and the base model names no eos_token_id")
    return int(eos)


def build_model(config: TrainerConfig, tokenizer: Tokenizer, device: torch.device) -> LlamaForCausalLM:
    """A new model with seeded weights, or the base model; float32 master weights either way."""
    vocab = tokenizer.get_vocab_size()
    if config.base_model is not None:
        model = load_pretrained(config.base_model.path, dtype=torch.float32, device=device)
        if vocab > model.config.vocab_size:
            raise ConfigError(
                f"tokenizer: its vocabulary ({vocab}) is larger than the base model's ({model.config.vocab_size}); "
                "use tokenizer.type: base"
            )
        if config.training.sequence_length > model.config.max_position_embeddings:
            raise ConfigError(
                f"training.sequenceLength ({config.training.sequence_length}) exceeds the base model's "
                f"max_position_embeddings ({model.config.max_position_embeddings})"
            )
        return model.train()
    assert config.model is not None
    if config.model.vocab_size is not None and config.model.vocab_size < vocab:
        raise ConfigError(f"model.vocabSize ({config.model.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab})")
    model = LlamaForCausalLM(config.model.to_llama_config(config.model.vocab_size or vocab))
    model.init_weights(config.training.seed)
    return model.to(device).train()
