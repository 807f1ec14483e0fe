"""Running the helm binary against the chart with a private HELM_* home, and reading what it renders."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"
KUBE_VERSION = "1.35.4"
MONITORING_API = "monitoring.coreos.com/v1"

Obj = dict[str, Any]


@dataclass
class Helm:
    binary: Path
    home: Path
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**self.base_env, "HELM_CACHE_HOME": str(self.home / "cache"),
                "HELM_CONFIG_HOME": str(self.home / "config"), "HELM_DATA_HOME": str(self.home / "data")}

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def template(self, values: Obj | None = None, namespace: str = "modelfleet-system", release: str = "mf",
                 api_versions: Iterable[str] = (), chart: Path = CHART) -> list[Obj]:
        """`helm template` of `chart` with `values` (a dict, passed as a values file); the rendered objects (CRDs
        included)."""
        args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                "--include-crds", *values_args(self.home, values)]
        for api in api_versions:
            args += ["--api-versions", api]
        return [doc for doc in yaml.safe_load_all(self.run(*args).stdout) if doc]


def values_args(home: Path, values: Obj | None) -> list[str]:
    if not values:
        return []
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pods_of(objects: list[Obj]) -> list[Obj]:
    """Every pod the chart would make, as a Pod object built from its workload's pod template."""
    pods = []
    for workload in objects:
        template = (workload.get("spec") or {}).get("template")
        if workload["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job") and template:
            meta = {**template.get("metadata", {}), "name": f"{workload['metadata']['name']}-pod"}
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
    return pods
