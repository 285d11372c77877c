#!/usr/bin/env bash
# One digest of everything the console's build reads. install.sh stores it beside the build and rebuilds when
# it changes; the browser tests compare it so they never test an old build. Content, not mtimes: regenerating
# console/src/gen (check_protos.sh does) rewrites identical files.
set -euo pipefail
cd "$(dirname "$0")/../console"
find index.html package-lock.json vite.config.ts tsconfig.json src -type f -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
