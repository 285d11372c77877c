"""Every documented Helicone request header: honoured as its Candela twin, or refused with a 400 naming it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from candela_proxy import bedrock
from candela_proxy.cache import cache_key
from candela_proxy.headers import CachePolicy, CandelaHeaders, HeaderError, parse_candela_headers
from candela_proxy.helicone import HELICONE_HEADERS, HeliconeHeader, Support, mirror_response_headers

pytestmark = pytest.mark.unit

README = Path(__file__).parents[2] / "services" / "proxy" / "README.md"
TARGET = "https://api.groq.com/openai"
REQUEST_ID = "0b2e3c1e-8e0b-4f5b-9c53-2c3b1f1d8a11"


def _cache(parsed: CandelaHeaders) -> CachePolicy:
    """The cache policy, or one no case expects when the cache is off."""
    return parsed.cache or CachePolicy(max_age_s=-1)


# Each honoured header: (headers sent, what the parsed request must show). The headers sent beside the one
# under test are only what it needs to mean something (a -Enabled switch, a target).
HONOURED: dict[str, tuple[dict[str, str], Callable[[CandelaHeaders], object]]] = {
    "Helicone-Auth": ({"Helicone-Auth": "Bearer cdl_x"}, lambda p: p.auth == "Bearer cdl_x"),
    "Helicone-Target-Url": ({"Helicone-Target-Url": TARGET}, lambda p: p.target_url == TARGET),
    "Helicone-Target-Provider": (
        {"Helicone-Target-Url": TARGET, "Helicone-Target-Provider": "Groq"},
        lambda p: p.target_provider == "groq",
    ),
    "Helicone-Request-Id": ({"Helicone-Request-Id": REQUEST_ID}, lambda p: p.request_id == REQUEST_ID),
    "Helicone-Model-Override": (
        {"Helicone-Model-Override": "gpt-4o-mini"},
        lambda p: p.model_override == "gpt-4o-mini",
    ),
    "Helicone-User-Id": ({"Helicone-User-Id": "alice"}, lambda p: p.user_id == "alice"),
    "Helicone-Session-Id": ({"Helicone-Session-Id": "s-1"}, lambda p: p.session_id == "s-1"),
    "Helicone-Session-Path": ({"Helicone-Session-Path": "/a/b"}, lambda p: p.session_path == "/a/b"),
    "Helicone-Session-Name": ({"Helicone-Session-Name": "Trip"}, lambda p: p.session_name == "Trip"),
    "Helicone-Property-[Name]": ({"Helicone-Property-App": "mobile"}, lambda p: p.properties == {"app": "mobile"}),
    "Helicone-Prompt-Id": ({"Helicone-Prompt-Id": "story"}, lambda p: (p.prompt_tag, p.prompt_id) == ("story", "")),
    "Helicone-Prompt-Version": ({"Helicone-Prompt-Version": "3"}, lambda p: p.prompt_version == "3"),
    "Helicone-Omit-Request": ({"Helicone-Omit-Request": "true"}, lambda p: p.omit_request),
    "Helicone-Omit-Response": ({"Helicone-Omit-Response": "true"}, lambda p: p.omit_response),
    "Helicone-Cache-Enabled": ({"Helicone-Cache-Enabled": "true"}, lambda p: _cache(p) == CachePolicy()),
    "Helicone-Cache-Bucket-Max-Size": (
        {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Bucket-Max-Size": "5"},
        lambda p: _cache(p).bucket_max_size == 5,
    ),
    "Helicone-Cache-Seed": (
        {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Seed": "user-1"},
        lambda p: _cache(p).seed == "user-1",
    ),
    "Helicone-Cache-Ignore-Keys": (
        {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Ignore-Keys": "request_id, timestamp,"},
        lambda p: _cache(p).ignore_keys == ("request_id", "timestamp"),
    ),
    "Helicone-Cache-Control": (
        {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Control": "max-age=3600"},
        lambda p: _cache(p).max_age_s == 3600,
    ),
    "Helicone-Retry-Enabled": ({"Helicone-Retry-Enabled": "true"}, lambda p: p.retry is not None),
    "Helicone-Retry-Num": (
        {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Num": "5"},
        lambda p: p.retry is not None and p.retry.num == 5,
    ),
    "Helicone-Retry-Factor": (
        {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Factor": "1.5"},
        lambda p: p.retry is not None and p.retry.factor == 1.5,
    ),
    "Helicone-Retry-Min-Timeout": (
        {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Min-Timeout": "500"},
        lambda p: p.retry is not None and p.retry.min_timeout_ms == 500,
    ),
    "Helicone-Retry-Max-Timeout": (
        {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Max-Timeout": "20000"},
        lambda p: p.retry is not None and p.retry.max_timeout_ms == 20_000,
    ),
    "Helicone-Fallbacks": (
        {"Helicone-Fallbacks": orjson.dumps([{"target-url": TARGET, "onCodes": [500]}]).decode()},
        lambda p: [f.target_url for f in p.fallbacks] == [TARGET],
    ),
    "Helicone-RateLimit-Policy": (
        {"Helicone-RateLimit-Policy": "10;w=60;s=user"},
        lambda p: p.rate_limit is not None and p.rate_limit.header_value == "10;w=60;u=request;s=user",
    ),
    "Helicone-Stream-Usage": ({"Helicone-Stream-Usage": "false"}, lambda p: p.stream_usage is False),
}


def test_the_table_and_these_cases_name_the_same_headers() -> None:
    honoured = {header.name for header in HELICONE_HEADERS if header.support is Support.HONOURED}
    # Helicone-OpenAI-Api-Base is read by the Azure route, not CandelaHeaders: tests/unit/test_proxy_named_routes.py.
    assert honoured - {"Helicone-OpenAI-Api-Base"} == set(HONOURED), "every honoured header has a case, only those"


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_an_honoured_header_sets_its_candela_twin(name: str) -> None:
    sent, check = HONOURED[name]
    parsed = parse_candela_headers(CIMultiDict(sent))
    assert check(parsed), f"{name} did not map to its Candela twin: {parsed}"


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_an_honoured_header_is_ignored_when_absent(name: str) -> None:
    """The baseline: the case's check fails without the header (so a case cannot pass by default)."""
    sent, check = HONOURED[name]
    header_name = name.replace("[Name]", "App")
    without = {key: value for key, value in sent.items() if key != header_name}
    if name == "Helicone-Target-Provider":
        without = {"Helicone-Target-Url": TARGET}
    assert without != sent
    assert not check(parse_candela_headers(CIMultiDict(without)))


