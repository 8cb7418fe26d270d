# syntax=docker/dockerfile:1
#
# One image for every kubus service:
#
#   docker build -t kubus:dev .
#   docker run --rm kubus:dev watcher --help
#   docker run --rm kubus:dev reconciler --help
#
# The builder turns this checkout into a wheel and installs it with its runtime dependencies
# (no dev, bench or test extras) into a virtualenv at /opt/kubus. The final stage is the same
# slim Python with only that virtualenv added, run as an unprivileged numeric user. Every
# runtime dependency ships binary wheels (--only-binary), so neither stage has a compiler.

# pyproject.toml: requires-python >= 3.11.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubus ./kubus
COPY bus ./bus
COPY watcher ./watcher
COPY reconcilers ./reconcilers
# kubus/cli.py imports bench.compare when it starts (the `kubus bench` command), so the package
# is in the wheel; its extra (matplotlib) is not installed.
COPY bench ./bench
# The venv gets no pip of its own: the base's pip installs into it. pip compiles the installed
# modules to bytecode here, once, so that no process compiles them at start-up.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/kubus \
 && python -m pip --python /opt/kubus/bin/python install --only-binary=:all: /wheels/kubus-*.whl

FROM ${PYTHON_IMAGE}
# (An ARG from before the first FROM is seen inside a stage only when declared again.)
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kubus" \
      org.opencontainers.image.description="The Kubernetes controller manager as event-sourced Python controllers on NATS JetStream: one image for the watcher and the reconcilers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/kubus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/kubus /opt/kubus
# 65532: the conventional "nonroot" UID; it owns nothing in the image, which it only reads.
USER 65532:65532
# /metrics and /healthz + /readyz, the defaults of --metrics-bind-address and
# --health-probe-bind-address of both services.
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]
ENTRYPOINT ["kubus"]
CMD ["--help"]
