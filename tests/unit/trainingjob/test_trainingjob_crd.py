"""The TrainingJob CRD agrees with the controller's constants (the checks for both CRDs: tests/unit/test_crds.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from modelfleet_operator.trainingjob.spec import RESERVED_ENV, RESERVED_ENV_PREFIX

CRD = yaml.safe_load((Path(__file__).resolve().parents[3] / "crds" / "trainingjob.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def test_reserved_env_names_match_the_controller() -> None:
    env_item = SCHEMA["properties"]["spec"]["properties"]["env"]["items"]
    rule = env_item["x-kubernetes-validations"][0]["rule"]
    assert set(re.findall(r"'([A-Z_]+)'", rule)) - {RESERVED_ENV_PREFIX} == set(RESERVED_ENV)
    assert f"startsWith('{RESERVED_ENV_PREFIX}')" in rule


def test_printer_columns_and_short_name() -> None:
    columns = [c["name"] for c in VERSION["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Nodes", "Step", "Loss", "Age"]
    loss = next(c for c in VERSION["additionalPrinterColumns"] if c["name"] == "Loss")
    assert (loss["type"], loss["jsonPath"]) == ("string", ".status.progress.lossDisplay")  # rounded by the operator
    assert CRD["spec"]["names"]["shortNames"] == ["tj"] and VERSION["subresources"] == {"status": {}}
