# fracnode in a container: the DICOM node on port 11112, HTTP on 8080, its state on the /data volume.
#
#   docker build -t fracnode .
#   docker run -p 11112:11112 -p 8080:8080 -v fracnode-data:/data fracnode
#   docker exec <c> cat /data/api-token       # the generated API/dashboard token (no web.auth set)
#   docker run ... -v ./site.yaml:/etc/fracnode/fracnode.yaml:ro fracnode     # a site's config
#
# GPU hosts: build with the CUDA wheel of PyTorch and run with the GPU given to the container
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t fracnode:gpu .
#   docker run --gpus all ... fracnode:gpu          # inference.device: auto then picks CUDA
# The node runs as user fracnode (uid 10001): a bind-mounted /data must be writable by it.
# config/examples/ are in the image under /opt/fracnode/config/examples (their paths are under /data);
# plugins/orthanc/ is there too, for a compose file that mounts it into Orthanc (compose.yaml).
FROM python:3.11-slim-bookworm

# the PyTorch wheel index: CPU by default (no CUDA libraries pulled); a CUDA index for GPU hosts
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Its own layer: the largest download, and it changes least often.
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"

# The package is installed in place (editable), so the shipped MONAI bundles in models/ and the
# SR templates in sr_templates/ stay beside it, where the node finds them.
WORKDIR /opt/fracnode
COPY pyproject.toml README.md ./
COPY node ./node
COPY models ./models
COPY sr_templates ./sr_templates
COPY plugins ./plugins
COPY config ./config
# torch==2.13.0 is already satisfied by the wheel above (2.13.0+cpu or +cu128), so pip keeps it.
RUN pip install -e .

COPY config/fracnode.yaml /etc/fracnode/fracnode.yaml

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home fracnode \
    && mkdir -p /data/results \
    && chown -R fracnode:fracnode /data

# Spool, SQLite index and outbox go to $FRACNODE_DATA_DIR. The working folder is /data too, so
# relative paths in the configuration (the default results folder, fracnode-data/results) land
# on the volume rather than in the image.
ENV FRACNODE_DATA_DIR=/data \
    FRACNODE_CONFIG=/etc/fracnode/fracnode.yaml \
    FRACNODE_HTTP_PORT=8080
WORKDIR /data
VOLUME /data
USER 10001:10001

EXPOSE 11112 8080

# /health answers without credentials; the image has Python but no curl
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('FRACNODE_HTTP_PORT', '8080')}/health\", timeout=4)"]

# The node stops cleanly on SIGTERM (docker stop); `docker exec <c> fracnode status` reads the
# same configuration through FRACNODE_CONFIG.
CMD ["fracnode", "serve", "-c", "/etc/fracnode/fracnode.yaml"]
