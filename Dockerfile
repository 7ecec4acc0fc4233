# opskeeper as a Render background worker: installs exactly what uv.lock pins, runs as non-root.
FROM python:3.12-slim AS build
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
RUN useradd --create-home --uid 10001 opskeeper \
    && mkdir -p /app/var \
    && chown opskeeper /app/var
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY config ./config
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    OPSKEEPER_CONFIG=config/jobs.yaml \
    OPSKEEPER_LEDGER=/app/var/opskeeper.db \
    OPSKEEPER_LOG_FORMAT=json
USER 10001
# Exec form: SIGTERM from Render reaches opskeeper itself, which finishes runs and exits 0.
CMD ["opskeeper", "run"]
