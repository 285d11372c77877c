#!/usr/bin/env bash
# CI's proto checks: buf lint, buf breaking against the previous commit, and no drift between protos/
# and the checked-in generated code.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=node_modules/.bin/buf

"$buf" lint
if git rev-parse -q --verify HEAD~1 >/dev/null; then
  "$buf" breaking --against ".git#ref=HEAD~1"
fi

./scripts/gen_protos.sh >/dev/null 2>&1
if [ -n "$(git status --porcelain -- api/src/candela console/src/gen)" ]; then
  echo "generated code is out of date with protos/: run 'make protos' and commit the result" >&2
  git status --short -- api/src/candela console/src/gen >&2
  exit 1
fi
echo "protos: lint, breaking and drift checks passed"