REFUSED = [header for header in HELICONE_HEADERS if header.support is Support.REFUSED]


@pytest.mark.parametrize("header", REFUSED, ids=lambda header: header.name)
def test_a_refused_header_is_a_400_naming_it_and_saying_why(header: HeliconeHeader) -> None:
    with pytest.raises(HeaderError) as refused:
        parse_candela_headers(CIMultiDict({"Helicone-Auth": "Bearer cdl_x", header.name: "true"}))
    assert header.name in str(refused.value)
    assert header.behaviour in str(refused.value)


@pytest.mark.parametrize("header", [h for h in REFUSED if h.switch], ids=lambda header: header.name)
def test_a_refused_switch_turned_off_is_accepted(header: HeliconeHeader) -> None:
    parsed = parse_candela_headers(CIMultiDict({header.name: "false"}))
    assert parsed.auth is None


def test_the_candela_twin_of_a_refused_header_is_refused_and_other_candela_headers_pass() -> None:
    with pytest.raises(HeaderError, match="header Candela-Moderations-Enabled is not supported by Candela"):
        parse_candela_headers(CIMultiDict({"candela-moderations-enabled": "true"}))
    assert parse_candela_headers(CIMultiDict({"Candela-Moderations-Enabled": "false"})).auth is None
    assert parse_candela_headers(CIMultiDict({"Candela-Something-Read-Elsewhere": "x"})).auth is None


def test_an_undocumented_helicone_header_is_refused_too() -> None:
    with pytest.raises(HeaderError, match="Helicone-Frobnicate is not a Helicone header Candela knows"):
        parse_candela_headers(CIMultiDict({"Helicone-Frobnicate": "1"}))


def test_the_helicone_twins_of_the_headers_bedrock_reads_itself_are_accepted() -> None:
    """Bedrock reads its credentials, region and signed host from the request, not through the parser."""
    read = [
        name
        for names in (
            bedrock._ACCESS_KEY_HEADERS,
            bedrock._SECRET_HEADERS,
            bedrock._TOKEN_HEADERS,
            bedrock._REGION_HEADERS,
            bedrock._HOST_HEADERS,
        )
        for name in names
        if name.startswith("helicone-")
    ]
    assert len(read) == 5
    for name in read:
        assert parse_candela_headers(CIMultiDict({name: "us-east-1"})).auth is None, name


def test_a_target_provider_without_a_target_is_accepted_as_helicone_users_send_it() -> None:
    parsed = parse_candela_headers(CIMultiDict({"Helicone-Target-Provider": "Google"}))
    assert (parsed.target_provider, parsed.target_url) == ("google", "")


def test_the_readme_table_lists_every_header() -> None:
    readme = README.read_text()
    for header in HELICONE_HEADERS:
        assert f"| `{header.name}` |" in readme, f"{header.name} is not in the proxy README's Helicone table"


def test_helicone_cache_control_wins_over_cache_control_and_is_checked() -> None:
    parsed = parse_candela_headers(
        CIMultiDict(
            {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Control": "max-age=60", "Cache-Control": "max-age=5"}
        )
    )
    assert _cache(parsed).max_age_s == 60
    with pytest.raises(HeaderError, match="Helicone-Cache-Control must carry max-age"):
        parse_candela_headers(CIMultiDict({"Helicone-Cache-Enabled": "true", "Helicone-Cache-Control": "no-store"}))


def _key(policy: CachePolicy, body: dict[str, object]) -> str:
    url = "https://api.openai.com/v1/chat/completions"
    return cache_key("org", policy, "POST", url, orjson.dumps(body), CIMultiDictProxy(CIMultiDict()))


def test_ignored_keys_are_left_out_of_the_cache_key_and_only_they() -> None:
    policy = CachePolicy(ignore_keys=("request_id", "timestamp"))
    first = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "request_id": "a", "timestamp": 1}
    assert _key(policy, first) == _key(policy, {**first, "request_id": "b", "timestamp": 2})
    assert _key(policy, first) == _key(policy, {k: v for k, v in first.items() if k != "timestamp"})
    assert _key(policy, first) != _key(policy, {**first, "model": "gpt-4o"})
    assert _key(CachePolicy(), first) != _key(CachePolicy(), {**first, "request_id": "b"})


def test_helicone_twins_of_the_cache_and_rate_limit_response_headers() -> None:
    headers = {"Candela-Cache": "HIT", "Candela-RateLimit-Limit": "10", "Candela-RateLimit-Remaining": "9"}
    mirror_response_headers(headers)
    assert headers["Helicone-Cache"] == "HIT"
    assert (headers["Helicone-RateLimit-Limit"], headers["Helicone-RateLimit-Remaining"]) == ("10", "9")
    assert "Helicone-RateLimit-Policy" not in headers
