"""Data pipeline units: reading, digests, the token cache, packing, the split and the batch plan."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime.tokenizer import EOS_TOKEN, byte_tokenizer, train_bpe_tokenizer
from model_runtime.training import sources
from model_runtime.training.batches import BatchPlan, PackedSequences, shard, split
from model_runtime.training.config import DataSpec
from model_runtime.training.exitcodes import DataError
from model_runtime.training.tokencache import build_token_file, cache_key, open_token_file, tokenizer_digest
from trainer_testlib import CORPUS


def test_text_is_streamed_in_chunks_that_end_at_line_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_CHARS", 50)
    text = "".join(f"line {i} of some text\n" for i in range(40))
    (tmp_path / "a.txt").write_text(text)
    spec = DataSpec(path=str(tmp_path))
    pieces = list(sources.iter_pieces(spec, sources.list_files(spec)))
    assert len(pieces) > 10
    assert all(piece.endswith("\n") for piece, _ in pieces[:-1])
    assert "".join(piece for piece, _ in pieces) == text
    assert [end for _, end in pieces] == [False] * (len(pieces) - 1) + [True]


def test_directory_listing_is_sorted_and_skips_hidden_files(tmp_path):
    for name in ("b.txt", "a.txt", ".hidden.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert [p.relative_to(tmp_path).as_posix() for p in sources.list_files(DataSpec(path=str(tmp_path)))] == \
        ["a.txt", "b.txt", "sub/c.txt"]


def test_dataset_digest_changes_with_content_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    spec = DataSpec(path=str(tmp_path))
    first = sources.dataset_digest(spec, sources.list_files(spec))
    assert first == sources.dataset_digest(spec, sources.list_files(spec))
    (tmp_path / "a.txt").write_text("hellp")
    assert sources.dataset_digest(spec, sources.list_files(spec)) != first
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, sources.dataset_digest(spec, sources.list_files(spec))}) == 2


def test_invalid_utf8_is_a_data_error(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    spec = DataSpec(path=str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="bad.txt is not UTF-8 text"):
        list(sources.iter_pieces(spec, sources.list_files(spec)))


def test_token_file_holds_each_document_then_eos_and_is_reused(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "ab"}\n\n{"text": "c"}\n')
    spec = DataSpec(path=str(data), format="jsonl")
    tok = byte_tokenizer()
    eos = tok.token_to_id(EOS_TOKEN)
    key = cache_key("sha256:x", "jsonl", "text", tokenizer_digest(tok))
    assert open_token_file(tmp_path / "cache", key) is None
    tokens = build_token_file(sources.iter_pieces(spec, [data]), tok, eos, tmp_path / "cache", key)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # read from disk, not loaded whole
    assert tokens.tolist() == [ord("a"), ord("b"), eos, ord("c"), eos]
    assert open_token_file(tmp_path / "cache", key).tolist() == tokens.tolist()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"tokens-{key}.bin", f"tokens-{key}.json"]
    (tmp_path / "cache" / f"tokens-{key}.bin").write_bytes(b"\0\0")  # truncated: not trusted
    assert open_token_file(tmp_path / "cache", key) is None
    assert cache_key("sha256:x", "jsonl", "text", "sha256:other") != key


def test_bpe_tokenizer_trains_on_text_and_round_trips():
    text = CORPUS.read_text()[:40_000]
    tok = train_bpe_tokenizer([text], vocab_size=300)
    assert tok.get_vocab_size() == 300
    assert [tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")] == [0, 1, 2]
    sample = "Once there was a clever owl — naïve, 🦉."
    assert tok.decode(tok.encode(sample).ids) == sample
    assert len(tok.encode("Once there was a clever owl").ids) < 20


def test_packed_sequences_overlap_by_one_token_for_next_token_targets():
    tokens = np.arange(23, dtype=np.uint16)
    packed = PackedSequences(tokens, length=5)
    assert packed.count == 4
    batch = packed.batch(np.array([0, 3]))
    assert batch.tolist() == [[0, 1, 2, 3, 4, 5], [15, 16, 17, 18, 19, 20]]
    with pytest.raises(DataError, match="needs at least 6"):
        PackedSequences(np.arange(5, dtype=np.uint16), length=5)


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split(100, 0.05, seed=3)
    assert len(val) == 5 and len(train) == 95
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    again = split(100, 0.05, seed=3)
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert split(100, 0.05, seed=4)[1].tolist() != val.tolist()
    assert len(split(10, 0.0, seed=0)[1]) == 0
    with pytest.raises(DataError, match="too few to hold out"):
        split(1, 0.05, seed=0)


def test_batch_plan_ranks_partition_the_global_batch_and_epochs_cover_the_data():
    train = np.arange(100, 124)  # 24 training sequences
    plan = BatchPlan(train, global_batch=8, micro_batch=2, seed=7)
    first_epoch = np.concatenate([plan.samples(step) for step in range(3)])
    assert sorted(first_epoch.tolist()) == train.tolist()  # every sequence once per epoch
    assert sorted(np.concatenate([plan.samples(s) for s in range(3, 6)]).tolist()) == train.tolist()
    assert first_epoch.tolist() != np.concatenate([plan.samples(s) for s in range(3, 6)]).tolist()  # reshuffled
    for world in (1, 2, 4):
        per_rank = [plan.micro_batches(5, rank, world) for rank in range(world)]
        assert all(len(mb) == 2 for rank in per_rank for mb in rank)
        assert np.concatenate([mb for rank in per_rank for mb in rank]).tolist() == plan.samples(5).tolist()
    fresh = BatchPlan(train, global_batch=8, micro_batch=2, seed=7)
    assert fresh.samples(5).tolist() == plan.samples(5).tolist()  # a function of (seed, step) only


def test_batch_plan_crosses_epoch_boundaries_mid_batch():
    plan = BatchPlan(np.arange(10), global_batch=4, micro_batch=4, seed=0)
    stream = np.concatenate([plan.samples(s) for s in range(5)])  # 20 samples = 2 epochs
    assert sorted(stream[:10].tolist()) == sorted(stream[10:].tolist()) == list(range(10))


def test_shard_splits_validation_nearly_evenly():
    parts = [shard(np.arange(7), rank, 3).tolist() for rank in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
