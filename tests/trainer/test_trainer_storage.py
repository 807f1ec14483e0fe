"""Storage that never corrupts: shared caches, a full disk, torn and half-deleted files, file modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from model_runtime.artifact import read_manifest, sha256_file
from model_runtime.tokenizer import EOS_TOKEN, byte_tokenizer
from model_runtime.training import exitcodes
from model_runtime.training.checkpoint import CheckpointStore
from model_runtime.training.cli import main
from model_runtime.training.tokencache import build_token_file
from trainer_testlib import CORPUS, read_history, tiny_config, write_config

PAGE = 4096
SHORT = {"steps": 4, "evalEvery": 0}


def run_main(tmp_path: Path, config: dict) -> int:
    return main(["--config", str(write_config(tmp_path / "config.yaml", config))])


def pieces(text: str, size: int = 2048):
    chunks = [text[i:i + size] for i in range(0, len(text), size)]
    return [(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]


# One builder of a pod sharing the cache volume. Identical pods often have the same PID, so both claim
# PID 1; each stops after its first batches until the other has started too, so the two writes overlap.
BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    os.getpid = lambda: 1
    from model_runtime.tokenizer import EOS_TOKEN, byte_tokenizer
    from model_runtime.training import tokencache
    from model_runtime.training.exitcodes import TrainerError
    cache, sync, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    tokencache.BATCH_CHARS = 4096
    text = Path(sys.argv[4]).read_text()
    chunks = [text[i:i + 2048] for i in range(0, len(text), 2048)]

    def slow_pieces():
        for i, chunk in enumerate(chunks):
            if i == 8:
                (sync / me).touch()
                deadline = time.monotonic() + 60
                while len(list(sync.iterdir())) < 2:
                    assert time.monotonic() < deadline, "the other builder never started"
                    time.sleep(0.01)
            yield chunk, i == len(chunks) - 1

    tok = byte_tokenizer()
    try:
        tokens = tokencache.build_token_file(slow_pieces(), tok, tok.token_to_id(EOS_TOKEN), cache, "shared")
    except TrainerError as error:
        sys.exit(f"{error} (exit {error.exit_code})")
    print(len(tokens))
""")


def test_two_builders_with_the_same_pid_on_one_shared_cache_both_succeed_with_an_intact_file(tmp_path):
    cache, sync = tmp_path / "shared-cache", tmp_path / "sync"
    sync.mkdir()
    builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(cache), str(sync), name, str(CORPUS)],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("node-a", "node-b")]
    results = [(b.wait(timeout=120), *b.communicate()) for b in builders]
    for code, out, err in results:
        assert code == 0, err
    tok = byte_tokenizer()
    expected = build_token_file(pieces(CORPUS.read_text()), tok, tok.token_to_id(EOS_TOKEN), tmp_path / "alone", "shared")
    assert {int(out) for _, out, _ in results} == {len(expected)}
    assert (cache / "tokens-shared.bin").read_bytes() == (tmp_path / "alone" / "tokens-shared.bin").read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["tokens-shared.bin", "tokens-shared.json"]  # no temporaries


def test_a_later_builder_keeps_the_complete_file_others_may_be_reading_and_replaces_a_damaged_one(tmp_path):
    tok = byte_tokenizer()
    text = CORPUS.read_text()[:20_000]

    def build():
        return build_token_file(pieces(text), tok, tok.token_to_id(EOS_TOKEN), tmp_path, "k")

    expected = build().tolist()
    data = tmp_path / "tokens-k.bin"
    inode = data.stat().st_ino
    assert build().tolist() == expected
    assert data.stat().st_ino == inode  # kept: on NFS, replacing it would break another node's memory map
    data.write_bytes(data.read_bytes()[:-2])  # damaged: shorter than its metadata says
    assert build().tolist() == expected
    assert data.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens-k.bin", "tokens-k.json"]

    # A builder killed long ago left a temporary; one on another node is writing its own right now.
    dead, live = tmp_path / ".tokens-k.bin.tmp-node-a-1-dead", tmp_path / ".tokens-k.bin.tmp-node-b-1-live"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(dead, (hour_ago, hour_ago))
    (tmp_path / "tokens-k.json").unlink()  # so that this process builds again
    assert build().tolist() == expected
    assert not dead.exists() and live.exists()


