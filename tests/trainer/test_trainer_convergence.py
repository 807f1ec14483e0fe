"""The bundled example trains a tiny model that beats a unigram model by a wide margin, in well under a minute."""

from __future__ import annotations

import math
import resource
from collections import Counter

import yaml

from model_runtime.artifact import read_manifest
from model_runtime.tokenizer import byte_tokenizer
from trainer_testlib import CORPUS, EXAMPLE_CONFIG, read_history, run_train, trainer_env, write_config


def unigram_entropy(text: str) -> float:
    """Entropy (nats per token) of the byte tokenizer's token distribution over ``text``."""
    counts = Counter(byte_tokenizer().encode(text, add_special_tokens=False).ids)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_example_config_learns_far_below_unigram_baseline(tmp_path):
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["data"]["path"] = str(CORPUS)
    config["checkpoint"]["dir"] = str(tmp_path / "checkpoints")
    config["output"]["path"] = str(tmp_path / "model")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_train(write_config(tmp_path / "config.yaml", config), trainer_env(OMP_NUM_THREADS="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    # "Under a minute on a CPU": one thread, measured in CPU time so that a busy shared machine does not matter.
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_seconds < 60, f"the example used {cpu_seconds:.0f} CPU seconds"

    baseline = unigram_entropy(CORPUS.read_text())
    assert 2.5 < baseline < 3.5  # English bytes: about 4.3 bits
    manifest = read_manifest(tmp_path / "model")
    assert manifest["finalValLoss"] < 0.5 * baseline, (manifest["finalValLoss"], baseline)
    val_losses = [r["valLoss"] for r in read_history(tmp_path / "checkpoints") if "valLoss" in r]
    assert len(val_losses) == 3 and val_losses[0] > val_losses[-1]
