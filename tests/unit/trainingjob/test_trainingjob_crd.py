"""The TrainingJob CRD reads well in `kubectl explain` and agrees with the controller's constants."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from modelfleet_operator.trainingjob.spec import RESERVED_ENV, RESERVED_ENV_PREFIX

CRD = yaml.safe_load((Path(__file__).resolve().parents[3] / "crds" / "trainingjob.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    missing = [path for path, node in walk(SCHEMA, "") if path not in ("", ".metadata") and not path.endswith("{}")
               and not node.get("description")]
    assert missing == []


def test_every_rule_message_names_its_field() -> None:
    for path, node in walk(SCHEMA, ""):
        for rule in node.get("x-kubernetes-validations") or []:
            text = rule.get("message") or rule.get("messageExpression", "")
            assert re.search(r"(spec|metadata)\.[a-zA-Z]", text), (path, text)


def test_reserved_env_names_match_the_controller() -> None:
    env_item = SCHEMA["properties"]["spec"]["properties"]["env"]["items"]
    rule = env_item["x-kubernetes-validations"][0]["rule"]
    assert set(re.findall(r"'([A-Z_]+)'", rule)) - {RESERVED_ENV_PREFIX} == set(RESERVED_ENV)
    assert f"startsWith('{RESERVED_ENV_PREFIX}')" in rule


def test_printer_columns_and_short_name() -> None:
    columns = [c["name"] for c in VERSION["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Nodes", "Step", "Loss", "Age"]
    assert CRD["spec"]["names"]["shortNames"] == ["tj"] and VERSION["subresources"] == {"status": {}}
