"""Fast unit tests of the engine's pure parts: blocks, scheduling, sampling, text, configuration."""

from __future__ import annotations

import pytest
import torch

import hashlib
from array import array

from model_runtime.serving.block_manager import ROOT_KEY, BlockManager, block_key
from model_runtime.serving.cli import parse_config
from model_runtime.serving.config import ServeConfig, parse_bytes, plan_kv_cache
from model_runtime.serving.sampling import SampleRow, SamplingParams, banned_ngram_tokens, sample
from model_runtime.serving.scheduler import Scheduler
from model_runtime.serving.sequence import Sequence
from model_runtime.serving.text import TextAssembler
from model_runtime.tokenizer import byte_tokenizer

from conftest import tiny_config

TOKENIZER = byte_tokenizer()


def seq(seq_id: int, tokens: list[int], **params) -> Sequence:
    p = SamplingParams(**params)
    return Sequence(seq_id, f"r{seq_id}", 0, list(tokens), len(tokens), p, TextAssembler(TOKENIZER, tokens, p.stop))


def compute(bm: BlockManager, s: Sequence, n: int) -> None:
    assert bm.ensure_capacity(s, s.num_computed_tokens + n)
    s.num_computed_tokens += n
    bm.commit(s)


class TestBlockManager:
    def test_shared_prefix_is_reused_with_ref_counts(self) -> None:
        bm = BlockManager(num_blocks=8, block_size=4)
        a = seq(1, list(range(10)))
        compute(bm, a, 10)
        assert len(a.block_table) == 3 and bm.num_free_blocks == 5
        b = seq(2, list(range(8)) + [99, 98, 97])
        assert bm.match_prefix(b) == 8
        assert b.block_table[:2] == a.block_table[:2]
        assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
        bm.free(a)
        assert [bm.ref_counts[x] for x in b.block_table] == [1, 1]
        bm.free(b)
        assert bm.num_free_blocks == 8 and bm.usage == 0.0

    def test_block_keys_are_sha256_chained_over_the_whole_prefix(self) -> None:
        bm = BlockManager(num_blocks=8, block_size=4)
        compute(bm, a := seq(1, list(range(12))), 12)
        first = hashlib.sha256(array("q", [0, 1, 2, 3]).tobytes()).digest()
        second = hashlib.sha256(first + array("q", [4, 5, 6, 7]).tobytes()).digest()
        assert a.block_hashes[:2] == [first, second] and len(second) == 32
        assert bm.hash_to_block[second] == a.block_table[1]
        # The same four tokens after a different prefix are a different block: keys cover the whole prefix.
        other = block_key(block_key(ROOT_KEY, (9, 9, 9, 9)), (4, 5, 6, 7))
        assert other != second and other not in bm.hash_to_block
        b = seq(2, [9, 9, 9, 9, 4, 5, 6, 7, 1])
        assert bm.match_prefix(b) == 0

    def test_last_token_is_never_taken_from_cache(self) -> None:
        bm = BlockManager(num_blocks=8, block_size=4)
        compute(bm, a := seq(1, list(range(8))), 8)
        bm.free(a)
        again = seq(2, list(range(8)))
        assert bm.match_prefix(again) == 4  # the second block holds the last token: recomputed for its logits

    def test_freed_blocks_stay_cached_until_reused(self) -> None:
        bm = BlockManager(num_blocks=2, block_size=4)
        compute(bm, a := seq(1, list(range(8))), 8)
        bm.free(a)
        assert bm.match_prefix(seq(2, list(range(8)) + [5])) == 8
        bm2 = BlockManager(num_blocks=2, block_size=4)
        compute(bm2, a := seq(1, list(range(8))), 8)
        bm2.free(a)
        compute(bm2, seq(3, [7] * 8), 8)  # evicts both cached blocks
        assert bm2.match_prefix(seq(2, list(range(8)) + [5])) == 0

    def test_allocation_is_all_or_nothing(self) -> None:
        bm = BlockManager(num_blocks=2, block_size=4)
        s = seq(1, list(range(12)))
        assert not bm.ensure_capacity(s, 12)
        assert s.block_table == [] and bm.num_free_blocks == 2


