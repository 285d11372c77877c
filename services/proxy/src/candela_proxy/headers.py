"""The Candela request headers (each also accepted with the ``Helicone-`` prefix), parsed once per request.

A ``Helicone-*`` header Candela does not honour is refused (see :mod:`candela_proxy.helicone`), never dropped.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from candela_proxy import helicone
from candela_proxy.targets import TargetUrlError, parse_target_url
from candela_runtime.limits import MAX_CANDELA_HEADER_BYTES, MAX_PROMPT_INPUTS_BYTES, prompt_inputs_bytes

_PREFIXES = ("candela-", "helicone-")
_PROPERTY = "property-"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
MAX_PROPERTIES = 64
MAX_VALUE_LENGTH = 1024
# Fallback lists carry headers and body overrides, so they get more room than other values.
MAX_FALLBACKS_LENGTH = 16 * 1024
MAX_FALLBACKS = 8
# Prompt inputs are whole variable values (documents, transcripts), so they get the fallbacks' room too.
MAX_PROMPT_INPUTS_LENGTH = MAX_FALLBACKS_LENGTH
# Prompt versions are int32 in PromptsService.
MAX_PROMPT_VERSION = 2**31 - 1
# AWS session tokens (Bedrock's Candela-Aws-Session-Token) have no fixed size; STS's run to a few KiB.
MAX_AWS_SESSION_TOKEN_LENGTH = 8 * 1024
_LONG_VALUES = {
    "fallbacks": MAX_FALLBACKS_LENGTH,
    "prompt-inputs": MAX_PROMPT_INPUTS_LENGTH,
    "aws-session-token": MAX_AWS_SESSION_TOKEN_LENGTH,
}
MAX_RETRIES = 10
# ASCII digits only: str.isdigit() and \d also accept "²" or "٣", which int() then refuses or reads as a number.
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=([0-9]+)")
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
# An HTTP header name (RFC 9110 token); a fallback's header values may not hold control characters (CR, LF
# would split the header upstream).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Statuses that make the next fallback run when an entry names none (rate limits and server errors).
DEFAULT_FALLBACK_CODES = frozenset({429, *range(500, 600)})


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
    # Helicone-Prompt-Id alone only tags the request, as it does in Helicone (a migrating user's tags keep
    # working); it names the prompt to render when a version, environment or inputs are given with it.
    prompt_tag: str = ""
    # A version number (digits) when given; after rendering, the version that was rendered.
    prompt_version: str = ""
    prompt_environment: str = ""
    # Candela-Prompt-Inputs; None when the header is absent (the body may still carry `inputs`).
    prompt_inputs: dict[str, str] | None = None
    omit_request: bool = False
    omit_response: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    target_url: str = ""
    # Candela-Target-Provider: the provider name logged for target_url (else its host), lowercase.
    target_provider: str = ""
    # Candela-Model-Override: the model recorded and priced, whatever the body or the answer names.
    model_override: str = ""
    # Candela-Stream-Usage: false turns off asking OpenAI-format streams for their usage (on by default).
    stream_usage: bool = True
    cache: CachePolicy | None = None
    retry: RetryPolicy | None = None
    fallbacks: tuple[Fallback, ...] = ()
    rate_limit: RateLimitPolicy | None = None


@dataclass(frozen=True)
class CachePolicy:
    """Candela-Cache-Enabled and its companions."""

    max_age_s: int = 7 * 24 * 3600
    bucket_max_size: int = 1
    seed: str = ""
    # Candela-Cache-Ignore-Keys: top-level body keys left out of the cache key (Helicone's comma list).
    ignore_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """Candela-Retry-Enabled and its companions (Helicone's defaults, times in milliseconds)."""

    num: int = 3
    factor: float = 2.0
    min_timeout_ms: int = 1000
    max_timeout_ms: int = 10_000

    def delay_s(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` (1-based): min * factor^(attempt-1), capped at max."""
        return min(self.min_timeout_ms * self.factor ** (attempt - 1), self.max_timeout_ms) / 1000


@dataclass(frozen=True)
class Fallback:
    """One entry of Candela-Fallbacks: where to go next, on which statuses of the attempt before it."""

    target_url: str
    on_codes: frozenset[int] = DEFAULT_FALLBACK_CODES
    headers: tuple[tuple[str, str], ...] = ()
    body_overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RateLimitPolicy:
    """``<quota>;w=<seconds>[;u=request|cents][;s=user|<property>]`` (IETF RateLimit-Policy style)."""

    quota: int
    window_s: int
    unit: str = "request"
    segment: str = ""  # "" = the whole organization, "user", or a property name

    @property
    def header_value(self) -> str:
        """The policy as echoed in ``Candela-RateLimit-Policy``."""
        value = f"{self.quota};w={self.window_s};u={self.unit}"
        return f"{value};s={self.segment}" if self.segment else value


def _flag(raw_name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise HeaderError(f"header {raw_name} must be true or false, got {value!r}")


def ascii_int(text: str) -> int | None:
    """``text`` as a number when it is ASCII digits alone (no sign, no spaces inside), else None."""
    return int(text) if _DIGITS.fullmatch(text) else None


def _positive_int(raw_name: str, value: str, upper: int) -> int:
    number = ascii_int(value.strip())
    if number is None or not 0 < number <= upper:
        raise HeaderError(f"header {raw_name} must be an integer from 1 to {upper}, got {value!r}")
    return number


def _http_url(raw_name: str, value: str) -> str:
    try:
        return parse_target_url(value)
    except TargetUrlError as err:
        raise HeaderError(f"header {raw_name} {err}") from None


def parse_rate_limit_policy(raw_name: str, value: str) -> RateLimitPolicy:
    """Parses a policy strictly: every part must be known and well-formed."""
    parts = [part.strip() for part in value.split(";")]
    usage = (
        f"header {raw_name} must look like '<quota>;w=<seconds>[;u=request|cents][;s=user|<property>]', got {value!r}"
    )
    quota = ascii_int(parts[0])
    if quota is None or quota <= 0:
        raise HeaderError(f"{usage}: the quota must be a positive integer")
    window, unit, segment = 0, "request", ""
    seen: set[str] = set()
    for part in parts[1:]:
        key, sep, item = part.partition("=")
        key = key.strip().lower()
        item = item.strip()
        if not sep or key in seen or key not in {"w", "u", "s"}:
            raise HeaderError(f"{usage}: unexpected part {part!r}")
        seen.add(key)
        if key == "w":
            seconds = ascii_int(item)
            if seconds is None or not 1 <= seconds <= 31_536_000:
                raise HeaderError(f"{usage}: the window must be 1 to 31536000 seconds")
            window = seconds
        elif key == "u":
            if item.lower() not in {"request", "cents"}:
                raise HeaderError(f"{usage}: the unit must be 'request' or 'cents'")
            unit = item.lower()
        else:
            if not item or not re.fullmatch(r"[A-Za-z0-9_.-]+", item):
                raise HeaderError(f"{usage}: the segment must be 'user' or a property name")
            segment = item.lower()
    if not window:
        raise HeaderError(f"{usage}: the window 'w=<seconds>' is required")
    return RateLimitPolicy(quota=quota, window_s=window, unit=unit, segment=segment)


def _codes(raw_name: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise HeaderError(f"header {raw_name}: 'onCodes' must be a non-empty list")
    codes: set[int] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            codes.add(item)
        elif (
            isinstance(item, dict)
            and isinstance(item.get("from"), int)
            and isinstance(item.get("to"), int)
            and 100 <= item["from"] <= item["to"] <= 599
        ):
            codes.update(range(item["from"], item["to"] + 1))
        else:
            raise HeaderError(
                f'header {raw_name}: each \'onCodes\' item must be a status (100-599) or {{"from": a, "to": b}}'
            )
    return frozenset(codes)


def parse_fallbacks(raw_name: str, value: str) -> tuple[Fallback, ...]:
    """A JSON list of ``{"target-url", "headers"?, "onCodes"?, "bodyKeyOverride"?}`` (Helicone's shape)."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise HeaderError(f"header {raw_name} is not valid JSON") from None
    if not isinstance(document, list) or not document:
        raise HeaderError(f"header {raw_name} must be a non-empty JSON list of fallback targets")
    if len(document) > MAX_FALLBACKS:
        raise HeaderError(f"header {raw_name} lists more than {MAX_FALLBACKS} fallbacks")
    fallbacks = []
    for index, entry in enumerate(document):
        where = f"{raw_name}[{index}]"
        if not isinstance(entry, dict):
            raise HeaderError(f"header {where} must be an object with a 'target-url'")
        unknown = set(entry) - {"target-url", "headers", "onCodes", "bodyKeyOverride"}
        if unknown:
            raise HeaderError(f"header {where} has unknown keys {sorted(unknown)}")
        target = entry.get("target-url")
        if not isinstance(target, str):
            raise HeaderError(f"header {where} needs a 'target-url' string")
        headers = entry.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise HeaderError(f"header {where}: 'headers' must map names to strings")
        for header_name, header_value in headers.items():
            if not _TOKEN.fullmatch(header_name):
                raise HeaderError(f"header {where}: {header_name!r} is not a valid HTTP header name")
            if _CONTROL.search(header_value):
                raise HeaderError(
                    f"header {where}: the value of {header_name!r} holds a control character (CR, LF, NUL, ...)"
                )
        overrides = entry.get("bodyKeyOverride", {})
        if not isinstance(overrides, dict):
            raise HeaderError(f"header {where}: 'bodyKeyOverride' must be an object")
        fallbacks.append(
            Fallback(
                target_url=_http_url(f"{where} target-url", target),
                on_codes=_codes(where, entry["onCodes"]) if "onCodes" in entry else DEFAULT_FALLBACK_CODES,
                headers=tuple(headers.items()),
                body_overrides=tuple(overrides.items()),
            )
        )
    return tuple(fallbacks)


def parse_prompt_inputs(raw_name: str, value: str) -> dict[str, str]:
    """A JSON object of variable name -> string value (numbers are not coerced: the template holds text)."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise HeaderError(f"header {raw_name} is not valid JSON") from None
    return prompt_inputs_object(f"header {raw_name}", document)


def prompt_inputs_object(where: str, document: Any) -> dict[str, str]:
    """Checks that ``document`` (from a header or the body) maps variable names to strings, within the
    size every log of them must keep (:data:`~candela_runtime.limits.MAX_PROMPT_INPUTS_BYTES`)."""
    if not isinstance(document, dict):
        raise HeaderError(f"{where} must be a JSON object of variable name -> string value")
    for name, item in document.items():
        if not isinstance(item, str):
            raise HeaderError(f"{where}: the value of {name!r} must be a string, got {type(item).__name__}")
    size = prompt_inputs_bytes(document)
    if size > MAX_PROMPT_INPUTS_BYTES:
        raise HeaderError(
            f"{where} total {size} bytes (names and values, UTF-8), more than the limit of {MAX_PROMPT_INPUTS_BYTES}"
        )
    return document


def _require_utf8(raw_name: str, value: str) -> None:
    """Refuses a header whose name or value is not UTF-8.

    The HTTP server decodes header bytes as UTF-8 with ``surrogateescape``, so a byte that is not UTF-8
    (``caf\\xe9`` in Latin-1) arrives as a lone surrogate. Such text can be neither logged (protobuf strings
    are UTF-8) nor sent on, so the request is refused here, before anything goes upstream.
    """
    if not _utf8(raw_name):
        shown = raw_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise HeaderError(f"the header name {shown!r} is not valid UTF-8")
    if not _utf8(value):
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise HeaderError(f"header {raw_name} is not valid UTF-8, got {shown!r}")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_candela_headers(headers: Mapping[str, str]) -> CandelaHeaders:
    """Reads every ``Candela-*`` / ``Helicone-*`` header; raises :class:`HeaderError` on bad input."""
    parsed = CandelaHeaders()
    tuning: dict[str, tuple[str, str]] = {}
    candela_bytes = 0
    for raw_name, value in headers.items():
        ascii_only = raw_name.isascii() and value.isascii()
        if not ascii_only:
            _require_utf8(raw_name, value)
        name = raw_name.lower()
        if not name.startswith(_PREFIXES):
            continue
        candela_bytes += len(raw_name) + len(value) if ascii_only else len(raw_name.encode()) + len(value.encode())
        if candela_bytes > MAX_CANDELA_HEADER_BYTES:
            raise HeaderError(
                f"the Candela-* headers take more than {MAX_CANDELA_HEADER_BYTES} bytes together (names and values)"
            )
        option = name.split("-", 1)[1]
        limit = _LONG_VALUES.get(option, MAX_VALUE_LENGTH)
        if len(value) > limit:
            raise HeaderError(f"header {raw_name} is longer than {limit} characters")
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
            if name.startswith("helicone-"):
                parsed.prompt_tag = value
            else:
                parsed.prompt_id = value
        elif option == "prompt-version":
            parsed.prompt_version = str(_positive_int(raw_name, value, upper=MAX_PROMPT_VERSION))
        elif option == "prompt-environment":
            parsed.prompt_environment = value.strip()
        elif option == "prompt-inputs":
            parsed.prompt_inputs = parse_prompt_inputs(raw_name, value)
        elif option == "omit-request":
            parsed.omit_request = value.strip().lower() in _TRUE
        elif option == "omit-response":
            parsed.omit_response = value.strip().lower() in _TRUE
        elif option == "target-url":
            parsed.target_url = _http_url(raw_name, value)
        elif option == "target-provider":
            # Logged (lowercase, as Candela's own provider names) for a custom target; the built-in routes
            # know their provider, so there it changes nothing.
            parsed.target_provider = value.strip().lower()
        elif option == "model-override":
            parsed.model_override = value.strip()
        elif option == "stream-usage":
            parsed.stream_usage = _flag(raw_name, value)
        elif option == "fallbacks":
            parsed.fallbacks = parse_fallbacks(raw_name, value)
        elif option == "ratelimit-policy":
            parsed.rate_limit = parse_rate_limit_policy(raw_name, value)
        elif option.startswith(("cache-", "retry-")):
            tuning[option] = (raw_name, value)
        elif reason := helicone.refusal(raw_name, value):
            raise HeaderError(reason)
    _apply_tuning(parsed, tuning, headers)
    return parsed


def _apply_tuning(parsed: CandelaHeaders, tuning: dict[str, tuple[str, str]], headers: Mapping[str, str]) -> None:
    """Cache and retry settings, which only mean something together with their -Enabled header."""
    if not tuning:
        return
    known = {
        "cache-enabled",
        "cache-bucket-max-size",
        "cache-seed",
        "cache-ignore-keys",
        "cache-control",
        "retry-enabled",
        "retry-num",
        "retry-factor",
        "retry-min-timeout",
        "retry-max-timeout",
    }
    for option, (raw_name, _) in tuning.items():
        if option not in known:
            raise HeaderError(f"unknown header {raw_name}")
    if "cache-enabled" in tuning and _flag(*tuning["cache-enabled"]):
        max_age = CachePolicy.max_age_s
        # Helicone-Cache-Control (Helicone reads it as Cache-Control) wins over the standard header.
        control_name, cache_control = tuning.get("cache-control", ("Cache-Control", headers.get("cache-control", "")))
        if cache_control:
            match = _MAX_AGE.search(cache_control.lower())
            if match is None:
                raise HeaderError(f"header {control_name} must carry max-age=<seconds>, got {cache_control!r}")
            max_age = ascii_int(match.group(1)) or 0
            if not 0 < max_age <= 365 * 24 * 3600:
                raise HeaderError(f"header {control_name} max-age must be 1 to 31536000 seconds")
        bucket = 1
        if "cache-bucket-max-size" in tuning:
            bucket = _positive_int(*tuning["cache-bucket-max-size"], upper=20)
        seed = tuning["cache-seed"][1] if "cache-seed" in tuning else ""
        ignore_keys: tuple[str, ...] = ()
        if "cache-ignore-keys" in tuning:
            ignore_keys = tuple(key.strip() for key in tuning["cache-ignore-keys"][1].split(",") if key.strip())
        parsed.cache = CachePolicy(max_age_s=max_age, bucket_max_size=bucket, seed=seed, ignore_keys=ignore_keys)
    if "retry-enabled" in tuning and _flag(*tuning["retry-enabled"]):
        defaults = RetryPolicy()
        num = _positive_int(*tuning["retry-num"], upper=MAX_RETRIES) if "retry-num" in tuning else defaults.num
        factor = defaults.factor
        if "retry-factor" in tuning:
            raw_name, value = tuning["retry-factor"]
            # A plain decimal: float() would also take "nan", "1_0" or non-ASCII digits.
            factor = float(value.strip()) if _DECIMAL.fullmatch(value.strip()) else -1.0
            if not 1.0 <= factor <= 10.0:
                raise HeaderError(f"header {raw_name} must be a number from 1 to 10, got {value!r}")
        minimum = (
            _positive_int(*tuning["retry-min-timeout"], upper=600_000)
            if "retry-min-timeout" in tuning
            else defaults.min_timeout_ms
        )
        maximum = (
            _positive_int(*tuning["retry-max-timeout"], upper=600_000)
            if "retry-max-timeout" in tuning
            else max(defaults.max_timeout_ms, minimum)
        )
        if maximum < minimum:
            raise HeaderError("header Candela-Retry-Max-Timeout is smaller than Candela-Retry-Min-Timeout")
        parsed.retry = RetryPolicy(num=num, factor=factor, min_timeout_ms=minimum, max_timeout_ms=maximum)


def bearer_secret(value: str | None) -> str | None:
    """The key in ``Bearer <key>`` (the scheme is optional, as Helicone accepts)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    secret = rest.strip() if scheme.lower() == "bearer" else value.strip()
    return secret or None
