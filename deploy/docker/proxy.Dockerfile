# syntax=docker/dockerfile:1
# Candela proxy: the LLM proxy (HTTP): forwards, streams, logs to ingest, spools to disk when ingest is down.
# Build from the repository root:  docker build -f deploy/docker/proxy.Dockerfile -t candela-proxy .
# Runs `python -m candela_proxy`; its configuration is CANDELA_* variables (deploy/README.md).

FROM python:3.11-slim-bookworm AS build
# uv resolves within the workspace's pinned versions ([tool.uv] constraint-dependencies in pyproject.toml).
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# uv reads the whole workspace; only candela-proxy and its dependencies are installed.
COPY pyproject.toml ./
COPY api api
COPY runtime runtime
COPY schema schema
COPY services services
COPY infra infra
COPY cli cli
RUN uv sync --no-dev --no-editable --package candela-proxy

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin candela
COPY --from=build /opt/venv /opt/venv
# The spool and write-ahead log: logs awaiting ingest survive a restart only on a persistent volume.
RUN mkdir -p /var/lib/candela/spool && chown -R 10001:10001 /var/lib/candela
VOLUME ["/var/lib/candela"]
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV CANDELA_HTTP_HOST=0.0.0.0 \
    CANDELA_HTTP_PORT=8080 \
    CANDELA_SPOOL_DIR=/var/lib/candela/spool
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "candela_runtime.probe", "http"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "candela_proxy"]