class TestScheduler:
    def test_chunked_prefill_mixes_with_decodes_within_budget(self) -> None:
        sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
        short, long = seq(1, [1, 2]), seq(2, list(range(30)))
        sched.add(short)
        sched.add(long)
        first = sched.schedule()
        assert [(s.seq_id, n) for s, n in first.items] == [(1, 2), (2, 8)]
        for s, n in first.items:
            s.num_computed_tokens += n
        short.token_ids.append(5)  # sampled
        second = sched.schedule()
        assert [(s.seq_id, n) for s, n in second.items] == [(1, 1), (2, 9)]

    def test_preempts_the_newest_when_blocks_run_out(self) -> None:
        bm = BlockManager(4, 2)
        sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
        old, new = seq(1, [1, 2, 3]), seq(2, [4, 5, 6])
        sched.add(old)
        sched.add(new)
        for s, n in sched.schedule().items:
            s.num_computed_tokens += n
            s.token_ids += [7, 8]  # two more tokens: each now needs a third block
        batch = sched.schedule()
        assert batch.num_preempted == 1 and sched.num_preemptions == 1
        assert [s.seq_id for s, _ in batch.items] == [1]
        assert list(sched.waiting) == [new] and new.block_table == [] and new.num_computed_tokens == 0

    def test_finish_frees_blocks(self) -> None:
        bm = BlockManager(8, 4)
        sched = Scheduler(bm, 4, 64)
        sched.add(s := seq(1, list(range(9))))
        sched.schedule()
        sched.finish(s, "abort")
        assert bm.num_free_blocks == 8 and not sched.has_work() and s.finish_reason == "abort"


class TestSampling:
    def rows(self, n: int = 1, tokens=(1, 2), **params) -> list[SampleRow]:
        return [SampleRow(SamplingParams(**params), list(tokens), 1, None) for _ in range(n)]

    def test_greedy_and_top_k_one(self) -> None:
        logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
        assert sample(logits, self.rows(2, temperature=0))[0] == [1, 0]
        assert sample(logits, self.rows(2, top_k=1))[0] == [1, 0]

    def test_top_k_and_top_p_restrict_the_support(self) -> None:
        logits = torch.tensor([[5.0, 4.9, 0.0, -1.0]] * 200)
        picks = set(sample(logits, self.rows(200, top_k=2))[0])
        assert picks == {0, 1}
        picks = set(sample(torch.tensor([[5.0, 0.0, 0.0, 0.0]] * 200), self.rows(200, top_p=0.5))[0])
        assert picks == {0}

    def test_seed_is_reproducible_and_independent_of_the_batch(self) -> None:
        logits = torch.zeros(1, 50)
        def draw(extra: int) -> list[int]:
            gen = torch.Generator().manual_seed(7)
            rows = [SampleRow(SamplingParams(seed=7), [1], 1, gen)] + self.rows(extra)
            return [sample(torch.zeros(1 + extra, 50), rows)[0][0] for _ in range(10)]
        assert draw(0) == draw(5)
        assert len(set(draw(0))) > 1

    def test_penalties(self) -> None:
        logits = torch.tensor([[2.0, 1.9, -1.0]])
        # token 0 appeared in the output: presence/frequency penalties push it below token 1
        row = [SampleRow(SamplingParams(temperature=0, presence_penalty=0.5), [2, 0], 1, None)]
        assert sample(logits, row)[0] == [1]
        row = [SampleRow(SamplingParams(temperature=0, repetition_penalty=1.2), [0], 1, None)]
        assert sample(logits, row)[0] == [1]  # 2.0 / 1.2 < 1.9
        row = [SampleRow(SamplingParams(temperature=0, no_repeat_ngram_size=2), [0, 1, 0], 1, None)]
        assert sample(logits.clone().index_fill_(1, torch.tensor([0]), 0.0), row)[0] != [1]

    def test_banned_ngrams(self) -> None:
        assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
        assert banned_ngram_tokens([1, 2, 1, 4, 1], 2) == {2, 4}
        assert banned_ngram_tokens([1, 2], 3) == set()

    def test_logprobs(self) -> None:
        logits = torch.tensor([[0.0, 1.0, 2.0]])
        tokens, lps = sample(logits, self.rows(1, temperature=0, logprobs=2))
        expected = torch.log_softmax(logits, -1)[0]
        assert tokens == [2] and lps[0].logprob == pytest.approx(float(expected[2]))
        assert [t for t, _ in lps[0].top] == [2, 1]

    def test_invalid_params_name_the_field(self) -> None:
        with pytest.raises(ValueError, match="top_p"):
            SamplingParams(top_p=0)


