# syntax=docker/dockerfile:1
# facekeys key store, CUDA variant: faiss-gpu instead of faiss-cpu. With index_mode = "ann" (serve.toml) and a
# visible GPU, StoreConfig.ann_backend "auto" takes the candidates from a FAISS GPU flat float16 index (18.5 KB
# per key on the card: ~4M keys on an 80 GB GPU); without a GPU the image behaves like the CPU one. The ann and
# float16 modes keep vector files on disk and so refuse master_key_file (encryption at rest): drop it from
# serve.toml for such a deployment (README, Index modes).
# Build from the repository root:
#   docker build -f deploy/docker/keystore-cuda.Dockerfile -t facekeys/keystore:0.1.0-cuda .
# Run (secure by default: TLS, credentials and audit are required to listen on 0.0.0.0; make the
# secrets with `docker run --rm --user "$(id -u)" -v "$PWD/fk-secrets:/out" --entrypoint facekeys-bootstrap
# facekeys/keystore:0.1.0 --dir /out`, see deploy/README.md "Secrets"):
#   docker run --init --gpus all -v facekeys-data:/data -v "$PWD/fk-secrets/keystore:/run/secrets/facekeys:ro" \
#     -p 127.0.0.1:50051:50051 facekeys/keystore:0.1.0-cuda
# Settings: /etc/facekeys/serve.toml (deploy/config/serve.toml), FACEKEYS_* env, *_FILE secrets;
# see deploy/docker/entrypoint.py. Ports: 50051 gRPC (TLS), 9100 metrics, 50060 health only (plaintext). The CPU image:
# keystore.Dockerfile.

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
# A regular (not editable) install at requirements.lock's versions, hashes checked; the image keeps no source tree.
RUN sh /tmp/lock/install-locked.sh server
# faiss-gpu (PyPI, CUDA 12; kernels up to sm_90) provides the same `faiss` module; its nvidia-*-cu12 wheels carry
# the CUDA runtime and cuBLAS, so a slim base is enough: the host needs the NVIDIA driver + container toolkit.
RUN pip uninstall -y faiss-cpu && pip install --no-cache-dir faiss-gpu==1.15.1

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="facekeys-keystore" \
      org.opencontainers.image.description="facekeys key store, CUDA: W+ latents in FAISS (GPU) indexes + LMDB behind gRPC" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 facekeys \
 && useradd --system --uid 10001 --gid facekeys --home-dir /data --no-create-home --shell /usr/sbin/nologin facekeys \
 && mkdir -p /data /etc/facekeys \
 && chown facekeys:facekeys /data
COPY --from=build /opt/facekeys /opt/facekeys
COPY --chmod=0755 deploy/docker/entrypoint.py /usr/local/bin/facekeys-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/facekeys-health
COPY --chmod=0755 deploy/backup.py /usr/local/bin/facekeys-backup
COPY --chmod=0755 deploy/bootstrap_secrets.py /usr/local/bin/facekeys-bootstrap
COPY deploy/config/serve.toml /etc/facekeys/serve.toml
ENV PATH=/opt/facekeys/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEKEYS_DATA_DIR=/data \
    FACEKEYS_HOST=0.0.0.0 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9100 50060
# Long start period: at start-up the index is rebuilt from LMDB (about 2,000 keys/s per core measured).
# facekeys-health probes the plaintext health-only port (health_port in serve.toml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["facekeys-health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["facekeys-entrypoint"]
CMD ["serve"]
