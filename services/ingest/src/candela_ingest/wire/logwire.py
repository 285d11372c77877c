"""The wire decoder's one door: the C extension (_logwire.c), or its pure-Python twin (_logwire_py.py) when
``CANDELA_NO_EXTENSIONS=1``.

The switch is read once, at import (as aiokafka reads ``AIOKAFKA_NO_EXTENSIONS``): ``1`` selects the twin,
unset, empty or ``0`` the extension, anything else fails fast. Both give the same results; the twin reads
every message with the protobuf runtime and is slower. The extension is built by ``uv sync``; a missing
build fails the import rather than slowing the services silently.
"""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLE = "CANDELA_NO_EXTENSIONS"


def no_extensions(value: str | None) -> bool:
    """Whether ``CANDELA_NO_EXTENSIONS``'s ``value`` selects the pure-Python twins."""
    if value in (None, "", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{ENVIRONMENT_VARIABLE} must be 1 (pure Python) or 0 / unset (the C extension), got {value!r}")


NO_EXTENSIONS = no_extensions(os.environ.get(ENVIRONMENT_VARIABLE))
"""True when the pure-Python twin is in use."""

if NO_EXTENSIONS:
    from candela_ingest.wire._logwire_py import COLUMNS, columns, ingest_request
else:
    from candela_ingest.wire._logwire import COLUMNS, columns, ingest_request

__all__ = ["COLUMNS", "NO_EXTENSIONS", "columns", "ingest_request"]