class TestText:
    def feed(self, text: str, stop: list[str]) -> tuple[TextAssembler, list[str], bool]:
        asm = TextAssembler(TOKENIZER, [], stop)
        pieces, stopped = [], False
        for token in TOKENIZER.encode(text).ids:
            stopped = asm.append(token)
            pieces.append(asm.take(final=stopped))
            if stopped:
                break
        return asm, pieces, stopped

    def test_stop_string_split_across_tokens_is_cut_and_never_streamed(self) -> None:
        asm, pieces, stopped = self.feed("hello END world", ["END"])
        assert stopped and asm.text == "hello " and "".join(pieces) == "hello "
        assert not any("E" in p for p in pieces)

    def test_multibyte_characters_are_emitted_whole(self) -> None:
        asm, pieces, _ = self.feed("héllo ✓", [])
        asm.flush()
        pieces.append(asm.take(final=True))
        assert "".join(pieces) == "héllo ✓" and all("\ufffd" not in p for p in pieces)


class TestConfig:
    def test_parse_bytes(self) -> None:
        assert parse_bytes("512Mi") == 512 << 20 and parse_bytes("2G") == 2 * 10**9 and parse_bytes("100") == 100
        with pytest.raises(ValueError):
            parse_bytes("lots")

    def test_flags_override_env(self, tmp_path) -> None:
        keys = tmp_path / "keys"
        keys.write_text("# comment\nfile-key\n")
        env = {"MODELFLEET_MODEL": "/m", "MODELFLEET_PORT": "9000", "MODELFLEET_MAX_NUM_SEQS": "7",
               "MODELFLEET_API_KEY": "a,b", "MODELFLEET_API_KEY_FILE": str(keys), "MODELFLEET_KV_CACHE_MEMORY": "1Gi"}
        cfg = parse_config(["--port", "8080"], env)
        assert (cfg.port, cfg.max_num_seqs, str(cfg.model)) == (8080, 7, "/m")
        assert cfg.api_keys == ["a", "b", "file-key"] and cfg.kv_cache_memory == 1 << 30
        assert "file-key" not in repr(cfg)

    def test_bad_env_value_is_a_usage_error(self) -> None:
        with pytest.raises(SystemExit) as exc:
            parse_config([], {"MODELFLEET_MODEL": "/m", "MODELFLEET_PORT": "eighty"})
        assert exc.value.code == 2

    def test_kv_plan(self) -> None:
        config = tiny_config()  # K and V x 2 layers x 2 kv heads x 16 dims x 4 bytes: 512 bytes per token
        cfg = ServeConfig(model="/m", max_num_seqs=2, kv_cache_memory=64 * 1024, block_size=16)
        blocks, max_len = plan_kv_cache(cfg, config, torch.float32)
        assert blocks == 8 and max_len == 128  # budget-bound: 64 KiB / (16 tokens x 512 bytes)
        roomy = ServeConfig(model="/m", max_num_seqs=2, kv_cache_memory=1 << 30, block_size=16)
        assert plan_kv_cache(roomy, config, torch.float32) == (64, 512)  # 2 full-length sequences
        with pytest.raises(ValueError, match="max_model_len"):
            plan_kv_cache(ServeConfig(model="/m", num_kv_blocks=4, max_model_len=100), config, torch.float32)
