# syntax=docker/dockerfile:1
# The operator image (`modelfleet operator`): Python, kopf and the Kubernetes client, no torch (~150 MB).
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/modelfleet/modelfleet-operator:0.1.0 .
# Without Docker: `modelfleet images build` (docs/images.md).
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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 65532 modelfleet \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelfleet
# Dependencies in a layer of their own; the project's code last, so a code change rebuilds only that layer.
COPY images/requirements-operator.txt images/constraints.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/requirements-operator.txt -c /tmp/requirements/constraints.txt \
    && rm -rf /tmp/requirements
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
# Numeric, so that Kubernetes can verify runAsNonRoot without a runAsUser in the pod spec.
USER 65532:65532
# /metrics and /healthz (MODELFLEET_METRICS_PORT, MODELFLEET_HEALTH_PORT)
EXPOSE 8080 8081
ENTRYPOINT ["modelfleet"]
CMD ["operator"]
