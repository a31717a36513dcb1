# fracnode in a container: the DICOM node on port 11112, its state on the /data volume.
#
#   docker build -t fracnode .
#   docker run -p 11112:11112 -p 8080:8080 -v fracnode-data:/data fracnode
#   docker exec <c> cat /data/api-token       # the generated API/dashboard token (no web.auth set)
#   docker run ... -v ./site.yaml:/etc/fracnode/fracnode.yaml:ro fracnode     # a site's config
#
# DICOM on 11112; HTTP (dashboard, REST API, STOW-RS, /metrics) on 8080.
# The node runs as user fracnode (uid 10001): a bind-mounted /data must be writable by it.
# PyTorch is the CPU build (installed first, so no dependency pulls a CUDA build).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Its own layer: the largest download, and it changes least often.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# The package is installed in place (editable), so the shipped MONAI bundles in models/ and the
# SR templates in sr_templates/ stay beside it, where the node finds them.
WORKDIR /opt/fracnode
COPY pyproject.toml README.md ./
COPY node ./node
COPY models ./models
COPY sr_templates ./sr_templates
# torch==2.13.0 is already satisfied by the CPU build above (2.13.0+cpu), so pip keeps it.
RUN pip install -e .

COPY config/fracnode.yaml /etc/fracnode/fracnode.yaml

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home fracnode \
    && mkdir -p /data \
    && chown fracnode:fracnode /data

# Spool, SQLite index and outbox go to $FRACNODE_DATA_DIR. The working folder is /data too, so
# relative paths in the configuration (the default results folder, fracnode-data/results) land
# on the volume rather than in the image.
ENV FRACNODE_DATA_DIR=/data \
    FRACNODE_CONFIG=/etc/fracnode/fracnode.yaml
WORKDIR /data
VOLUME /data
USER fracnode

EXPOSE 11112 8080

# The node stops cleanly on SIGTERM (docker stop); `docker exec <c> fracnode status` reads the
# same configuration through FRACNODE_CONFIG.
CMD ["fracnode", "serve", "-c", "/etc/fracnode/fracnode.yaml"]
