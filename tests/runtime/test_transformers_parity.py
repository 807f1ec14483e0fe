"""Our model loads Hugging Face Llama and Qwen2 directories and computes the same logits as transformers."""

from __future__ import annotations

import pytest
import torch

from model_runtime.llama import load_pretrained
from model_runtime.serving.engine import EngineLimits, EngineRequest, LLMEngine
from model_runtime.serving.sampling import SamplingParams
from model_runtime.tokenizer import byte_tokenizer

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**COMMON, rope_theta=500000.0)
        return transformers.LlamaForCausalLM(config)
    config = transformers.Qwen2Config(**COMMON, tie_word_embeddings=True)
    return transformers.Qwen2ForCausalLM(config)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_match_transformers(kind: str, tmp_path) -> None:
    reference = hf_model(kind).float().eval()
    with torch.no_grad():  # random biases, so Qwen2's q/k/v biases are exercised too
        for name, param in reference.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.1)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, COMMON["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference(ids).logits
        got = ours(ids)
        assert (got - expected).abs().max().item() <= 1e-4
        # And through the paged engine (prefill then decode) for the greedy continuation.
        engine = LLMEngine(ours, byte_tokenizer(), EngineLimits(num_blocks=32, block_size=8, max_model_len=128), [])
        engine.add_request(EngineRequest("r", ids[0].tolist(), SamplingParams(max_tokens=6, temperature=0)))
        tokens = []
        while engine.has_work():
            tokens += [t for out in engine.step() for c in out.choices for t in c.token_ids]
        hf_tokens = reference.generate(ids[:1], max_new_tokens=6, do_sample=False, eos_token_id=None,
                                       pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert tokens == hf_tokens
