"""Configuration parsing and validation (pure, fast)."""

from __future__ import annotations

import pytest
import yaml

from model_runtime.training.config import load_config, parse_config
from model_runtime.training.exitcodes import ConfigError
from trainer_testlib import EXAMPLE_CONFIG, tiny_config


def test_example_config_is_valid_and_presets_expand(tmp_path):
    config = load_config(EXAMPLE_CONFIG)
    llama = config.model.to_llama_config(vocab_size=259)
    assert (llama.num_hidden_layers, llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads) == (2, 64, 4, 2)
    assert llama.intermediate_size == 192 and llama.max_position_embeddings == 256
    assert config.tokenizer_type == "byte" and config.training.steps == 300


def test_preset_fields_can_be_overridden_and_json_works(tmp_path):
    path = tmp_path / "c.json"
    raw = tiny_config(tmp_path, model={"preset": "base", "layers": None, "hiddenSize": None, "heads": None,
                                       "kvHeads": None, "contextLength": None})
    raw["model"]["layers"] = 6
    path.write_text(yaml.safe_dump(raw, default_flow_style=True))  # flow style is JSON-like
    llama = load_config(path).model.to_llama_config(32000)
    assert (llama.num_hidden_layers, llama.hidden_size, llama.intermediate_size) == (6, 768, 2048)


def test_unknown_top_level_keys_are_ignored_for_the_operator(tmp_path):
    parse_config({**tiny_config(tmp_path), "nodes": 2, "resources": {"gpu": 1}})


@pytest.mark.parametrize("override, message", [
    ({"model": {"heads": 3}}, "model: Value error, hiddenSize (32) must be divisible by heads (3)"),
    ({"model": {"kvHeads": 3}}, "heads (4) must be divisible by kvHeads (3)"),
    ({"model": {"layers": None}}, "model: set preset (tiny, small, base) or all of: layers"),
    ({"model": {"preset": "huge"}}, "model.preset: Input should be 'tiny', 'small' or 'base'"),
    ({"baseModel": {"path": "/x"}, "model": None, "tokenizer": {"type": "base"}}, "baseModel.path: /x is not a model directory"),
    ({"model": None}, "set exactly one of model (a new model) or baseModel"),
    ({"tokenizer": {"type": "base"}}, "tokenizer.type: 'base' needs baseModel"),
    ({"tokenizer": {"type": "bpe", "vocabSize": 100}}, "tokenizer.vocabSize: Input should be greater than or equal to 259"),
    ({"training": {"epochs": 1}}, "training: Value error, set exactly one of steps or epochs"),
    ({"training": {"steps": None}}, "set exactly one of steps or epochs"),
    ({"training": {"learningRate": 0}}, "training.learningRate: Input should be greater than 0"),
    ({"training": {"sequenceLength": 65}}, "training.sequenceLength (65) exceeds model.contextLength (64)"),
    ({"training": {"precision": "fp8"}}, "training.precision: Input should be 'fp32' or 'bf16'"),
    ({"data": {"validationFraction": 0.5}}, "data.validationFraction: Input should be less than 0.5"),
    ({"data": {"format": "csv"}}, "data.format: Input should be 'text' or 'jsonl'"),
    ({"checkpoint": {"keep": 0}}, "checkpoint.keep: Input should be greater than 0"),
    ({"output": None}, "output: Field required"),
])
def test_invalid_configuration_names_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(tiny_config(tmp_path, **override))
    assert message.replace("Value error, ", "") in str(caught.value)
    assert caught.value.exit_code == 78


def test_global_batch_must_split_over_world_size_and_micro_batches(tmp_path):
    config = parse_config(tiny_config(tmp_path, training={"globalBatchSize": 8, "microBatchSize": 3}))
    with pytest.raises(ConfigError) as caught:
        config.check_world_size(2)
    assert str(caught.value) == "training.globalBatchSize: must be divisible by world size x microBatchSize (=6); got 8"
    parse_config(tiny_config(tmp_path, training={"globalBatchSize": 12, "microBatchSize": 3})).check_world_size(2)
    auto = parse_config(tiny_config(tmp_path, training={"globalBatchSize": 8, "microBatchSize": None}))
    assert auto.micro_batch_size(4) == 2
    auto.check_world_size(4)
    with pytest.raises(ConfigError, match=r"\(=16\); got 8"):
        auto.check_world_size(16)


def test_unreadable_or_non_mapping_config(tmp_path):
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="configuration: must be a mapping"):
        load_config(tmp_path / "list.yaml")