@pytest.fixture
def small_disk(tmp_path):
    """Mount tmpfs file systems of a given size under tmp_path (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:  # lazily: a file a failed run left open must not keep the mount busy
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_full_disk_during_a_checkpoint_exits_73_and_keeps_the_last_good_one(tmp_path, small_disk, clean_env, caplog):
    # Measure a checkpoint of this run on an ordinary disk, then give the checkpoint volume room for one and a half.
    measure = tiny_config(tmp_path / "measure", training={"steps": 2, "evalEvery": 0}, checkpoint={"every": 2})
    assert run_main(tmp_path / "measure", measure) == exitcodes.SUCCESS
    state_pages = -(-(tmp_path / "measure" / "checkpoints" / "step-00000002" / "state.pt").stat().st_size // PAGE)
    disk = small_disk("ckpt", (state_pages + 2 + state_pages // 2) * PAGE)  # + meta.json + history.jsonl

    config = tiny_config(tmp_path, training=SHORT, checkpoint={"dir": str(disk), "every": 2, "keep": 2},
                         data={"cacheDir": str(tmp_path / "cache")})
    assert run_main(tmp_path, config) == exitcodes.OUTPUT_NOT_WRITABLE
    assert f"checkpoint.dir: cannot write checkpoint {disk}/step-00000004: [Errno 28] No space left on device" \
        in caplog.text
    assert "Traceback" not in caplog.text
    assert sorted(p.name for p in disk.iterdir()) == ["history.jsonl", "step-00000002"]  # no temporary left
    store = CheckpointStore(disk, keep=2)
    state, meta = store.load(store.latest())
    assert meta["step"] == state["step"] == 2
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("where", ["output", "cache"])
def test_a_full_disk_for_the_model_or_the_token_cache_exits_73_naming_the_path(where, tmp_path, small_disk, clean_env,
                                                                               caplog):
    disk = small_disk(where, 8 * PAGE)  # the model's weights (~170 KB) and the tokens (~500 KB) do not fit
    config = tiny_config(tmp_path, training=SHORT, checkpoint={"every": 2},
                         output={"path": str(disk / "model") if where == "output" else str(tmp_path / "model")},
                         data={"cacheDir": str(disk) if where == "cache" else str(tmp_path / "cache")})
    assert run_main(tmp_path, config) == exitcodes.OUTPUT_NOT_WRITABLE
    expected = (f"output.path: cannot write the model to {disk}/model: " if where == "output" else
                f"data.cacheDir: cannot write the token cache {disk}/tokens-")
    assert expected in caplog.text and "[Errno 28] No space left on device" in caplog.text
    assert "Traceback" not in caplog.text
    assert list(disk.iterdir()) == []  # no temporary, no partial model
    if where == "output":  # the final checkpoint is kept: with room again, a restart only saves the model
        subprocess.run(["mount", "-o", f"remount,size={4 << 20}", str(disk)], check=True)
        caplog.clear()
        assert run_main(tmp_path, config) == exitcodes.SUCCESS
        assert "resuming from" in caplog.text
        assert read_manifest(disk / "model")["digest"] == sha256_file(disk / "model" / "model.safetensors")


def test_a_torn_last_history_line_is_repaired_on_start(tmp_path, clean_env, caplog):
    config = tiny_config(tmp_path, training=SHORT, checkpoint={"every": 2})
    assert run_main(tmp_path, config) == exitcodes.SUCCESS
    history = tmp_path / "checkpoints" / "history.jsonl"
    with open(history, "a") as f:
        f.write('{"step": 5, "loss": 2.5, "learn')  # killed mid-write
    longer = tiny_config(tmp_path, training={**SHORT, "steps": 6}, checkpoint={"every": 2})
    assert run_main(tmp_path, longer) == exitcodes.SUCCESS
    assert "dropping a damaged line" in caplog.text
    assert [r["step"] for r in read_history(tmp_path / "checkpoints")] == [1, 2, 3, 4, 5, 6]


def test_a_start_finishes_pruning_that_a_kill_interrupted(tmp_path, clean_env):
    config = tiny_config(tmp_path, training=SHORT, checkpoint={"every": 1, "keep": 2})
    assert run_main(tmp_path, config) == exitcodes.SUCCESS
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000003", "step-00000004"]
    # What kills mid-delete leave: a step directory that lost its state (an older trainer deleting in place)
    # and a checkpoint renamed aside for deletion but not yet deleted.
    for name in ("step-00000001", ".step-00000002.prune-host-1-abcd"):
        (checkpoints / name).mkdir()
        (checkpoints / name / "meta.json").write_text(json.dumps({"step": 1}))
    longer = tiny_config(tmp_path, training={**SHORT, "steps": 5}, checkpoint={"every": 1, "keep": 2})
    assert run_main(tmp_path, longer) == exitcodes.SUCCESS
    assert sorted(p.name for p in checkpoints.iterdir() if "step" in p.name) == ["step-00000004", "step-00000005"]


def test_model_and_checkpoints_are_readable_by_other_users_whatever_the_umask(tmp_path, clean_env):
    config = tiny_config(tmp_path, training=SHORT, checkpoint={"every": 2}, output={"path": str(tmp_path / "out" / "model")})
    previous = os.umask(0o077)
    try:
        assert run_main(tmp_path, config) == exitcodes.SUCCESS
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    checkpoints, model = tmp_path / "checkpoints", tmp_path / "out" / "model"
    directories = [model, model.parent, checkpoints, checkpoints / "data-cache", *checkpoints.glob("step-*")]
    assert len(directories) == 6
    assert {str(d): mode(d) for d in directories} == {str(d): 0o755 for d in directories}
    files = [f for d in directories for f in d.iterdir() if f.is_file()]
    assert {"model.safetensors", "modelfleet.json", "state.pt", "meta.json", "history.jsonl"} <= {f.name for f in files}
    assert any(f.name.startswith("tokens-") for f in files)
    assert {str(f): mode(f) for f in files} == {str(f): 0o644 for f in files}
    assert torch.load(checkpoints / "step-00000004" / "state.pt", weights_only=True)["step"] == 4
