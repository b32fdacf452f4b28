# syntax=docker/dockerfile:1
# facekeys recovery service, CPU variant (StyleGAN2 generator on CPU torch). From the repository root:
#   docker build -f deploy/docker/recovery-cpu.Dockerfile -t facekeys/recovery:0.1.0-cpu .
# The generator checkpoint is not in the image: mount it read-only at /models (see deploy/compose.yaml).
# Secure by default: needs its secrets (TLS, revealer credentials, audit key, key store CA + token, grant.pub,
# transform secret: the recovery/ folder of `facekeys-bootstrap`) at /run/secrets/facekeys, see deploy/README.md.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/facekeys
ENV PATH=/opt/facekeys/bin:$PATH
WORKDIR /src
COPY requirements.lock scripts/locked.py deploy/docker/install-locked.sh /tmp/lock/
COPY pyproject.toml setup.py MANIFEST.in README* ./
COPY proto ./proto
COPY client ./client
COPY server ./server
COPY indexer ./indexer
COPY benchmarks ./benchmarks
# At requirements.lock's versions, hashes checked; its CPU-only torch (torch==2.13.0+cpu, no CUDA libraries: ~4x
# smaller image) comes from PyTorch's CPU wheel index.
RUN PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu sh /tmp/lock/install-locked.sh server,models,recovery

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="facekeys-recovery" \
      org.opencontainers.image.description="facekeys recovery service (StyleGAN2 generator), CPU" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 facekeys \
 && useradd --system --uid 10001 --gid facekeys --home-dir /data --no-create-home --shell /usr/sbin/nologin facekeys \
 && mkdir -p /data /models /etc/facekeys \
 && chown facekeys:facekeys /data
COPY --from=build /opt/facekeys /opt/facekeys
COPY --chmod=0755 deploy/docker/entrypoint.py /usr/local/bin/facekeys-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/facekeys-health
COPY deploy/config/recover-serve.toml /etc/facekeys/recover-serve.toml
ENV PATH=/opt/facekeys/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEKEYS_HOST=0.0.0.0 \
    FACEKEYS_PROBE_COMMAND=recover-serve
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50052 9101
# Loading the generator takes a while on CPU.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["facekeys-health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["facekeys-entrypoint"]
CMD ["recover-serve"]
