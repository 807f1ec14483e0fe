"""The trainer's progress report is untrusted input: only well-typed known keys reach the status."""

from __future__ import annotations

import json

from modelfleet_operator.trainingjob.progress import MAX_REPORT_BYTES, final_digest, parse_report


def test_known_keys_are_copied_and_step_of_total_is_derived() -> None:
    report = {"step": 1200, "totalSteps": 5000, "loss": 2.5, "valLoss": 2.75, "learningRate": 3e-4, "tokensPerSecond": 1e5,
              "etaSeconds": 60, "phase": "Training", "checkpointStep": 1000, "updatedAt": "2030-01-01T00:00:00Z"}
    parsed = parse_report(json.dumps(report))
    assert parsed == {**report, "etaSeconds": 60.0, "stepOfTotal": "1200/5000", "lossDisplay": "2.500"}


def test_loss_is_shown_rounded_to_three_decimals() -> None:
    assert parse_report(json.dumps({"loss": 2.4134567}))["lossDisplay"] == "2.413"
    assert parse_report(json.dumps({"loss": 11}))["lossDisplay"] == "11.000"
    assert "lossDisplay" not in parse_report(json.dumps({"step": 3}))


def test_bad_values_are_dropped_not_fatal() -> None:
    parsed = parse_report(json.dumps({"step": -1, "totalSteps": True, "loss": "NaN", "valLoss": float("inf"),
                                      "phase": "x" * 500, "evil": {"nested": 1}}).replace("Infinity", "1e999"))
    assert parsed == {"phase": "x" * 64}
    for text in (None, "", "not json", "[1, 2]", "{}", " " * (MAX_REPORT_BYTES + 1)):
        assert parse_report(text) is None


def test_digest_counts_only_once_the_trainer_reports_success() -> None:
    training = parse_report(json.dumps({"step": 5, "phase": "Saving", "output": {"path": "/m", "digest": "sha256:ab"}}))
    assert final_digest(training) is None
    done = parse_report(json.dumps({"step": 5, "phase": "Succeeded", "output": {"path": "/m", "digest": "sha256:ab"}}))
    assert final_digest(done) == "sha256:ab"
    assert final_digest(parse_report(json.dumps({"phase": "Succeeded"}))) is None
