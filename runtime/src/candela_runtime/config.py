"""Configuration from ``CANDELA_*`` environment variables into frozen dataclasses.

Each service declares a frozen dataclass whose fields are made with :func:`env_field`; :func:`load_config`
reads ``CANDELA_<FIELD_NAME>`` for each field, converts it to the field's type and reports every missing
or malformed value at once, so a misconfigured service fails at start-up with one clear message.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "CANDELA_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

ConfigT = TypeVar("ConfigT")


class ConfigError(Exception):
    """One or more environment variables are missing or malformed."""


def env_field(doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A config field documented by ``doc``; without a default the variable is required."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def env_name(field_name: str) -> str:
    """The environment variable that sets a config field."""
    return PREFIX + field_name.upper()


def _convert(raw: str, kind: Any) -> Any:
    if kind is str:
        return raw
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Path:
        return Path(raw)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
    raise TypeError(f"unsupported config type {kind!r}")


def load_config(cls: type[ConfigT], environ: Mapping[str, str] | None = None) -> ConfigT:
    """Builds ``cls`` from the environment, raising :class:`ConfigError` listing every problem."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(field.name)
        raw = env.get(name)
        if raw is None or raw == "":
            if field.default is dataclasses.MISSING:
                problems.append(f"{name} is required: {field.metadata.get('doc', '')}")
            continue
        try:
            values[field.name] = _convert(raw, hints[field.name])
        except ValueError as exc:
            problems.append(f"{name}={raw!r} is not a valid {hints[field.name].__name__}: {exc}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cls(**values)


def describe(cls: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every field of a config class, for help texts."""
    rows = []
    for field in dataclasses.fields(cls):
        default = "(required)" if field.default is dataclasses.MISSING else repr(field.default)
        rows.append((env_name(field.name), default, field.metadata.get("doc", "")))
    return rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Settings every Candela gRPC service shares; each service's config extends it."""

    service_token: str = env_field("Shared secret that authenticates internal calls between services.")
    grpc_host: str = env_field("Address the gRPC server binds.", "127.0.0.1")
    grpc_port: int = env_field("Port the gRPC server binds (0 picks a free one).", 0)
    log_level: str = env_field("Logging level (DEBUG, INFO, WARNING, ERROR).", "INFO")
    shutdown_grace_s: float = env_field("Seconds in-flight calls get to finish on SIGTERM.", 10.0)
