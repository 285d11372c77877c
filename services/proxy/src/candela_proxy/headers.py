"""The Candela request headers (each also accepted with the ``Helicone-`` prefix), parsed once per request."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

_PREFIXES = ("candela-", "helicone-")
_PROPERTY = "property-"
_TRUE = {"1", "true", "yes", "on"}
MAX_PROPERTIES = 64
MAX_VALUE_LENGTH = 1024


class HeaderError(ValueError):
    """A Candela header is malformed; the message says which and why."""


@dataclass
class CandelaHeaders:
    """What the client asked Candela to do and record for one request."""

    auth: str | None = None
    request_id: str = ""
    user_id: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    prompt_id: str = ""
    prompt_version: str = ""
    omit_request: bool = False
    omit_response: bool = False
    properties: dict[str, str] = field(default_factory=dict)


def parse_candela_headers(headers: Mapping[str, str]) -> CandelaHeaders:
    """Reads every ``Candela-*`` / ``Helicone-*`` header; raises :class:`HeaderError` on bad input."""
    parsed = CandelaHeaders()
    for raw_name, value in headers.items():
        name = raw_name.lower()
        if not name.startswith(_PREFIXES):
            continue
        option = name.split("-", 1)[1]
        if len(value) > MAX_VALUE_LENGTH:
            raise HeaderError(f"header {raw_name} is longer than {MAX_VALUE_LENGTH} characters")
        if option.startswith(_PROPERTY):
            # Header names are case-insensitive and proxies (Envoy among them) lowercase them, so property
            # names are lowercase by definition: one name, however the client spelled it.
            key = name.split("-", 2)[2]
            if not key:
                raise HeaderError(f"header {raw_name} names no property")
            parsed.properties[key] = value
            if len(parsed.properties) > MAX_PROPERTIES:
                raise HeaderError(f"more than {MAX_PROPERTIES} Candela-Property-* headers")
        elif option == "auth":
            parsed.auth = value
        elif option == "request-id":
            try:
                parsed.request_id = str(uuid.UUID(value))
            except ValueError:
                raise HeaderError(f"header {raw_name} must be a UUID, got {value!r}") from None
        elif option == "user-id":
            parsed.user_id = value
        elif option == "session-id":
            parsed.session_id = value
        elif option == "session-path":
            parsed.session_path = value
        elif option == "session-name":
            parsed.session_name = value
        elif option == "prompt-id":
            parsed.prompt_id = value
        elif option == "prompt-version":
            parsed.prompt_version = value
        elif option == "omit-request":
            parsed.omit_request = value.strip().lower() in _TRUE
        elif option == "omit-response":
            parsed.omit_response = value.strip().lower() in _TRUE
    return parsed


def bearer_secret(value: str | None) -> str | None:
    """The key in ``Bearer <key>`` (the scheme is optional, as Helicone accepts)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    secret = rest.strip() if scheme.lower() == "bearer" else value.strip()
    return secret or None
