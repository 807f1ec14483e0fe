"""The engine against a plain, uncached forward loop, plus preemption, prefix caching, seeds, n, stops, aborts."""

from __future__ import annotations

import asyncio

import pytest
import torch

from model_runtime.serving.async_engine import AsyncEngine
from model_runtime.serving.engine import EngineLimits, EngineRequest, InvalidRequest, LLMEngine
from model_runtime.serving.metrics import RuntimeMetrics
from model_runtime.serving.sampling import SamplingParams
from model_runtime.tokenizer import byte_tokenizer

from conftest import tiny_model

TOKENIZER = byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def reference_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """Each token from a full forward pass over the whole sequence so far: no cache, no batching."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(max_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def make_engine(model, **limits) -> LLMEngine:
    values = dict(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=256)
    return LLMEngine(model, TOKENIZER, EngineLimits(**{**values, **limits}), eos_token_ids=[])


def run(engine: LLMEngine, arrivals: dict[int, list[EngineRequest]]) -> dict[str, dict[int, list[int]]]:
    """Step the engine, adding requests at the given step numbers; returns token ids per request and choice."""
    tokens: dict[str, dict[int, list[int]]] = {}
    step = 0
    while arrivals or engine.has_work():
        for request in arrivals.pop(step, []):
            engine.add_request(request)
        for out in engine.step():
            for choice in out.choices:
                tokens.setdefault(out.request_id, {}).setdefault(choice.index, []).extend(choice.token_ids)
        step += 1
        assert step < 10_000
    return tokens


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("limits", [
    dict(),  # chunked prefill (budget 32) mixed with decodes
    dict(num_blocks=20, max_num_batched_tokens=16),  # tight cache: forces preemption and recomputation
])
def test_greedy_matches_uncached_loop_for_staggered_mixed_length_prompts(model, limits) -> None:
    prompts = random_prompts([1, 5, 17, 40, 3, 64, 9, 33, 12, 28])
    prompts.append(prompts[5][:48] + [7, 7, 7])  # shares a 48-token prefix with a finished request: cache hit
    engine = make_engine(model, **limits)
    arrivals: dict[int, list[EngineRequest]] = {}
    for i, prompt in enumerate(prompts):
        step = 0 if i < 3 else 3 * i + (40 if i == len(prompts) - 1 else 0)
        arrivals.setdefault(step, []).append(EngineRequest(str(i), prompt, SamplingParams(max_tokens=12, temperature=0)))
    got = run(engine, arrivals)
    for i, prompt in enumerate(prompts):
        assert got[str(i)][0] == reference_greedy(model, prompt, 12), f"prompt {i} (length {len(prompt)})"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    if limits:
        assert engine.scheduler.num_preemptions > 0
    else:
        assert engine.scheduler.prefix_hits >= 48  # the shared prefix (12 blocks) came from the cache


def test_seeded_sampling_is_reproducible_under_different_load(model) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    alone = run(make_engine(model), {0: [EngineRequest("a", [1, 2, 3], params)]})["a"][0]
    busy = {0: [EngineRequest(f"x{i}", p, SamplingParams(max_tokens=20)) for i, p in enumerate(random_prompts([9, 30]))],
            2: [EngineRequest("a", [1, 2, 3], params)]}
    assert run(make_engine(model), busy)["a"][0] == alone
    other = run(make_engine(model), {0: [EngineRequest("a", [1, 2, 3], SamplingParams(max_tokens=16, seed=99))]})
    assert other["a"][0] != alone


def test_n_choices_share_the_prompt_and_differ(model) -> None:
    engine = make_engine(model)
    got = run(engine, {0: [EngineRequest("r", list(range(20)), SamplingParams(max_tokens=8, n=3, seed=5))]})
    assert sorted(got["r"]) == [0, 1, 2] and all(len(t) == 8 for t in got["r"].values())
    assert len({tuple(t) for t in got["r"].values()}) > 1


def test_stop_token_ids_and_eos_and_max_tokens(model) -> None:
    prompt = [10, 20, 30]
    expected = reference_greedy(model, prompt, 8)
    stop_at = expected[3]
    engine = make_engine(model)
    outs = []
    engine.add_request(EngineRequest("s", prompt, SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[stop_at])))
    while engine.has_work():
        outs += engine.step()
    tokens = [t for o in outs for c in o.choices for t in c.token_ids]
    assert tokens == expected[:expected.index(stop_at) + 1] and outs[-1].choices[0].finish_reason == "stop"
    eos_engine = LLMEngine(model, TOKENIZER, make_engine(model).limits, eos_token_ids=[stop_at])
    got = run(eos_engine, {0: [EngineRequest("e", prompt, SamplingParams(max_tokens=8, temperature=0))]})
    assert got["e"][0][-1] == stop_at
    ignoring = run(eos_engine, {0: [EngineRequest("i", prompt, SamplingParams(max_tokens=8, temperature=0,
                                                                                ignore_eos=True))]})
    assert ignoring["i"][0] == expected


def test_stop_string_cuts_text(model) -> None:
    prompt = [65, 66, 67]
    full = TOKENIZER.decode(reference_greedy(model, prompt, 12))
    start = next(i for i in range(2, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]  # a stop string that spans tokens of the greedy output
    engine = make_engine(model)
    engine.add_request(EngineRequest("s", prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop])))
    outs = []
    while engine.has_work():
        outs += engine.step()
    text = "".join(c.text for o in outs for c in o.choices)
    assert text == full[:full.index(stop)] and outs[-1].choices[0].finish_reason == "stop"


def test_abort_and_timeout_free_blocks(model) -> None:
    engine = make_engine(model)
    engine.add_request(EngineRequest("a", list(range(30)), SamplingParams(max_tokens=100)))
    engine.add_request(EngineRequest("t", list(range(30)), SamplingParams(max_tokens=100), timeout=0.0))
    outputs = engine.step()
    assert [(o.request_id, o.choices[0].finish_reason) for o in outputs if o.finished] == [("t", "timeout")]
    out = engine.abort_request("a")
    assert out.finished and out.choices[0].finish_reason == "abort"
    assert not engine.has_work() and engine.block_manager.usage == 0.0


def test_requests_beyond_the_context_are_rejected(model) -> None:
    engine = make_engine(model, max_model_len=64)
    with pytest.raises(InvalidRequest) as exc:
        engine.add_request(EngineRequest("x", [1] * 60, SamplingParams(max_tokens=5)))
    assert exc.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as exc:
        engine.check_request([1, 300], SamplingParams())
    assert exc.value.param == "prompt"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_matches_uncached_loop_on_cuda(model) -> None:
    cuda_model = tiny_model(seed=3).cuda()
    prompts = random_prompts([7, 30, 2])
    engine = make_engine(cuda_model)
    got = run(engine, {0: [EngineRequest(str(i), p, SamplingParams(max_tokens=8, temperature=0))
                           for i, p in enumerate(prompts)]})
    for i, prompt in enumerate(prompts):
        assert got[str(i)][0] == reference_greedy(model, prompt, 8)


def sample_value(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model_name": "m", "engine": "0", **labels})
    assert value is not None, (name, labels)
    return value


def test_metrics_follow_each_request_and_step(model) -> None:
    """Per-request TPOT, prompt tokens by source, iteration tokens and the request parameters, from real steps."""
    metrics = RuntimeMetrics("m", 256)
    engine = LLMEngine(model, TOKENIZER, make_engine(model).limits, eos_token_ids=[], metrics=metrics)
    prompt = list(range(1, 17))  # four full blocks of 4
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    run(engine, {0: [EngineRequest("a", prompt, params)]})
    run(engine, {0: [EngineRequest("b", prompt + [20], SamplingParams(max_tokens=3, n=2, ignore_eos=True))]})
    computed = sample_value(metrics, "vllm:prompt_tokens_by_source_total", source="local_compute")
    cached = sample_value(metrics, "vllm:prompt_tokens_by_source_total", source="local_cache_hit")
    assert cached == 16 and computed == 16 + 1  # b found all of a's blocks in the prefix cache
    assert sample_value(metrics, "vllm:prompt_tokens_cached_total") == 16
    assert sample_value(metrics, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer") == 0
    assert sample_value(metrics, "vllm:prompt_tokens_total") == 33
    assert sample_value(metrics, "vllm:request_time_per_output_token_seconds_count") == 2
    assert sample_value(metrics, "vllm:request_time_per_output_token_seconds_sum") > 0
    assert sample_value(metrics, "vllm:request_max_num_generation_tokens_sum") == 5 + 3
    assert sample_value(metrics, "vllm:request_generation_tokens_sum") == 5 + 2 * 3
    assert sample_value(metrics, "vllm:request_params_n_sum") == 1 + 2
    assert sample_value(metrics, "vllm:request_params_max_tokens_sum") == 5 + 3
    # Every token that went through the model, step by step: a's prompt and 4 decodes; b's two choices each
    # computing the one uncached prompt token, then 2 decodes each.
    assert sample_value(metrics, "vllm:iteration_tokens_total_sum") == (16 + 4) + (2 + 2 * 2)
    assert sample_value(metrics, "vllm:request_success_total", finished_reason="length") == 2
    assert sample_value(metrics, "vllm:num_requests_waiting_by_reason", reason="capacity") == 0


def test_a_request_that_fails_inside_the_engine_counts_as_error(model) -> None:
    """The API validates first; whatever the engine loop still rejects ends the stream with the error and is
    counted under vLLM's finished_reason="error"."""
    metrics = RuntimeMetrics("m", 256)
    engine = AsyncEngine(LLMEngine(model, TOKENIZER, make_engine(model).limits, eos_token_ids=[], metrics=metrics))

    async def main() -> None:
        engine.start()
        try:
            with pytest.raises(InvalidRequest, match="empty"):
                async for _ in engine.generate(EngineRequest("bad", [], SamplingParams(max_tokens=2))):
                    pass
            async for out in engine.generate(EngineRequest("good", [1, 2], SamplingParams(max_tokens=2))):
                pass
            assert out.finished
        finally:
            engine.shutdown()

    asyncio.run(main())
    assert sample_value(metrics, "vllm:request_success_total", finished_reason="error") == 1
    assert sample_value(metrics, "vllm:request_success_total", finished_reason="length") == 1
