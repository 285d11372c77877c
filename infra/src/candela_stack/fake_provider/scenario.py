"""What a request asks of the fake through its ``x-fake-*`` headers: the reply, token counts, pacing and
simulated failures (see the package docstring for each header)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from candela_stack.fake_provider.wire import FakeRequestError, JSONObject, StreamFraming

HEADER_REPLY: Final = "x-fake-reply"
HEADER_DELAY_MS: Final = "x-fake-delay-ms"
HEADER_CACHED_TOKENS: Final = "x-fake-cached-tokens"
HEADER_CACHE_WRITE_TOKENS: Final = "x-fake-cache-write-tokens"
HEADER_REASONING_TOKENS: Final = "x-fake-reasoning-tokens"
HEADER_USAGE: Final = "x-fake-usage"
HEADER_STATUS: Final = "x-fake-status"
HEADER_FAIL_TIMES: Final = "x-fake-fail-times"
HEADER_KEY: Final = "x-fake-key"
HEADER_ERROR_MESSAGE: Final = "x-fake-error-message"
HEADER_RETRY_AFTER: Final = "x-fake-retry-after"
HEADER_LINE_ENDING: Final = "x-fake-line-ending"
HEADER_WRITE_BYTES: Final = "x-fake-write-bytes"
HEADER_WRITE_DELAY_MS: Final = "x-fake-write-delay-ms"
_LINE_ENDINGS: Final = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


@dataclass(frozen=True)
class Scenario:
    """What one request asks of the fake through its ``x-fake-*`` headers."""

    reply: str | None
    """The exact reply text, or None for the default echo reply."""
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    delay_s: float
    """Pause before each streamed content delta."""
    usage_overrides: JSONObject = field(default_factory=dict)
    """Keys that replace those of every ``usage`` object sent (``x-fake-usage``)."""
    framing: StreamFraming = field(default_factory=StreamFraming)
    """Line endings and write sizes of a stream."""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, default_delay_ms: float) -> Scenario:
        """Parse the scenario headers; raise FakeRequestError for a malformed one."""
        delay_ms = _header_number(headers, HEADER_DELAY_MS, default_delay_ms)
        return cls(
            reply=headers.get(HEADER_REPLY),
            cached_tokens=header_int(headers, HEADER_CACHED_TOKENS, 0),
            cache_write_tokens=header_int(headers, HEADER_CACHE_WRITE_TOKENS, 0),
            reasoning_tokens=header_int(headers, HEADER_REASONING_TOKENS, 0),
            delay_s=delay_ms / 1000.0,
            usage_overrides=_header_object(headers, HEADER_USAGE),
            framing=_framing(headers),
        )

    async def pace(self, deltas: int = 1) -> None:
        """Sleep the configured delay ``deltas`` times (no-op without a delay)."""
        if self.delay_s > 0 and deltas > 0:
            await asyncio.sleep(self.delay_s * deltas)


SCENARIO_KEY: Final = web.RequestKey("fake_provider_scenario", Scenario)


def scenario_of(request: web.Request) -> Scenario:
    """The scenario the provider middleware parsed from this request's headers."""
    return request[SCENARIO_KEY]


def header_int(headers: Mapping[str, str], name: str, default: int) -> int:
    """A non-negative integer header, ``default`` when absent; FakeRequestError when malformed."""
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise FakeRequestError(f"Header {name} must be a non-negative integer, got {raw!r}.") from None
    if value < 0:
        raise FakeRequestError(f"Header {name} must be a non-negative integer, got {raw!r}.")
    return value


def _framing(headers: Mapping[str, str]) -> StreamFraming:
    raw_ending = headers.get(HEADER_LINE_ENDING, "lf").strip().lower()
    if raw_ending not in _LINE_ENDINGS:
        raise FakeRequestError(f"Header {HEADER_LINE_ENDING} must be lf, crlf or cr, got {raw_ending!r}.")
    return StreamFraming(
        line_ending=_LINE_ENDINGS[raw_ending],
        write_bytes=header_int(headers, HEADER_WRITE_BYTES, 0),
        write_delay_s=_header_number(headers, HEADER_WRITE_DELAY_MS, 0.0) / 1000.0,
    )


def _header_object(headers: Mapping[str, str], name: str) -> JSONObject:
    raw = headers.get(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise FakeRequestError(f"Header {name} must be a JSON object, got {raw!r}.")
    return value


def _header_number(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise FakeRequestError(f"Header {name} must be a non-negative number, got {raw!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise FakeRequestError(f"Header {name} must be a non-negative number, got {raw!r}.")
    return value
