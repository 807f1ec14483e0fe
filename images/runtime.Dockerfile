# syntax=docker/dockerfile:1
# The workload image: `modelfleet train` (TrainingJob pods) and `modelfleet serve` (ModelDeployment pods).
# Build from the repository root. CPU (the default, ~1 GB):
#   docker build -f images/runtime.Dockerfile -t ghcr.io/modelfleet/modelfleet:0.1.0 .
# CUDA: PyPI's Linux torch wheels bundle the CUDA libraries (nvidia-* wheels), so the same slim base works on
# GPU nodes with the NVIDIA container toolkit; only the index changes (~5 GB):
#   docker build -f images/runtime.Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#     -t ghcr.io/modelfleet/modelfleet:0.1.0-cuda .
# Pin the base by digest in CI (python:3.11-slim-bookworm@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY images/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --disable-pip-version-check -c /tmp/constraints.txt setuptools
COPY pyproject.toml README.md ./
COPY modelfleet ./modelfleet
COPY operator ./operator
COPY model_runtime ./model_runtime
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Must equal pyproject.toml's torch pin (tests/chart/test_images.py checks).
ARG TORCH_VERSION=2.15.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY images/constraints.txt /tmp/requirements/constraints.txt
COPY --from=build /wheels /tmp/wheels
# torch first, from the chosen index; then modelfleet and its pinned dependencies (torch is already satisfied:
# 2.15.0+cpu matches ==2.15.0).
# (torch's own dependencies come from PyPI when the torch index lacks the pinned versions; 2.15.0+cpu sorts
# above PyPI's 2.15.0, so the extra index never swaps the build.)
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -c /tmp/requirements/constraints.txt "torch==${TORCH_VERSION}" \
    && pip install -c /tmp/requirements/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/requirements /tmp/wheels \
    && groupadd --gid 65532 modelfleet \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelfleet
USER 65532:65532
# runtime API (8000), trainer metrics (9400), torch.distributed rendezvous (29500)
EXPOSE 8000 9400 29500
ENTRYPOINT ["modelfleet"]
CMD ["--help"]
