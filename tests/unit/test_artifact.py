"""The model directory writer: the Hugging Face layout, its digest, and base-model tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from model_runtime.artifact import read_manifest, save_model_dir, sha256_file
from model_runtime.llama import LlamaConfig, LlamaForCausalLM, load_pretrained
from model_runtime.tokenizer import byte_tokenizer


def tiny_model(vocab: int = 260) -> LlamaForCausalLM:
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2))
    model.init_weights(seed=0)
    return model


def test_layout_digest_and_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    digest = save_model_dir(model, byte_tokenizer(), tmp_path / "m", manifest={"source": "test"})
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "modelfleet.json"}
    assert digest == sha256_file(tmp_path / "m" / "model.safetensors") == read_manifest(tmp_path / "m")["digest"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["eos_token_id"] == byte_tokenizer().token_to_id("<|end_of_text|>")
    loaded = load_pretrained(tmp_path / "m")
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].equal(tensor), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_base_model_tokenizer_keeps_the_base_models_metadata(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    vocab = {"<s>": 0, "</s>": 1, **{chr(c): i + 2 for i, c in enumerate(range(97, 123))}}
    foreign = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    foreign.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    base_config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ messages[0]['content'] }}"}
    (base / "tokenizer_config.json").write_text(json.dumps(base_config))
    model = tiny_model(vocab=len(vocab))
    with pytest.raises(ValueError, match="base model directory"):
        save_model_dir(model, foreign, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    save_model_dir(model, foreign, tmp_path / "out", base_model_dir=base)
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == base_config
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)  # the model's own ids, not nulls
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
