"""Parsing of the Candela-* (and Helicone-*) request headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from candela_proxy.headers import HeaderError, bearer_secret, parse_candela_headers

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
