"""examples/usercode/train.py, the plain PyTorch script of the user-code example, run as a TrainingJob's pods would
run it (two processes, env:// rendezvous on MASTER_ADDR/MASTER_PORT, the operator's MODELFLEET_* paths), followed by
the report sidecar (`modelfleet report-forward --follow`): progress and the model's digest reach the progress file,
and the model it wrote (Hugging Face layout, its own Llama code) loads in the runtime and continues text as the
script's own greedy decoding did."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from model_runtime.files import sha256_file
from model_runtime.serving.loader import load_model_dir
from tests.helpers import wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "usercode" / "train.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(tmp_path: Path, steps: int) -> list[subprocess.CompletedProcess[str]]:
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "OMP_NUM_THREADS": "1", "MODELFLEET_REPORT_FILE": str(tmp_path / "report.jsonl"),
               "MODELFLEET_OUTPUT_DIR": str(tmp_path / "models" / "tinylm"),
               "MODELFLEET_CHECKPOINT_DIR": str(tmp_path / "models" / "tinylm-checkpoints")}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), "--steps", str(steps), "--checkpoint-every", "10"],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


def test_the_example_trains_on_two_ranks_resumes_and_its_reports_reach_the_progress_file(tmp_path) -> None:
    progress = tmp_path / "progress.json"
    env = {**os.environ, "MODELFLEET_PROGRESS_FILE": str(progress)}
    env.pop("MODELFLEET_PROGRESS_CONFIGMAP", None)
    sidecar = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "report-forward", "--follow",
                                str(tmp_path / "report.jsonl")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        first = run_ranks(tmp_path, steps=20)
        assert [r.returncode for r in first] == [0, 0], first[0].stdout[-2000:] + first[1].stdout[-2000:]
        assert "step 20/20 loss" in first[1].stdout  # rank 1 trained in the same process group
        again = run_ranks(tmp_path, steps=40)  # the same job, restarted with more steps: resumes at its checkpoint
        assert [r.returncode for r in again] == [0, 0], again[0].stdout[-2000:]
        assert "resuming from step 20" in again[0].stdout
        wait_for(lambda: progress.exists() and json.loads(progress.read_text()).get("step") == 40, timeout=30,
                 what="the last step forwarded")
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(timeout=30) == 0
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    report = json.loads(progress.read_text())
    assert report["totalSteps"] == 40 and 0 <= report["loss"] < 2
    weights = tmp_path / "models" / "tinylm" / "model.safetensors"
    assert report["output"] == {"path": str(weights.parent), "digest": sha256_file(weights)}
    lines = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    # rank 0 only: the first step of each run, then every 10th
    assert [line["step"] for line in lines if "step" in line] == [1, 10, 20, 21, 30, 40]

    # The runtime loads what the script wrote, and its greedy continuation is the script's own.
    [sample] = [line for line in again[0].stdout.splitlines() if line.startswith("sample: ")]
    loaded = load_model_dir(weights.parent)
    prompt = loaded.tokenizer.encode("The quick").ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            ids.append(int(loaded.model(torch.tensor([ids]))[0, -1].argmax()))
    assert json.dumps(loaded.tokenizer.decode(ids[len(prompt):])) == sample.removeprefix("sample: ")
