"""URLs lose their credentials (query parameters, userinfo) before any log line, span or record sees them."""

from __future__ import annotations

import pytest

from candela_runtime.redaction import is_secret_name, redact_query, redact_url, redact_urls_in

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "KEY",
        "api_key",
        "api-key",
        "apikey",
        "ApiKey",
        "token",
        "access_token",
        "sig",
        "signature",
        "x-goog-api-key",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "password",
        "secret",
        "client_secret",
        "subscription-key",
    ],
)
def test_credential_parameter_names_are_recognised_whatever_their_case(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["model", "api-version", "alt", "stream", "limit", "page_token_count_x"])
def test_ordinary_parameters_are_kept(name: str) -> None:
    assert not is_secret_name(name)


def test_only_the_secret_values_of_a_query_change() -> None:
    query = "alt=sse&key=AIza-secret&api-version=2024-10-21&Token=t0k3n&flag&sig="
    assert redact_query(query) == "alt=sse&key=REDACTED&api-version=2024-10-21&Token=REDACTED&flag&sig=REDACTED"


def test_a_url_loses_its_userinfo_and_secret_parameters() -> None:
    url = "https://user:hunter2@example.com:8443/v1beta/models/gemini:generate?key=AIza-secret&alt=sse#access_token=t"
    redacted = redact_url(url)
    assert (
        redacted
        == "https://REDACTED@example.com:8443/v1beta/models/gemini:generate?key=REDACTED&alt=sse#access_token=REDACTED"
    )
    for secret in ("hunter2", "AIza-secret", "user"):
        assert secret not in redacted


def test_a_url_without_secrets_is_unchanged() -> None:
    for url in ["https://api.openai.com/v1", "http://127.0.0.1:8000", "/v1/chat/completions?stream=true", ""]:
        assert redact_url(url) == url


def test_urls_inside_free_text_are_redacted_even_when_malformed() -> None:
    message = (
        "upstream request failed: InvalidURL: http://[::1?key=s3cr3t; "
        "ClientConnectorError: Cannot connect to https://u:p4ss@host.example/v1?api_key=k3y (refused)"
    )
    redacted = redact_urls_in(message)
    for secret in ("s3cr3t", "p4ss", "k3y"):
        assert secret not in redacted
    assert redacted.startswith("upstream request failed: InvalidURL: http://[::1?key=REDACTED")
    assert redact_urls_in("no URL here, key=value stays") == "no URL here, key=value stays"
