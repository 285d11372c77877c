"""Removes credentials from URLs before they reach a log line, a span, a record or a store.

Providers and gateways take secrets in the URL itself: Gemini's `?key=`, Azure's `?api-key=`, signed URLs'
`?sig=` / `X-Amz-Signature=`, and `user:password@` in the authority. Every service that logs, traces or
stores a URL passes it through `redact_url` (or `redact_urls_in` for free text such as an error message).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "REDACTED"
"""What a secret value (or a whole userinfo) is replaced with."""

_SECRET_NAMES = frozenset(
    {
        "key",
        "apikey",
        "token",
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "sig",
        "signature",
        "xgoogapikey",
        "password",
        "passwd",
        "pwd",
        "secret",
        "clientsecret",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "xamzcredential",
        "xamzsecuritytoken",
        "code",
        "session",
        "sessionid",
    }
)
"""Query parameter names (lower-cased, without `-`, `_` and `.`) whose value is a secret."""

_SECRET_SUFFIXES = ("key", "token", "secret", "password", "passwd", "signature", "credential", "credentials")
"""Any name ending in one of these is a secret too (`subscription-key`, `x-amz-security-token`, ...)."""

_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>(){}]+""")
"""An absolute URL inside free text: scheme, `://`, then up to whitespace, a quote or a parenthesis."""


def is_secret_name(name: str) -> bool:
    """True when a query parameter called `name` carries a credential (case-insensitive, `-`/`_` ignored)."""
    folded = re.sub(r"[-_.\s]", "", unquote_plus(name)).lower()
    return folded in _SECRET_NAMES or folded.endswith(_SECRET_SUFFIXES)


def redact_query(query: str) -> str:
    """`query` (without `?`) with the value of every secret parameter replaced; the rest kept byte for byte."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        parts.append(f"{name}={REDACTED}" if equals and is_secret_name(name) else part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """`url` without its userinfo and with secret query values replaced (see `redact_query`).

    A string that does not parse as a URL comes back with every secret-looking `name=value` redacted, so a
    malformed URL in an error message cannot leak what a well-formed one would not.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_loose(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    # The fragment too: OAuth implicit flows put `access_token=` there.
    return urlunsplit((parts.scheme, netloc, parts.path, redact_query(parts.query), redact_query(parts.fragment)))


def redact_urls_in(text: str) -> str:
    """`text` (an error message, a log line) with every absolute URL in it passed through `redact_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact_loose(text: str) -> str:
    """Secret-looking `name=value` pairs and `scheme://user@` prefixes of an unparsable URL, redacted."""
    text = re.sub(r"(://)[^/@\s]*@", rf"\g<1>{REDACTED}@", text)
    return re.sub(
        r"([A-Za-z0-9_.\-]+)=([^&#\s]*)",
        lambda match: f"{match.group(1)}={REDACTED}" if is_secret_name(match.group(1)) else match.group(0),
        text,
    )
