"""The saved model directory loads in Hugging Face transformers and gives our logits."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer

from model_runtime.artifact import read_manifest, sha256_file
from model_runtime.llama import load_pretrained
from trainer_testlib import run_train, tiny_config, write_config


def test_saved_model_loads_in_transformers_with_matching_logits_and_tokenizer(tmp_path):
    config = tiny_config(tmp_path, tokenizer={"type": "bpe", "vocabSize": 400},
                         training={"steps": 4, "evalEvery": 0}, checkpoint={"every": 0})
    result = run_train(write_config(tmp_path / "config.yaml", config))
    assert result.returncode == 0, result.stderr
    model_dir = tmp_path / "model"

    theirs = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = load_pretrained(model_dir, dtype=torch.float32)
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids)
        actual = theirs(input_ids=ids).logits
    assert actual.shape == expected.shape == (2, 24, 400)
    assert (actual - expected).abs().max().item() <= 1e-4

    # The trained BPE tokenizer is what transformers reads, with our special tokens and chat template.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "Once there was a clever fox named Ada who lived near the river."
    ours_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ours_tok.encode(text, add_special_tokens=False).ids
    assert len(ours_tok.encode(text).ids) < len(text.encode()) / 2, "BPE learned no merges from the data"
    assert hf_tokenizer.decode(hf_tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert hf_tokenizer.eos_token == "<|end_of_text|>" and hf_tokenizer.chat_template

    manifest = read_manifest(model_dir)
    assert manifest["digest"] == sha256_file(model_dir / "model.safetensors")
    assert manifest["hyperparameters"]["tokenizer"]["type"] == "bpe"
