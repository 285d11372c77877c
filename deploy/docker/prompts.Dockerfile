# syntax=docker/dockerfile:1
# Candela prompts: PromptsService: versioned prompt templates (Postgres).
# Build from the repository root:  docker build -f deploy/docker/prompts.Dockerfile -t candela-prompts .
# Runs `python -m candela_prompts`; its configuration is CANDELA_* variables (deploy/README.md).

FROM python:3.11-slim-bookworm AS build
# uv resolves within the workspace's pinned versions ([tool.uv] constraint-dependencies in pyproject.toml).
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# uv reads the whole workspace; only candela-prompts and its dependencies are installed.
COPY pyproject.toml ./
COPY api api
COPY runtime runtime
COPY schema schema
COPY services services
COPY infra infra
COPY cli cli
RUN uv sync --no-dev --no-editable --package candela-prompts

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin candela
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV CANDELA_GRPC_HOST=0.0.0.0 \
    CANDELA_GRPC_PORT=50051 \
    CANDELA_METRICS_HOST=0.0.0.0 \
    CANDELA_METRICS_PORT=9090
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "candela_runtime.probe", "grpc"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "candela_prompts"]
