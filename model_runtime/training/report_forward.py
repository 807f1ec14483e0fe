"""``modelfleet report-forward -- COMMAND...``: run your own training program and pass the reports it
appends to ``MODELFLEET_REPORT_FILE`` (see ``report.py``) on to the progress reporters of
``modelfleet train`` (stdout, ``MODELFLEET_PROGRESS_FILE``, ``MODELFLEET_PROGRESS_CONFIGMAP``), so the
operator shows its progress and model the same way.

It polls the file twice a second, passes SIGTERM on to the program, sends a final ``Succeeded``
report (with the model's path and digest) when the program exits 0, and exits with the program's code.

``modelfleet report-forward --follow FILE`` forwards the reports another container appends to FILE until
SIGTERM, then sends what is left as a final report: the operator runs it as a sidecar next to user code
(spec.container), so the program's image needs nothing from modelfleet.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from model_runtime.files import sha256_file
from model_runtime.training.progress import Fanout, Progress, Reporter, reporters_from_env
from model_runtime.training.report import REPORT_FILE_ENV

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
WEIGHTS_FILE = "model.safetensors"
# Metrics that also fill the progress report's own fields.
FIELDS = {"valLoss": "val_loss", "learningRate": "learning_rate", "tokensPerSecond": "tokens_per_second",
          "etaSeconds": "eta_seconds"}


class ReportTail:
    """The complete lines appended to a file since the last read; a line still being written waits for its newline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def records(self) -> list[Any]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("%s: ignoring a line that is not JSON: %.80r", self.path, line)
        return records


class ReportForwarder:
    """Folds report records into one Progress and sends it to ``reporter`` after each batch."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.progress = Progress(step=0, total_steps=0)

    def forward(self, records: Sequence[Any]) -> None:
        applied = [record for record in records if self._apply(record)]
        if applied:
            self.reporter.report(self.progress)

    def flush(self) -> None:
        """Send the latest report now (the ConfigMap reporter may have skipped it within its interval)."""
        self.reporter.report(self.progress, final=True)

    def finish(self) -> None:
        self.progress = replace(self.progress, phase="Succeeded", eta_seconds=0.0)
        self.reporter.report(self.progress, final=True)

    def _apply(self, record: Any) -> bool:
        problem = _problem(record)
        if problem:
            log.warning("ignoring report %.120r: %s", record, problem)
            return False
        if "model" in record:
            output = dict(record["model"])
            if "digest" not in output and (Path(output["path"]) / WEIGHTS_FILE).is_file():
                output["digest"] = sha256_file(Path(output["path"]) / WEIGHTS_FILE)
            self.progress = replace(self.progress, output=output)
        if "step" in record:
            metrics = record.get("metrics") or {}
            fields = {field: metrics[name] for name, field in FIELDS.items() if name in metrics}
            self.progress = replace(
                self.progress, step=record["step"], total_steps=record.get("totalSteps", self.progress.total_steps),
                loss=record.get("loss", self.progress.loss), metrics={**(self.progress.metrics or {}), **metrics},
                **fields,
            )
        return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _problem(record: Any) -> str | None:
    """What is wrong with a report record (naming the field), or None."""
    if not isinstance(record, dict) or not ({"step", "model"} & record.keys()):
        return "a report is a JSON object with step or model"
    if "step" in record:
        if not _is_int(record["step"]):
            return "step: must be an integer >= 0"
        if "totalSteps" in record and not _is_int(record["totalSteps"]):
            return "totalSteps: must be an integer >= 0"
        if not _is_number(record.get("loss")):
            return "loss: must be a finite number or null"
        metrics = record.get("metrics", {})
        if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
            return "metrics: must be an object of names to finite numbers or null"
    if "model" in record:
        output = record["model"]
        if not isinstance(output, dict) or not isinstance(output.get("path"), str) or not output["path"]:
            return "model.path: must be a non-empty string"
        if not isinstance(output.get("digest", ""), str):
            return "model.digest: must be a string"
    return None


def run(command: Sequence[str], env: dict[str, str], reporter: Reporter) -> int:
    """Run ``command`` with ``MODELFLEET_REPORT_FILE`` set and forward its reports; its exit code."""
    own_file = not env.get(REPORT_FILE_ENV)
    if own_file:
        fd, name = tempfile.mkstemp(prefix="modelfleet-report-", suffix=".jsonl")
        os.close(fd)
        env = {**env, REPORT_FILE_ENV: name}
    tail, forwarder = ReportTail(Path(env[REPORT_FILE_ENV])), ReportForwarder(reporter)
    try:
        try:
            child = subprocess.Popen(list(command), env=env)
        except OSError as error:
            log.error("cannot run %s: %s (exit 127)", command[0], error.strerror or error)
            return 127
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            while True:
                try:
                    code = child.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    forwarder.forward(tail.records())
        finally:
            signal.signal(signal.SIGTERM, previous)
        forwarder.forward(tail.records())
        if code == 0:
            forwarder.finish()
        return code if code >= 0 else 128 - code
    finally:
        if own_file:
            Path(env[REPORT_FILE_ENV]).unlink(missing_ok=True)


def follow(path: Path, reporter: Reporter, stop: threading.Event) -> int:
    """Forward the reports appended to ``path`` until ``stop`` is set, then flush the last one."""
    tail, forwarder = ReportTail(path), ReportForwarder(reporter)
    while not stop.wait(POLL_SECONDS):
        forwarder.forward(tail.records())
    forwarder.forward(tail.records())
    forwarder.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelfleet report-forward",
        description="Run your training program and forward the progress it reports (MODELFLEET_REPORT_FILE, "
                    "see model_runtime.training.report) to modelfleet's progress reporters.",
    )
    parser.add_argument("--follow", metavar="FILE", type=Path,
                        help="forward what another program appends to FILE until SIGTERM (a sidecar), instead of "
                             "running a program")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments, after --")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.follow):
        parser.error("give the program to run after -- (e.g. modelfleet report-forward -- python train.py), "
                     "or --follow FILE")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [report-forward] %(message)s")
    env = dict(os.environ)
    reporter = Fanout(reporters_from_env(env))
    if args.follow:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        return follow(args.follow, reporter, stop)
    return run(command, env, reporter)


if __name__ == "__main__":
    sys.exit(main())
