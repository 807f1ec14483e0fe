"""The reporting contract for user training code (report.py) and its forwarder (report_forward.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from model_runtime.files import sha256_file
from model_runtime.training import report
from model_runtime.training.progress import Progress
from model_runtime.training.report_forward import ReportForwarder, ReportTail, main
from tests.helpers import wait_for


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[Progress, bool]] = []

    def report(self, progress: Progress, *, final: bool = False) -> None:
        self.reports.append((progress, final))


def test_user_code_can_import_the_reporter_without_torch_or_numpy(tmp_path):
    check = ("import sys, model_runtime.training.report, model_runtime.training.report_forward; "
             "heavy = {'torch', 'numpy', 'tokenizers', 'kubernetes'} & set(sys.modules); assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_reports_are_json_lines_appended_to_the_file_named_by_the_environment(tmp_path, monkeypatch):
    report.step(1, loss=1.0)  # no MODELFLEET_REPORT_FILE: nothing happens
    target = tmp_path / "report.jsonl"
    monkeypatch.setenv("MODELFLEET_REPORT_FILE", str(target))
    report.step(10, loss=2.5, total_steps=100, metrics={"valLoss": 2.75, "accuracy": float("nan")})
    report.step(11)
    report.model(tmp_path / "model", digest="sha256:abc")
    assert [json.loads(line) for line in target.read_text().splitlines()] == [
        {"step": 10, "totalSteps": 100, "loss": 2.5, "metrics": {"valLoss": 2.75, "accuracy": None}},
        {"step": 11},
        {"model": {"path": str(tmp_path / "model"), "digest": "sha256:abc"}},
    ]
    assert list(tmp_path.iterdir()) == [target]


def test_the_tail_waits_for_a_line_to_end_and_skips_lines_that_are_not_json(tmp_path, caplog):
    path = tmp_path / "report.jsonl"
    tail = ReportTail(path)
    assert tail.records() == []  # not there yet
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo')
    assert tail.records() == [{"step": 1}]
    with open(path, "ab") as f:
        f.write(b'ss": 0.5}\nnot json\n')
    assert tail.records() == [{"step": 2, "loss": 0.5}]
    assert "ignoring a line that is not JSON: b'not json'" in caplog.text
    assert tail.records() == []


def test_the_forwarder_folds_records_into_one_progress_report(tmp_path, caplog):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    recorder = Recorder()
    forwarder = ReportForwarder(recorder)
    forwarder.forward([{"step": 5, "totalSteps": 50, "loss": 3.0, "metrics": {"learningRate": 1e-3, "acc": 0.1}}])
    forwarder.forward([{"step": "six"}, {"loss": 1.0}, {"step": 6, "metrics": {"valLoss": 2.5}}])
    forwarder.forward([{"step": 7, "loss": float("inf")}])  # a non-finite loss: refused
    forwarder.forward([{"model": {"path": str(model)}}])
    forwarder.finish()
    assert "step: must be an integer >= 0" in caplog.text
    assert "a report is a JSON object with step or model" in caplog.text
    assert "loss: must be a finite number or null" in caplog.text
    assert len(recorder.reports) == 4  # one per batch with a valid record, and the final one
    second = recorder.reports[1][0].to_json()
    assert (second["step"], second["totalSteps"], second["loss"], second["learningRate"], second["valLoss"]) == \
        (6, 50, 3.0, 1e-3, 2.5)
    assert second["metrics"] == {"learningRate": 1e-3, "acc": 0.1, "valLoss": 2.5}
    final, is_final = recorder.reports[-1]
    assert is_final and final.phase == "Succeeded" and final.step == 6
    assert final.output == {"path": str(model), "digest": sha256_file(model / "model.safetensors")}


USER_PROGRAM = textwrap.dedent("""
    import sys
    from pathlib import Path
    from model_runtime.training import report
    out = Path(sys.argv[1])
    for step in range(1, 4):
        report.step(step, loss=4.0 / step, total_steps=3, metrics={"tokensPerSecond": 100.0})
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"trained")
    report.model(out)
    sys.exit(int(sys.argv[2]))
""")


@pytest.mark.parametrize("exit_code", [0, 3])
def test_report_forward_runs_the_program_and_passes_its_reports_to_the_progress_file(exit_code, tmp_path, monkeypatch):
    progress = tmp_path / "progress.json"
    for name in ("MODELFLEET_REPORT_FILE", "MODELFLEET_PROGRESS_CONFIGMAP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELFLEET_PROGRESS_FILE", str(progress))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model"
    assert main(["--", sys.executable, "-c", USER_PROGRAM, str(out), str(exit_code)]) == exit_code
    reported = json.loads(progress.read_text())
    assert (reported["step"], reported["totalSteps"], reported["loss"], reported["tokensPerSecond"]) == (3, 3, 4.0 / 3,
                                                                                                        100.0)
    assert reported["output"] == {"path": str(out), "digest": sha256_file(out / "model.safetensors")}
    assert reported["phase"] == ("Succeeded" if exit_code == 0 else "Training")


def test_report_forward_needs_a_program(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "give the program to run after --" in capsys.readouterr().err
    assert main(["--", "/nonexistent/program"]) == 127


def test_report_forward_follow_forwards_another_programs_reports_until_sigterm(tmp_path):
    """The sidecar mode: reports appended by another container reach the progress file while it runs, and the last
    ones (here the model line, written just before SIGTERM) are flushed on SIGTERM; it exits 0."""
    report, progress, out = tmp_path / "report.jsonl", tmp_path / "progress.json", tmp_path / "model"
    env = {**os.environ, "MODELFLEET_PROGRESS_FILE": str(progress)}
    env.pop("MODELFLEET_PROGRESS_CONFIGMAP", None)
    sidecar = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "report-forward", "--follow", str(report)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with open(report, "a") as f:
            f.write(json.dumps({"step": 5, "totalSteps": 10, "loss": 1.5}) + "\n")
        wait_for(lambda: progress.exists() and json.loads(progress.read_text())["step"] == 5, timeout=30,
                 what="the step line forwarded")
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")
        with open(report, "a") as f:
            f.write(json.dumps({"step": 10, "loss": 0.5}) + "\n" + json.dumps({"model": {"path": str(out)}}) + "\n")
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(timeout=30) == 0, sidecar.stdout.read() if sidecar.stdout else ""
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    reported = json.loads(progress.read_text())
    assert (reported["step"], reported["totalSteps"], reported["loss"]) == (10, 10, 0.5)
    assert reported["output"] == {"path": str(out), "digest": sha256_file(out / "model.safetensors")}


def test_report_forward_takes_a_program_or_follow_not_both(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["--follow", str(tmp_path / "r.jsonl"), "--", "true"])
    assert "or --follow FILE" in capsys.readouterr().err
