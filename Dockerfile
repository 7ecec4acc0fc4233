# opskeeper as a Render background worker: installs exactly what uv.lock pins, runs as non-root.
#
# Node.js is left out unless a job needs it: the dependency_updates kind runs the project's own
# pnpm or npm. Build with `--build-arg OPSKEEPER_WITH_NODE=true` (on Render: an environment
# variable OPSKEEPER_WITH_NODE=true, which Render hands to the Docker build as a build argument).
# The image then gains the official Node.js binary of NODE_MAJOR (not Debian's nodejs, an EOL
# line), its npm, and pnpm: 235 MB installed (`python bench/updates.py` measures it).
ARG OPSKEEPER_WITH_NODE=false
ARG NODE_MAJOR=26
ARG PNPM_VERSION=12

# The official image's node and npm, and pnpm installed by that npm (pnpm 12 installs its own native
# binary as `pnpm/pnpm`, the bin package.json names), gathered in /opt/node.
FROM node:${NODE_MAJOR}-slim AS node-true
ARG PNPM_VERSION
RUN npm install --global --no-audit --no-fund "pnpm@${PNPM_VERSION}" \
    && mkdir -p /opt/node/bin /opt/node/lib \
    && cp /usr/local/bin/node /opt/node/bin/ \
    && cp -a /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/pnpm /opt/node/lib/ \
    && ln -s ../lib/npm/bin/npm-cli.js /opt/node/bin/npm \
    && ln -s ../lib/npm/bin/npx-cli.js /opt/node/bin/npx \
    && ln -s ../lib/pnpm/pnpm /opt/node/bin/pnpm
# Without Node.js: an empty /opt/node, so the final stage's COPY is the same either way.
FROM python:3.12-slim AS node-false
RUN mkdir -p /opt/node/bin
# BuildKit (which Render uses) builds only the stage picked here. It names a stage above, not an image,
# so there is no tag to pin.
# hadolint ignore=DL3006
FROM node-${OPSKEEPER_WITH_NODE} AS node

FROM python:3.12-slim AS build
# uv compiles every package it installs (opskeeper's own too: --no-editable puts it in site-packages) to
# bytecode, in the layer that installs it: a container's first command does not pay for compiling them.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY worker ./worker
COPY jobs ./jobs
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.12-slim
COPY --from=node /opt/node /opt/node
# The official node binary links libatomic, which the slim Python image lacks; only when node is there.
# Not pinned: the version is whatever the base image's Debian release ships, and a pin breaks when it moves.
# hadolint ignore=DL3008
RUN if [ -x /opt/node/bin/node ]; then \
      apt-get update && apt-get install -y --no-install-recommends libatomic1 && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --create-home --uid 10001 opskeeper \
    && mkdir -p /app/var \
    && chown opskeeper /app/var
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY config ./config
ENV PATH="/app/.venv/bin:/opt/node/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    OPSKEEPER_CONFIG=config/jobs.yaml \
    OPSKEEPER_LEDGER=/app/var/opskeeper.db \
    OPSKEEPER_LOG_FORMAT=json
USER 10001
# Exec form: SIGTERM from Render reaches opskeeper itself, which finishes runs and exits 0.
CMD ["opskeeper", "run"]
