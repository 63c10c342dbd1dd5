# syntax=docker/dockerfile:1
# stageprobe: a two-stage build. The build stage installs the package and its wheels into a
# virtualenv; the final stage copies only that virtualenv onto a fresh slim base, so pip's cache,
# the sources and any build tooling stay behind. Every runtime dependency (aiohttp, uvloop,
# cryptography, pydantic-core) ships manylinux wheels for CPython 3.11, so no compiler is needed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/stageprobe
# The metadata first, so editing a probe module does not invalidate the dependency layer.
COPY pyproject.toml README.md ./
COPY probe ./probe
RUN /opt/stageprobe/bin/pip install --no-cache-dir . \
    && /opt/stageprobe/bin/pip uninstall --yes pip \
    && /opt/stageprobe/bin/probe --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="stageprobe" \
      org.opencontainers.image.description="Probes a staging deployment, exports Prometheus metrics and gates CI on real readiness." \
      org.opencontainers.image.licenses="Apache-2.0"
# PROBE_LISTEN is the port when no PORT is set; Cloud Run sets PORT for an ingress container and
# the daemon honours it. The config is expected at PROBE_CONFIG (a mounted secret or ConfigMap).
ENV PATH=/opt/stageprobe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROBE_CONFIG=/etc/stageprobe/config.yaml \
    PROBE_LISTEN=0.0.0.0:9464 \
    PROBE_LOG_FORMAT=json
RUN groupadd --system --gid 10001 stageprobe \
    && useradd --system --uid 10001 --gid stageprobe --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin stageprobe
COPY --from=build /opt/stageprobe /opt/stageprobe
# The example config probes the built-in twin, so `docker run IMAGE demo` works out of the box;
# a real deployment mounts its own file over it.
COPY config/example.yaml /etc/stageprobe/config.yaml
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 9464
STOPSIGNAL SIGTERM
# For plain Docker / Compose only (Cloud Run and Kubernetes use their own probes). /livez answers
# 200 while the scheduler ticks; the port follows the same PORT-over-PROBE_LISTEN rule as the app.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('PORT') or os.environ['PROBE_LISTEN'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4)"]
ENTRYPOINT ["probe"]
CMD ["run"]
