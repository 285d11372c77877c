"""Parsing of the Candela-* (and Helicone-*) request headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from candela_proxy.headers import HeaderError, bearer_secret, parse_candela_headers
from candela_runtime.limits import MAX_CANDELA_HEADER_BYTES

pytestmark = pytest.mark.unit


def test_reads_every_recorded_header_with_either_prefix() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {
                "Candela-Auth": "Bearer cdl_abc",
                "Helicone-User-Id": "alice",
                "candela-session-id": "s-1",
                "Candela-Session-Path": "/plan/step-1",
                "Candela-Session-Name": "Trip planner",
                "Candela-Property-Environment": "staging",
                "Helicone-Property-App": "mobile",
                "Candela-Prompt-Id": "support-reply",
                "Candela-Prompt-Version": "3",
                "Candela-Omit-Response": "true",
                "Candela-Request-Id": "0B2E3C1E-8E0B-4F5B-9C53-2C3B1F1D8A11",
                "Authorization": "Bearer sk-provider",
            }
        )
    )
    assert parsed.auth == "Bearer cdl_abc"
    assert parsed.user_id == "alice"
    assert (parsed.session_id, parsed.session_path, parsed.session_name) == ("s-1", "/plan/step-1", "Trip planner")
    assert parsed.properties == {"environment": "staging", "app": "mobile"}
    assert (parsed.prompt_id, parsed.prompt_version) == ("support-reply", "3")
    assert parsed.omit_response is True
    assert parsed.omit_request is False
    assert parsed.request_id == "0b2e3c1e-8e0b-4f5b-9c53-2c3b1f1d8a11"


def test_rejects_a_request_id_that_is_not_a_uuid() -> None:
    with pytest.raises(HeaderError, match="Candela-Request-Id must be a UUID"):
        parse_candela_headers(CIMultiDict({"Candela-Request-Id": "abc"}))


def test_rejects_an_empty_property_name() -> None:
    with pytest.raises(HeaderError, match="names no property"):
        parse_candela_headers(CIMultiDict({"Candela-Property-": "x"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Bearer cdl_x", "cdl_x"), ("bearer  cdl_x ", "cdl_x"), ("cdl_x", "cdl_x"), ("Bearer ", None), (None, None)],
)
def test_bearer_secret(value: str | None, expected: str | None) -> None:
    assert bearer_secret(value) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Candela-Retry-Num", "²"),
        ("Candela-Retry-Num", "٣"),
        ("Candela-Retry-Min-Timeout", "1²"),
        ("Candela-Retry-Factor", "\u0661.5"),  # ARABIC-INDIC DIGIT ONE
        ("Candela-Retry-Factor", "nan"),
        ("Candela-Retry-Factor", "1_5"),
        ("Candela-Cache-Bucket-Max-Size", "³"),
        ("Candela-Prompt-Version", "²"),
        ("Candela-Prompt-Version", "+2"),
        ("Candela-RateLimit-Policy", "²;w=60"),
        ("Candela-RateLimit-Policy", "10;w=٦٠"),
    ],
)
def test_numbers_are_ascii_digits_only(name: str, value: str) -> None:
    """Unicode digits pass str.isdigit() (and int() reads some of them): each is a HeaderError (a 400)."""
    headers = CIMultiDict({name: value, "Candela-Retry-Enabled": "true", "Candela-Cache-Enabled": "true"})
    with pytest.raises(HeaderError, match=name):
        parse_candela_headers(headers)


@pytest.mark.parametrize("max_age", ["max-age=²", "max-age=" + "9" * 5000, "max-age=٣٠"])
def test_a_cache_max_age_of_unicode_or_endless_digits_is_refused(max_age: str) -> None:
    with pytest.raises(HeaderError, match="Cache-Control"):
        parse_candela_headers(CIMultiDict({"Candela-Cache-Enabled": "true", "Cache-Control": max_age}))


def test_ascii_numbers_still_parse() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {
                "Candela-Retry-Enabled": "true",
                "Candela-Retry-Num": " 2 ",
                "Candela-Retry-Factor": "1.5",
                "Candela-Prompt-Version": "7",
                "Candela-RateLimit-Policy": "10;w=60",
                "Candela-Cache-Enabled": "true",
                "Cache-Control": "max-age=60",
            }
        )
    )
    assert parsed.retry is not None
    assert (parsed.retry.num, parsed.retry.factor) == (2, 1.5)
    assert parsed.prompt_version == "7"
    assert parsed.rate_limit is not None
    assert (parsed.rate_limit.quota, parsed.rate_limit.window_s) == (10, 60)
    assert parsed.cache is not None
    assert parsed.cache.max_age_s == 60


@pytest.mark.parametrize(
    "headers",
    ['{"X-Extra": "a\\r\\nX-Injected: 1"}', '{"X-Extra": "a\\nb"}', '{"X-Extra": "a\\u0000"}', '{"X-A\\r\\nB": "v"}'],
)
def test_a_fallback_header_with_a_line_break_or_control_character_is_refused(headers: str) -> None:
    fallbacks = f'[{{"target-url": "https://api.example.com", "headers": {headers}}}]'
    with pytest.raises(HeaderError, match=r"Candela-Fallbacks\[0\]"):
        parse_candela_headers(CIMultiDict({"Candela-Fallbacks": fallbacks}))


def test_fallback_headers_with_ordinary_values_pass() -> None:
    fallbacks = '[{"target-url": "https://api.example.com", "headers": {"Authorization": "Bearer sk-\\té"}}]'
    parsed = parse_candela_headers(CIMultiDict({"Candela-Fallbacks": fallbacks}))
    assert parsed.fallbacks[0].headers == (("Authorization", "Bearer sk-\té"),)


def _as_received(raw: bytes) -> str:
    """A header's bytes as aiohttp's HTTP parser hands them over."""
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Candela-User-Id", b"caf\xe9"),
        ("Helicone-User-Id", b"caf\xe9"),
        ("Candela-Property-Team", b"\xff"),
        ("Candela-Session-Name", b"caf\xc3"),
        ("Candela-Session-Path", b"/a/\xe9"),
        ("Candela-Prompt-Id", b"p\xe9"),
        ("X-Anything-Forwarded", b"\xe9"),
    ],
)
def test_a_header_value_that_is_not_utf8_is_refused(name: str, value: bytes) -> None:
    with pytest.raises(HeaderError, match=f"{name} is not valid UTF-8"):
        parse_candela_headers(CIMultiDict({name: _as_received(value)}))


def test_a_header_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(HeaderError, match=r"header name 'Candela-Property-caf\\\\xe9' is not valid UTF-8"):
        parse_candela_headers(CIMultiDict({_as_received(b"Candela-Property-caf\xe9"): "x"}))


def test_utf8_header_values_are_kept() -> None:
    parsed = parse_candela_headers(
        CIMultiDict({"Candela-User-Id": _as_received("café".encode()), "Candela-Property-Ville": "Zürich"})
    )
    assert parsed.user_id == "café"
    assert parsed.properties == {"ville": "Zürich"}


def test_candela_headers_larger_together_than_a_log_keeps_are_refused() -> None:
    """Each property fits, but together they would make the log's metadata too large for ingest."""
    properties = {f"Candela-Property-P{index}-{'n' * 900}": "€" * 1000 for index in range(30)}
    with pytest.raises(HeaderError, match=f"more than {MAX_CANDELA_HEADER_BYTES} bytes together"):
        parse_candela_headers(CIMultiDict(properties))
    fitting = dict(list(properties.items())[:15])
    assert len(parse_candela_headers(CIMultiDict(fitting)).properties) == 15
