# syntax=docker/dockerfile:1
# The workload image: `modelfleet train` (TrainingJob pods) and `modelfleet serve` (ModelDeployment pods).
# Build from the repository root. Two variants of the same PyPI torch wheel (whose binaries link the CUDA
# libraries, so even CPU-only use needs most of them to import):
#   CUDA (the default, for GPU nodes with the NVIDIA container toolkit; torch and all its dependencies, ~6 GB):
#     docker build -f images/runtime.Dockerfile -t ghcr.io/modelfleet/modelfleet:0.1.0 .
#   CPU (without what only GPU work loads: Triton and cuSOLVER, ~4.5 GB):
#     docker build -f images/runtime.Dockerfile --build-arg TORCH_VARIANT=cpu -t ghcr.io/modelfleet/modelfleet:0.1.0-cpu .
# Without Docker: `modelfleet images build` builds both images with buildah (docs/images.md).
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
ARG TORCH_VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 65532 modelfleet \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelfleet
# Dependencies first, in layers of their own: torch with its CUDA libraries (torch pins those exactly; this layer
# changes only with TORCH_VERSION and TORCH_VARIANT), then the pinned closure of modelfleet's other dependencies
# (images/constraints.txt, which also re-pins torch's pure-Python requirements), each exactly as pinned.
RUN pip install "torch==${TORCH_VERSION}" \
    && case "${TORCH_VARIANT}" in \
      cpu) pip uninstall -y triton nvidia-cusolver ;; \
      cuda) ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not ${TORCH_VARIANT}" >&2; exit 2 ;; \
    esac
COPY images/constraints.txt /tmp/requirements/constraints.txt
RUN pip install --no-deps -r /tmp/requirements/constraints.txt && rm -rf /tmp/requirements
# The project's own code last: a code change rebuilds only this small layer.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER 65532:65532
# runtime API (8000), trainer metrics (9400), torch.distributed rendezvous (29500)
EXPOSE 8000 9400 29500
ENTRYPOINT ["modelfleet"]
CMD ["--help"]
