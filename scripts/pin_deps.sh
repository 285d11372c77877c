#!/usr/bin/env bash
# Re-pins every transitive Python dependency as [tool.uv] constraint-dependencies in pyproject.toml.
# uv.lock is not committed because it records download URLs; these name==version pins (with the exact
# pins in each member's pyproject) make every machine resolve the same versions. Run after changing
# a dependency: `uv lock --upgrade-package NAME && scripts/pin_deps.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=$(uv export --no-hashes --no-header --no-annotate --all-packages --no-emit-workspace \
  --format requirements-txt | grep -v '^-e\|^#\|^\s*$' | sed 's/ *;.*//' | sort -u | sed 's/.*/  "&",/')
python3 - "$pins" <<'PY'
import re, sys
path = "pyproject.toml"
text = open(path).read()
block = "constraint-dependencies = [\n" + sys.argv[1] + "\n]"
text = re.sub(r"constraint-dependencies = \[\n[^\]]*\]", lambda _: block, text, flags=re.S)
open(path, "w").write(text)
PY
