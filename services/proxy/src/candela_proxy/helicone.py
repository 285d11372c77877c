"""Helicone drop-in: every header Helicone documents, and what Candela does with it.

A Helicone user changes the base URL and the key, nothing else. Each ``Helicone-*`` request header is either
honoured (read by :mod:`candela_proxy.headers` as its ``Candela-*`` twin) or refused with a 400 that names
it and says why: none is silently dropped, since a feature the client believes on (moderation, prompt-
injection screening, a PostHog export) must not quietly be off. A refused switch sent as ``false`` asks for
what Candela does anyway, so it is accepted.

:data:`HELICONE_HEADERS` is the one declaration: the parser's refusals, the README's table and the unit
tests are all checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Support(Enum):
    """What Candela does with a Helicone header."""

    HONOURED = "honoured"
    REFUSED = "refused"


@dataclass(frozen=True)
class HeliconeHeader:
    """One documented Helicone request header."""

    name: str
    support: Support
    behaviour: str
    """Honoured: the Candela equivalent. Refused: why, and what to do instead (the 400's message)."""
    switch: bool = False
    """A true/false feature switch: refused only when turned on (``false`` is what Candela does anyway)."""

    @property
    def option(self) -> str:
        """The lowercase name without its ``Helicone-`` prefix, as the parser sees it."""
        return self.name.lower().removeprefix("helicone-")


_H, _R = Support.HONOURED, Support.REFUSED

HELICONE_HEADERS: tuple[HeliconeHeader, ...] = (
    HeliconeHeader("Helicone-Auth", _H, "`Candela-Auth`: the Candela key, `Bearer <key>`"),
    HeliconeHeader("Helicone-Target-Url", _H, "`Candela-Target-Url`: the provider base URL, provider path appended"),
    HeliconeHeader("Helicone-OpenAI-Api-Base", _H, "selects the upstream base URL (Azure and OpenAI)"),
    HeliconeHeader(
        "Helicone-Target-Provider",
        _H,
        "`Candela-Target-Provider`: the provider logged (lowercase) for a `Helicone-Target-Url`, instead of its"
        " host; with the built-in routes, whose provider Candela knows, it changes nothing",
    ),
    HeliconeHeader("Helicone-Request-Id", _H, "`Candela-Request-Id`: the request's id (a UUID, else 400)"),
    HeliconeHeader(
        "Helicone-Model-Override",
        _H,
        "`Candela-Model-Override`: the model recorded and priced (the provider's answer stays `response_model`)",
    ),
    HeliconeHeader("Helicone-User-Id", _H, "`Candela-User-Id`"),
    HeliconeHeader("Helicone-Session-Id", _H, "`Candela-Session-Id`"),
    HeliconeHeader("Helicone-Session-Path", _H, "`Candela-Session-Path`"),
    HeliconeHeader("Helicone-Session-Name", _H, "`Candela-Session-Name`"),
    HeliconeHeader("Helicone-Property-[Name]", _H, "`Candela-Property-[Name]`: a property, its name lowercased"),
    HeliconeHeader(
        "Helicone-Prompt-Id",
        _H,
        "tags the request with the prompt id, as in Helicone; with `Candela-Prompt-Version` / `-Environment` /"
        " `-Inputs` it names a stored prompt to render",
    ),
    HeliconeHeader("Helicone-Prompt-Version", _H, "`Candela-Prompt-Version`: the stored prompt's version to render"),
    HeliconeHeader("Helicone-Omit-Request", _H, "`Candela-Omit-Request`: the request body is not logged"),
    HeliconeHeader("Helicone-Omit-Response", _H, "`Candela-Omit-Response`: the response body is not logged"),
    HeliconeHeader("Helicone-Cache-Enabled", _H, "`Candela-Cache-Enabled`"),
    HeliconeHeader("Helicone-Cache-Bucket-Max-Size", _H, "`Candela-Cache-Bucket-Max-Size` (1-20)"),
    HeliconeHeader("Helicone-Cache-Seed", _H, "`Candela-Cache-Seed`"),
    HeliconeHeader(
        "Helicone-Cache-Ignore-Keys", _H, "`Candela-Cache-Ignore-Keys`: top-level body keys left out of the cache key"
    ),
    HeliconeHeader("Helicone-Cache-Control", _H, "`Candela-Cache-Control`: as `Cache-Control: max-age=<seconds>`"),
    HeliconeHeader("Helicone-Retry-Enabled", _H, "`Candela-Retry-Enabled`"),
    HeliconeHeader("Helicone-Retry-Num", _H, "`Candela-Retry-Num` (1-10)"),
    HeliconeHeader("Helicone-Retry-Factor", _H, "`Candela-Retry-Factor` (1-10)"),
    HeliconeHeader("Helicone-Retry-Min-Timeout", _H, "`Candela-Retry-Min-Timeout` (ms)"),
    HeliconeHeader("Helicone-Retry-Max-Timeout", _H, "`Candela-Retry-Max-Timeout` (ms)"),
    HeliconeHeader("Helicone-Fallbacks", _H, "`Candela-Fallbacks` (the same JSON list)"),
    HeliconeHeader("Helicone-RateLimit-Policy", _H, "`Candela-RateLimit-Policy` (the same syntax)"),
    HeliconeHeader(
        "Helicone-Stream-Usage", _H, "`Candela-Stream-Usage`: Candela asks streams for their usage by default"
    ),
    HeliconeHeader(
        "Helicone-Moderations-Enabled",
        _R,
        "Candela runs no moderation: call the provider's moderation endpoint before the request",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-LLM-Security-Enabled",
        _R,
        "Candela runs no prompt-injection screening: screen the input before the request",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-LLM-Security-Advanced",
        _R,
        "Candela runs no prompt-injection screening: screen the input before the request",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-Prompt-Security-Enabled",
        _R,
        "Candela runs no prompt-injection screening: screen the input before the request",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-Stream-Force-Format",
        _R,
        "Candela relays a stream's bytes as the provider sent them and does not reformat them",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-Increase-Timeout",
        _R,
        "the upstream timeouts are the operator's (CANDELA_UPSTREAM_READ_TIMEOUT_S), not a request's",
        switch=True,
    ),
    HeliconeHeader(
        "Helicone-Webhook-Enabled", _R, "Candela sends no webhooks: read logs from the query API", switch=True
    ),
    HeliconeHeader(
        "Helicone-Token-Limit-Exception-Handler",
        _R,
        "Candela never truncates or reroutes a prompt over the model's window: the provider's 400 comes back",
    ),
    HeliconeHeader("Helicone-Posthog-Key", _R, "Candela exports no events to PostHog: read logs from the query API"),
    HeliconeHeader("Helicone-Posthog-Host", _R, "Candela exports no events to PostHog: read logs from the query API"),
    HeliconeHeader("Helicone-Lytix-Key", _R, "Candela exports no events to Lytix: read logs from the query API"),
    HeliconeHeader("Helicone-Lytix-Host", _R, "Candela exports no events to Lytix: read logs from the query API"),
    HeliconeHeader(
        "Helicone-Key-Id",
        _R,
        "Candela keeps no provider keys: send the provider's key in its own header (Authorization, x-api-key)",
    ),
    HeliconeHeader(
        "Helicone-Manual-Access-Key", _R, "Candela authenticates with `Candela-Auth` (or `Helicone-Auth`) only"
    ),
    HeliconeHeader("Helicone-Jwt", _R, "Candela authenticates with `Candela-Auth` (or `Helicone-Auth`) only"),
    HeliconeHeader(
        "Helicone-Org-Id", _R, "the organization is the Candela key's: send `Candela-Auth` (or `Helicone-Auth`)"
    ),
    HeliconeHeader(
        "Helicone-Prompt-Mode", _R, "Candela's prompts have no modes: name a version or an environment instead"
    ),
    HeliconeHeader(
        "Helicone-Prompt-Format", _R, "Candela's prompts are rendered into the body as stored: no format is chosen"
    ),
    HeliconeHeader(
        "Helicone-Prompt-Name", _R, "Candela names a prompt by `Candela-Prompt-Id` (or `Helicone-Prompt-Id`)"
    ),
    HeliconeHeader("Helicone-Node-Id", _R, "Candela's sessions use `Helicone-Session-Id` and `-Session-Path`"),
    HeliconeHeader(
        "Helicone-Experiment-Id", _R, "Candela runs no experiments: tag the request with a `Helicone-Property-*`"
    ),
    HeliconeHeader(
        "Helicone-Experiment-Column-Id",
        _R,
        "Candela runs no experiments: tag the request with a `Helicone-Property-*`",
    ),
    HeliconeHeader(
        "Helicone-Experiment-Row-Index",
        _R,
        "Candela runs no experiments: tag the request with a `Helicone-Property-*`",
    ),
)

_BY_OPTION = {header.option: header for header in HELICONE_HEADERS}

# Candela headers a route reads itself, outside the parser (Bedrock's credentials, region and signed host, in
# candela_proxy.bedrock): their Helicone- twins are accepted, as every Candela header's are.
READ_BY_ROUTES: frozenset[str] = frozenset(
    {"aws-access-key-id", "aws-secret-access-key", "aws-session-token", "aws-region", "bedrock-host"}
)
_OFF = {"0", "false", "no", "off"}

# Helicone's response headers and Candela's twin of each, mirrored on every answer that carries the twin.
RESPONSE_TWINS: tuple[tuple[str, str], ...] = (
    ("Candela-Cache", "Helicone-Cache"),
    ("Candela-RateLimit-Limit", "Helicone-RateLimit-Limit"),
    ("Candela-RateLimit-Remaining", "Helicone-RateLimit-Remaining"),
    ("Candela-RateLimit-Policy", "Helicone-RateLimit-Policy"),
)


def refusal(raw_name: str, value: str) -> str | None:
    """Why the header ``raw_name`` (a ``Helicone-*`` or ``Candela-*`` one the parser does not honour) is
    refused, or None when it is not: a switch turned off asks for what Candela does anyway.

    Every unknown ``Helicone-*`` header is refused; a ``Candela-*`` one only when it is the twin of a refused
    Helicone header (``Candela-Moderations-Enabled``), since other Candela headers may be read elsewhere.
    """
    prefix, _, option = raw_name.partition("-")
    helicone = prefix.lower() == "helicone"
    documented = _BY_OPTION.get(option.lower())
    if documented is None:
        if not helicone or option.lower() in READ_BY_ROUTES:
            return None
        return f"header {raw_name} is not a Helicone header Candela knows; see the proxy README's Helicone table"
    if documented.support is Support.HONOURED:
        # The parser reads each honoured header itself; one that reaches here was read elsewhere.
        return None
    if documented.switch and value.strip().lower() in _OFF:
        return None
    # Named as Helicone documents it: a gateway in front (Envoy) hands the proxy lowercased names.
    name = documented.name if helicone else "Candela-" + documented.name.removeprefix("Helicone-")
    return f"header {name} is not supported by Candela: {documented.behaviour}"


def mirror_response_headers(headers: dict[str, str]) -> None:
    """Adds the ``Helicone-*`` twin of each Candela response header present (``Helicone-Cache: HIT``)."""
    for candela, helicone in RESPONSE_TWINS:
        if candela in headers:
            headers[helicone] = headers[candela]
