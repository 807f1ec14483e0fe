"""``modelfleet train -f trainingjob.yaml [--claim NAME=DIR ...]``: run a TrainingJob manifest here, without a cluster.

The manifest's spec goes through the operator's own ``parse_spec`` and ``trainer_config`` (one mapping from spec to
trainer configuration), with local directories in place of the pods' mount paths: ``pvc://<claim>/<path>`` becomes
``<DIR>/<path>`` for ``--claim <claim>=<DIR>``, and ``file:///<path>`` stays ``/<path>``. All ``nodes x
processesPerNode`` processes run on this machine, so the per-process batch is the one the cluster would use.
Without ``-f``, ``modelfleet train`` is the trainer itself (what the pods run).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from model_runtime.training import exitcodes

MANIFEST_FLAGS = ("-f", "--file")


class ManifestError(ValueError):
    """A manifest that cannot run here; the message names the field or flag."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet train -f",
        description="Run a TrainingJob manifest on this machine with the built-in trainer (no cluster).")
    parser.add_argument("-f", "--file", required=True, type=Path, help="the TrainingJob manifest (YAML or JSON)")
    parser.add_argument("--claim", action="append", default=[], metavar="NAME=DIR",
                        help="the local directory standing for PersistentVolumeClaim NAME (pvc://NAME/...); repeatable")
    parser.add_argument("--print-config", action="store_true",
                        help="print the trainer configuration the manifest maps to, and exit")
    return parser


def read_manifest(path: Path) -> dict[str, Any]:
    """The first TrainingJob in a (possibly multi-document) manifest."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except OSError as error:
        raise ManifestError(f"-f: cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"-f: {path} is not valid YAML: {error}") from None
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "TrainingJob":
            return dict(doc)
    raise ManifestError(f"-f: {path} has no TrainingJob (kind: TrainingJob)")


def parse_claims(values: Sequence[str]) -> dict[str, Path]:
    claims: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise ManifestError(f"--claim: must be NAME=DIR, got {value!r}")
        claims[name] = Path(directory).expanduser().resolve()
    return claims


def local_paths(spec: Any, claims: Mapping[str, Path]) -> dict[str, str]:
    """URI -> local path for every location of the spec (the pods' mount paths' local counterparts)."""
    locations = {"spec.data.uri": spec.data, "spec.output.uri": spec.output, "spec.checkpoint.uri": spec.checkpoint,
                 "spec.baseModel.uri": spec.base_model}
    paths: dict[str, str] = {}
    for where, loc in locations.items():
        if loc is None:
            continue
        if loc.scheme == "file":
            paths[loc.uri] = loc.path
        elif loc.source in claims:
            paths[loc.uri] = str(claims[loc.source] / loc.path)
        else:
            raise ManifestError(f"{where}: {loc.uri} names claim {loc.source!r}; map it to a local directory with "
                                f"--claim {loc.source}=DIR")
    return paths


def trainer_config_for(manifest: Mapping[str, Any], claims: Mapping[str, Path]) -> tuple[dict[str, Any], int, str]:
    """(trainer configuration, processes to run, job name) for a manifest, via the operator's own mapping."""
    from modelfleet_operator.trainingjob.render import trainer_config
    from modelfleet_operator.trainingjob.spec import SpecError, parse_spec

    meta = manifest.get("metadata") or {}
    name = str(meta.get("name") or "local")
    try:
        spec = parse_spec(name, str(meta.get("namespace") or "default"), manifest.get("spec") or {})
    except SpecError as error:
        raise ManifestError(str(error)) from None
    if spec.user_code:
        raise ManifestError("spec.container: modelfleet train -f runs the built-in trainer; run your own program "
                            "directly (it reads the same MASTER_ADDR/WORLD_SIZE/RANK variables)")
    return trainer_config(spec, local_paths(spec, claims)), spec.world_size, name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(world_size: int, job_name: str) -> dict[str, str]:
    """What the trainer reads instead of the pod's env: one worker directly, or this node's launcher for all."""
    if world_size == 1:
        return {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()), "MODELFLEET_JOB_NAME": job_name}
    return {"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(world_size), "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port()), "MODELFLEET_JOB_NAME": job_name}


def run_manifest(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        config, world_size, name = trainer_config_for(read_manifest(args.file), parse_claims(args.claim))
    except ManifestError as error:
        print(f"modelfleet train: {error}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if args.print_config:
        print(json.dumps(config, indent=2, sort_keys=True))
        return 0
    from model_runtime.training import cli

    for key in ("LOCAL_RANK", "PET_NNODES", "MODELFLEET_PROGRESS_CONFIGMAP"):  # nothing of an outer job leaks in
        os.environ.pop(key, None)
    os.environ.update(process_env(world_size, name))
    with tempfile.TemporaryDirectory(prefix="modelfleet-train-") as tmp:
        path = Path(tmp) / "trainer.json"
        path.write_text(json.dumps(config))
        return cli.main(["--config", str(path)])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in MANIFEST_FLAGS or a.startswith("--file=") for a in argv):
        return run_manifest(argv)
    from model_runtime.training import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
