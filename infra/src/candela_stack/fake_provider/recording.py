"""The fake's request log: each provider request as received, with every credential replaced by a
fingerprint, for ``GET /_fake/requests``."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from candela_stack.fake_provider.wire import JSONObject

CREDENTIAL_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "candela-auth",
        "helicone-auth",
        "cookie",
        "x-amz-security-token",
        # Credentials a Bedrock caller hands the gateway; none may ever reach the provider, but if one did
        # the log would not show it.
        "aws-access-key",
        "aws-secret-key",
        "aws-session-token",
        "candela-aws-secret-access-key",
        "candela-aws-session-token",
        "helicone-aws-secret-access-key",
        "helicone-aws-session-token",
    }
)
"""Headers whose values are credentials: recorded only as ``redacted_credential(value)``."""


def redacted_credential(value: str) -> str:
    """What the request log keeps of a credential header's value: a fingerprint, never the secret."""
    return "REDACTED sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


DEFAULT_MAX_RECORDED: Final = 10_000
"""Requests the log keeps (the oldest go first) unless create_app says otherwise."""


@dataclass(frozen=True)
class RecordedRequest:
    """One provider request as received, for ``GET /_fake/requests``."""

    method: str
    path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    received_at: float

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case; repeats joined by ", "), or None when absent."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None

    def to_json(self) -> JSONObject:
        """The JSON form: header names lower-cased (repeats joined by ", "), body as text and base64."""
        headers: dict[str, str] = {}
        for name, value in self.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed: Any = json.loads(self.body) if self.body else None
        except ValueError:
            parsed = None
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query_string,
            "headers": headers,
            "body": self.body.decode("utf-8", errors="replace"),
            "body_base64": base64.b64encode(self.body).decode("ascii"),
            "json": parsed,
            "received_at": self.received_at,
        }
