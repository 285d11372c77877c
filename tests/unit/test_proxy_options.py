"""The control headers (cache, retries, fallbacks, rate limits, targets) parsed strictly, and the stream filter."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from multidict import CIMultiDict

from candela_proxy.headers import (
    DEFAULT_FALLBACK_CODES,
    CachePolicy,
    HeaderError,
    RateLimitPolicy,
    RetryPolicy,
    parse_candela_headers,
)
from candela_proxy.upstream import _retry_after_s

pytestmark = pytest.mark.unit


def _parse(**headers: str) -> object:
    return parse_candela_headers(CIMultiDict(headers))


def test_cache_settings_with_either_prefix() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {
                "Helicone-Cache-Enabled": "true",
                "Cache-Control": "public, max-age=120",
                "Candela-Cache-Bucket-Max-Size": "3",
                "Candela-Cache-Seed": "s1",
            }
        )
    )
    assert parsed.cache == CachePolicy(max_age_s=120, bucket_max_size=3, seed="s1")


def test_cache_settings_mean_nothing_without_cache_enabled() -> None:
    assert parse_candela_headers(CIMultiDict({"Candela-Cache-Seed": "s1"})).cache is None
    assert parse_candela_headers(CIMultiDict({"Candela-Cache-Enabled": "false"})).cache is None


def test_retry_settings_and_backoff() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {
                "Candela-Retry-Enabled": "true",
                "Candela-Retry-Num": "4",
                "Candela-Retry-Factor": "3",
                "Candela-Retry-Min-Timeout": "100",
                "Candela-Retry-Max-Timeout": "500",
            }
        )
    )
    assert parsed.retry == RetryPolicy(num=4, factor=3.0, min_timeout_ms=100, max_timeout_ms=500)
    assert [parsed.retry.delay_s(n) for n in (1, 2, 3)] == [0.1, 0.3, 0.5]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100;w=60", RateLimitPolicy(100, 60)),
        ("5;w=3600;u=cents;s=user", RateLimitPolicy(5, 3600, "cents", "user")),
        ("10; w=60; s=Tenant", RateLimitPolicy(10, 60, "request", "tenant")),
    ],
)
def test_rate_limit_policy(value: str, expected: RateLimitPolicy) -> None:
    assert parse_candela_headers(CIMultiDict({"Candela-RateLimit-Policy": value})).rate_limit == expected


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("abc;w=60", "quota must be a positive integer"),
        ("0;w=60", "quota must be a positive integer"),
        ("10", "window 'w=<seconds>' is required"),
        ("10;w=0", "window must be"),
        ("10;w=60;u=tokens", "unit must be 'request' or 'cents'"),
        ("10;w=60;x=1", "unexpected part"),
        ("10;w=60;w=30", "unexpected part"),
        ("10;w=60;s=", "segment must be"),
    ],
)
def test_malformed_rate_limit_policies_say_what_is_wrong(value: str, complaint: str) -> None:
    with pytest.raises(HeaderError, match="Candela-RateLimit-Policy") as caught:
        parse_candela_headers(CIMultiDict({"Candela-RateLimit-Policy": value}))
    assert complaint in str(caught.value)


def test_fallbacks() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {
                "Candela-Fallbacks": '[{"target-url": "https://api.groq.com/openai/", "onCodes": [429, {"from": 500,'
                ' "to": 502}], "headers": {"Authorization": "Bearer gsk"}, "bodyKeyOverride": {"model": "llama"}},'
                ' {"target-url": "http://127.0.0.1:8000"}]'
            }
        )
    )
    first, second = parsed.fallbacks
    assert first.target_url == "https://api.groq.com/openai"
    assert first.on_codes == {429, 500, 501, 502}
    assert first.headers == (("Authorization", "Bearer gsk"),)
    assert first.body_overrides == (("model", "llama"),)
    assert second.on_codes == DEFAULT_FALLBACK_CODES


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"target-url": "http://x"}', "non-empty JSON list"),
        ('[{"url": "http://x"}]', "unknown keys"),
        ('[{"target-url": "ftp://x"}]', "must be an http(s) URL"),
        ('[{"target-url": "http://x", "onCodes": [999]}]', "each 'onCodes' item"),
        ('[{"target-url": "http://x", "headers": {"a": 1}}]', "'headers' must map names to strings"),
    ],
)
def test_malformed_fallbacks_say_what_is_wrong(value: str, complaint: str) -> None:
    with pytest.raises(HeaderError, match="Candela-Fallbacks") as caught:
        parse_candela_headers(CIMultiDict({"Candela-Fallbacks": value}))
    assert complaint in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "complaint"),
    [
        ({"Candela-Target-Url": "not a url"}, "must be an http(s) URL"),
        ({"Candela-Stream-Usage": "maybe"}, "must be true or false"),
        ({"Candela-Cache-Enabled": "true", "Cache-Control": "no-store"}, "max-age"),
        ({"Candela-Cache-Enabled": "true", "Candela-Cache-Bucket-Max-Size": "0"}, "from 1 to 20"),
        ({"Candela-Retry-Enabled": "true", "Candela-Retry-Num": "x"}, "from 1 to 10"),
        ({"Candela-Retry-Enabled": "true", "Candela-Retry-Factor": "0.5"}, "from 1 to 10"),
        ({"Candela-Cache-Sead": "1"}, "unknown header Candela-Cache-Sead"),
    ],
)
def test_other_malformed_control_headers(headers: dict[str, str], complaint: str) -> None:
    with pytest.raises(HeaderError) as caught:
        parse_candela_headers(CIMultiDict(headers))
    assert complaint in str(caught.value)


def test_target_url_and_stream_usage() -> None:
    parsed = parse_candela_headers(
        CIMultiDict({"Candela-Target-Url": "https://api.groq.com/openai/", "Helicone-Stream-Usage": "true"})
    )
    assert (parsed.target_url, parsed.stream_usage) == ("https://api.groq.com/openai", True)


@pytest.mark.parametrize(("headers", "asked"), [({}, True), ({"Candela-Stream-Usage": "false"}, False)])
def test_stream_usage_is_on_unless_turned_off(headers: dict[str, str], asked: bool) -> None:
    assert parse_candela_headers(CIMultiDict(headers)).stream_usage is asked


@pytest.mark.parametrize(("value", "seconds"), [("nan", 0.0), ("-3", 0.0), ("inf", 10.0), ("2.5", 2.5), ("x", 0.0)])
def test_a_providers_retry_after_is_a_bounded_wait(value: str, seconds: float) -> None:
    """A provider's Retry-After is waited out up to the retry policy's longest wait; "nan" is no wait at all
    (asyncio.sleep(nan) would never return, hanging the request)."""
    upstream = cast(aiohttp.ClientResponse, SimpleNamespace(headers={"Retry-After": value}))
    assert _retry_after_s(upstream, RetryPolicy(max_timeout_ms=10_000)) == seconds
