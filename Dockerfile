# stageprobe: a two-stage build. The build stage installs the package and its locked dependencies
# (constraints.txt) into a virtualenv; the final stage copies only that virtualenv onto a fresh
# base and removes pip, setuptools and wheel, so no packaging tool, cache or source is left in the
# image. Every runtime dependency (aiohttp, uvloop, cryptography, pydantic-core) ships manylinux
# wheels for CPython 3.11, so no compiler is needed.
#
# BASE is any image with CPython 3.11 and its venv module at `python`: python:3.11-slim-bookworm
# by default; deploy/test-image.sh builds one from Debian packages when no registry is reachable.
# HEALTHCHECK is a Docker-format instruction: podman and buildah default to OCI images, which
# drop it, so build with `podman build --format docker` (or `buildah bud --format docker`).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# A package index mirror or a wheelhouse for builds without PyPI (deploy/test-image.sh serves
# one on loopback); unset, pip uses PyPI. Build-stage only: none of them reaches the image.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# PIP_CONSTRAINT also reaches pip's isolated build environment, so the build backend is pinned too.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/stageprobe
# The metadata first, so editing a probe module does not invalidate the dependency layer.
COPY constraints.txt pyproject.toml README.md ./
COPY probe ./probe
RUN /opt/stageprobe/bin/pip install --no-cache-dir --prefer-binary . \
    && /opt/stageprobe/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/stageprobe/bin/probe --version

FROM ${BASE}
LABEL org.opencontainers.image.title="stageprobe" \
      org.opencontainers.image.description="Probes a staging deployment, exports Prometheus metrics and gates CI on real readiness." \
      org.opencontainers.image.licenses="Apache-2.0"
# PROBE_LISTEN is the port when no PORT is set; Cloud Run sets PORT for an ingress container and
# the daemon honours it. The config is expected at PROBE_CONFIG (a mounted secret or ConfigMap).
# PROBE_DEMO_HOST makes `probe demo` listen on every address, so that
# `docker run -p 9464:9464 IMAGE demo` is reachable from the host (it also honours PORT).
ENV PATH=/opt/stageprobe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROBE_CONFIG=/etc/stageprobe/config.yaml \
    PROBE_LISTEN=0.0.0.0:9464 \
    PROBE_LOG_FORMAT=json \
    PROBE_DEMO_HOST=0.0.0.0
# The base's own packaging tools go too (python:3.11-slim ships pip, setuptools and wheel); the
# user is written straight into /etc/passwd, so no shadow tools are needed in the base.
RUN if python -m pip --version > /dev/null 2>&1; then \
        python -m pip uninstall --yes --no-cache-dir pip setuptools wheel; \
    fi \
    && echo "stageprobe:x:10001:10001:stageprobe:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "stageprobe:x:10001:" >> /etc/group
COPY --from=build /opt/stageprobe /opt/stageprobe
# The example config probes the twin (see its header), so `probe run` starts without a mount;
# a real deployment mounts its own file over it. `probe demo` needs no file at all.
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
