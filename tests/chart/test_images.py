"""The images cannot be built here (no container engine); these checks keep their inputs consistent with the
project and the chart: pins, the non-root user the chart's security context assumes, and that the operator
image really needs no torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.chart.helm import CHART, REPO

IMAGES = REPO / "images"
DOCKERFILES = ("operator.Dockerfile", "runtime.Dockerfile")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"pyproject.toml: {text} is not pinned"
        pins[normalize(requirement.name)] = specifier.version
    return pins


def pins_in(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def test_constraints_agree_with_pyproject() -> None:
    constraints, pins = pins_in(IMAGES / "constraints.txt"), project_pins()
    for name, version in pins.items():
        if name != "torch":  # chosen per image variant (TORCH_INDEX_URL)
            assert constraints.get(name) == version, f"images/constraints.txt: {name} (run images/update-constraints.py)"
    assert "torch" not in constraints and not any(n.startswith("nvidia-") for n in constraints)


def test_operator_requirements_are_the_project_pins() -> None:
    pins = project_pins()
    for name, version in pins_in(IMAGES / "requirements-operator.txt").items():
        assert pins[name] == version, name


def test_runtime_image_installs_the_pinned_torch() -> None:
    dockerfile = (IMAGES / "runtime.Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={project_pins()['torch']}\n" in dockerfile


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_the_non_root_user_the_chart_expects(name: str) -> None:
    dockerfile = (IMAGES / name).read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("${PYTHON_IMAGE}") and "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    [user] = re.findall(r"^USER (\S+)$", final_stage, re.MULTILINE)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert user == f"{uid}:{values['podSecurityContext']['runAsGroup']}" and uid != 0
    assert re.search(rf"useradd --uid {uid} ", final_stage)
    assert 'ENTRYPOINT ["modelfleet"]' in final_stage


def test_every_file_the_dockerfiles_copy_passes_the_dockerignore() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for name in DOCKERFILES:
        for line in (IMAGES / name).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert source in allowed, f"{name}: {source} is excluded by .dockerignore"
                    assert (REPO / source).exists(), f"{name}: {source} does not exist"


def test_operator_runs_without_the_workload_dependencies() -> None:
    """The operator image has no torch, numpy, tokenizers, safetensors, FastAPI...: importing the operator
    (and the CLI that dispatches to it) must not need them."""
    blocked = ["torch", "numpy", "safetensors", "tokenizers", "fastapi", "uvicorn", "httpx", "transformers"]
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None  # import fails\n"
            "import modelfleet.cli, modelfleet_operator.main\n"
            "sys.exit(modelfleet.cli.main(['operator', '--help']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage: modelfleet operator" in result.stdout


def test_the_wheel_the_images_install_contains_every_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("modelfleet-*.whl")
    packaged = {Path(name).parent.as_posix() for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    sources = {"modelfleet": "modelfleet", "operator": "modelfleet_operator", "model_runtime": "model_runtime"}
    expected = {init.parent.relative_to(REPO).as_posix().replace(folder, package, 1)
                for folder, package in sources.items() for init in (REPO / folder).rglob("__init__.py")}
    assert expected - packaged == set()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_pods_the_operator_renders_run_as_the_images_user(name: str) -> None:
    """A trainer pod's files on a shared volume must be readable and writable by the runtime pod, and a hostPath
    volume (fsGroup does not apply) writable by the image's user: one uid everywhere."""
    from modelfleet_operator.security import WORKLOAD_UID, pod_security_context

    [user] = re.findall(r"^USER (\S+)$", (IMAGES / name).read_text(), re.MULTILINE)
    assert user == f"{WORKLOAD_UID}:{WORKLOAD_UID}"
    assert pod_security_context()["runAsUser"] == pod_security_context()["runAsGroup"] == WORKLOAD_UID


def test_the_cpu_variant_leaves_out_only_what_torch_does_not_link() -> None:
    """torch's CPU code links the CUDA runtime, cuBLAS, cuDNN, NCCL...: the CPU variant may drop only packages
    no library of torch needs to load (the real node's tests import torch from this image)."""
    dockerfile = (IMAGES / "runtime.Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cuda\n" in dockerfile
    [dropped] = re.findall(r"cpu\) pip uninstall -y ([^;]+) ;;", dockerfile)
    assert set(dropped.split()) == {"triton", "nvidia-cusolver"}
    # Everything else exactly as pinned, without resolving torch's requirements again.
    assert "pip install --no-deps -r /tmp/requirements/constraints.txt" in dockerfile
