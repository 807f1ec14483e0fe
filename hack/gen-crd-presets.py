#!/usr/bin/env python3
"""Writes the trainer's architecture presets into the TrainingJob CRD's CEL rules (the map literal
`{'tiny': {'layers': 2, ...}, ...}` that the rules index with spec.model.preset).

Usage: python hack/gen-crd-presets.py          (rewrite crds/trainingjob.yaml, then run hack/sync-chart-crds.sh)
       python hack/gen-crd-presets.py --check  (exit 1 when the CRD's table is out of date)
tests/unit/trainingjob/test_trainingjob_crd.py checks the same.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from modelfleet_operator.trainingjob.presets import cel_table

CRD = Path(__file__).resolve().parents[1] / "crds" / "trainingjob.yaml"
TABLE = re.compile(r"\{'[a-z]+': \{[^{}]*\}(?:, '[a-z]+': \{[^{}]*\})*\}")  # the only map of maps in the CRD


def main(argv: list[str]) -> int:
    text = CRD.read_text()
    updated, count = TABLE.subn(lambda _: cel_table(), text)
    if count == 0:
        print(f"no preset table in {CRD}", file=sys.stderr)
        return 1
    if argv[1:] == ["--check"]:
        if updated != text:
            print(f"out of date: {CRD} (run python hack/gen-crd-presets.py)", file=sys.stderr)
            return 1
        return 0
    CRD.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
