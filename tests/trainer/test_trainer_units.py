"""Learning-rate schedule and checkpoint store units."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from model_runtime.training.checkpoint import CheckpointStore, capture_rng_state, restore_rng_state
from model_runtime.training.exitcodes import OutputNotWritableError
from model_runtime.training.schedule import lr_factor


def test_warmup_then_cosine_to_the_floor():
    factors = [lr_factor(s, warmup=4, total=104, schedule="cosine", min_ratio=0.1) for s in range(105)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[54] == pytest.approx(0.55)
    assert factors[104] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_linear_and_constant_schedules():
    assert lr_factor(50, warmup=0, total=100, schedule="linear", min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(100, warmup=0, total=100, schedule="linear", min_ratio=0.2) == pytest.approx(0.2)
    assert lr_factor(99, warmup=10, total=100, schedule="constant", min_ratio=0.1) == 1.0


def test_checkpoints_are_atomic_kept_to_the_last_k_and_round_trip(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    store.prepare()
    assert store.latest() is None
    state = {"model": {"w": torch.randn(3, 3)}, "step": 0, "rng": [{"python": (3, (1, 2), None)}]}
    for step in (1, 2, 3):
        store.save(step, {**state, "step": step}, {"fingerprint": "f"})
    assert [s for s, _ in store.complete()] == [2, 3]
    # A temporary from a run killed mid-write is neither trusted nor kept.
    (tmp_path / "ckpt" / ".step-00000004.tmp-99").mkdir()
    (tmp_path / "ckpt" / "step-00000005").mkdir()  # no state/meta: incomplete
    assert store.latest().name == "step-00000003"
    loaded, meta = store.load(store.latest())
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert meta == {"step": 3, "fingerprint": "f"}
    store.prepare()
    assert not (tmp_path / "ckpt" / ".step-00000004.tmp-99").exists()


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    path = store.save(1, {"step": 1}, {})
    torch.save({"step": 1, "evil": math.sqrt}, path / "state.pt")  # a function pickles by reference
    with pytest.raises(Exception, match="Weights only load failed"):
        store.load(path)


def test_unwritable_checkpoint_dir(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputNotWritableError, match="checkpoint.dir: cannot write to"):
        CheckpointStore(tmp_path / "file", keep=1).prepare()


def test_rng_states_survive_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    store = CheckpointStore(tmp_path, keep=1)
    path = store.save(1, {"rng": [capture_rng_state()]}, {})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(store.load(path)[0]["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
