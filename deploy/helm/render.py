"""Renders the Helm chart offline with Go's own text/template engine: what `helm template` would print.

    uv run python deploy/helm/render.py deploy/helm/candela [-f my-values.yaml ...] [--release NAME] [--namespace NS]

Helm is not installable here (only as Go source), so this stands in for `helm template` without
re-implementing the template language: the templates go through Go's text/template with the sprig
functions (the `py-go-template` package: a cgo build of both, the same engine and function library Helm
uses). What this file adds is only what Helm itself adds around the engine:

- the built-in objects: `.Values` (values.yaml deep-merged with each -f file, later files winning, as
  Helm merges them), `.Release` (Name, Namespace, Service "Helm", IsInstall, IsUpgrade, Revision) and
  `.Chart` (Chart.yaml with Helm's capitalised keys);
- the named templates: every `templates/_*.tpl` file is parsed with each template, as Helm parses them
  into one set;
- one `# Source:` comment and a `---` separator per rendered file, empty documents dropped.

The chart keeps to what both engines share (Go built-ins and sprig; `template`, not Helm's `include`), and
a missing value is an error here where Helm would print nothing: stricter, never looser. A render that
fails exits non-zero with the engine's message.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import go_template
import yaml


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, anything else in `override` replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def context(chart_dir: Path, value_files: Sequence[Path], release: str, namespace: str) -> dict[str, Any]:
    """The objects a template sees: .Values, .Release, .Chart."""
    values: dict[str, Any] = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    for path in value_files:
        values = merge(values, yaml.safe_load(path.read_text()) or {})
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    return {
        "Values": values,
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "IsInstall": True,
            "IsUpgrade": False,
            "Revision": 1,
        },
        "Chart": {key[:1].upper() + key[1:]: value for key, value in chart.items()},
    }


def render(chart_dir: Path, objects: dict[str, Any]) -> str:
    """Every template rendered, as one multi-document YAML stream."""
    helpers = "".join(path.read_text() for path in sorted((chart_dir / "templates").glob("_*.tpl")))
    documents: list[str] = []
    with tempfile.TemporaryDirectory(prefix="candela-chart-") as scratch:
        for template in sorted((chart_dir / "templates").glob("*.yaml")):
            combined = Path(scratch) / template.name
            combined.write_text(helpers + template.read_text())
            text = go_template.render(combined, objects).decode()
            name = f"{chart_dir.name}/templates/{template.name}"
            for document in text.split("\n---\n"):
                if yaml.safe_load(document) is not None:
                    documents.append(f"# Source: {name}\n{document.strip()}\n")
    return "---\n" + "---\n".join(documents)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the rendered manifests."""
    parser = argparse.ArgumentParser(description="Render a Helm chart offline (Go text/template + sprig).")
    parser.add_argument("chart", type=Path)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--release", default="candela")
    parser.add_argument("--namespace", default="candela")
    args = parser.parse_args(argv)
    objects = context(args.chart, args.values, args.release, args.namespace)
    sys.stdout.write(render(args.chart, objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
