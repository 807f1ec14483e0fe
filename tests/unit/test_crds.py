"""Both CRDs: every field described, every rule's message naming its field, and the tables the rules embed
agreeing with the Python code they mirror (presets, allowed volume types, runtime limits, child names)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from model_runtime.serving.config import ServeConfig
from model_runtime.training.config import PRESETS
from modelfleet_operator import policy
from modelfleet_operator.trainingjob import presets
from modelfleet_operator.trainingjob.render import Names

ROOT = Path(__file__).resolve().parents[2]
CRDS = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "crds").glob("*.yaml"))}


def schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def rules(kind: str) -> list[str]:
    return [r["rule"] for _, node in walk(schema(kind)) for r in node.get("x-kubernetes-validations") or []]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_has_a_description(kind: str) -> None:
    missing = [path for path, node in walk(schema(kind)) if path not in ("", ".metadata") and not path.endswith("{}")
               and not node.get("description")]
    assert missing == []


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_rule_message_names_its_field(kind: str) -> None:
    for path, node in walk(schema(kind)):
        for rule in node.get("x-kubernetes-validations") or []:
            text = rule.get("message") or rule.get("messageExpression", "")
            assert re.search(r"(spec|metadata)\.[a-zA-Z]", text), (path, text)


def test_the_preset_table_in_the_rules_is_the_trainers() -> None:
    embedded = [rule for rule in rules("trainingjob") if "self.preset]" in rule or "self.model.preset]" in rule]
    assert len(embedded) == 3  # sequenceLength, hiddenSize/heads, kvHeads
    for rule in embedded:
        tables = re.findall(r"\{'[a-z]+': \{[^{}]*\}(?:, '[a-z]+': \{[^{}]*\})*\}", " ".join(rule.split()))
        assert tables == [presets.cel_table()]
        parsed = ast.literal_eval(tables[0])
        assert parsed == {name: {presets.FIELDS[k]: v for k, v in sizes.items()} for name, sizes in PRESETS.items()}
    preset_enum = schema("trainingjob")["properties"]["spec"]["properties"]["model"]["properties"]["preset"]["enum"]
    assert preset_enum == list(PRESETS)


def test_the_volume_allow_list_is_the_operators() -> None:
    volume = schema("trainingjob")["properties"]["spec"]["properties"]["volumes"]["items"]
    allowed_rule, forbidden_rule = (r["rule"] for r in volume["x-kubernetes-validations"])
    assert re.findall(r"has\(self\.(\w+)\)", allowed_rule) == list(policy.ALLOWED_VOLUME_TYPES)
    assert re.findall(r"has\(self\.(\w+)\)", forbidden_rule) == list(policy.FORBIDDEN_VOLUME_TYPES)
    assert set(volume["properties"]) == {"name", *policy.ALLOWED_VOLUME_TYPES, *policy.FORBIDDEN_VOLUME_TYPES}
    source = volume["properties"]["projected"]["properties"]["sources"]["items"]
    assert set(source["properties"]) == {*policy.ALLOWED_PROJECTED_SOURCES, *policy.FORBIDDEN_PROJECTED_SOURCES}
    for kind in CRDS:
        value_from = (schema(kind)["properties"]["spec"]["properties"]["env"]["items"]["properties"]["valueFrom"])
        assert list(value_from["properties"]) == list(policy.ALLOWED_VALUE_FROM)


def test_the_longest_trainingjob_name_fits_every_child() -> None:
    rule = schema("trainingjob")["x-kubernetes-validations"][0]["rule"]
    longest = int(re.search(r"size\(\) <= (\d+)", rule).group(1))
    max_nodes = schema("trainingjob")["properties"]["spec"]["properties"]["nodes"]["maximum"]
    names = Names("a" * longest)
    dns_label = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # Services, pod hostnames, label values
    assert dns_label.match(names.service) and dns_label.match(names.pod(max_nodes - 1))
    assert all(len(n) <= 253 for n in (names.config, names.progress, names.service_account, names.role))
    assert not dns_label.match(Names("a" * (longest + 2)).pod(max_nodes - 1))
    ref = schema("modeldeployment")["properties"]["spec"]["properties"]["model"]["properties"]["trainingJobRef"]
    assert ref["properties"]["name"]["maxLength"] == longest


def test_the_runtime_accepts_the_smallest_values_admission_lets_through() -> None:
    runtime = schema("modeldeployment")["properties"]["spec"]["properties"]["runtime"]["properties"]
    flags = {"maxNumSeqs": "max_num_seqs", "maxNumBatchedTokens": "max_num_batched_tokens",
             "numKvBlocks": "num_kv_blocks", "maxWaitingRequests": "max_waiting_requests",
             "requestTimeoutSeconds": "request_timeout", "drainTimeoutSeconds": "drain_timeout"}
    for field, name in flags.items():
        ServeConfig(model=Path("/m"), **{name: runtime[field]["minimum"]})
        with pytest.raises(ValueError):
            ServeConfig(model=Path("/m"), **{name: runtime[field]["minimum"] - 1})
    assert min(runtime["blockSize"]["enum"]) > 0
