"""What of the client's request headers the proxy sends on to the provider."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from candela_proxy.upstream import _upstream_headers

pytestmark = pytest.mark.unit


def test_the_provider_gets_the_clients_headers_and_nothing_of_the_gateway_or_candela() -> None:
    received = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Authorization", "Bearer sk-provider"),
                ("anthropic-version", "2023-06-01"),
                ("Content-Type", "application/json"),
                ("X-Client-Request-Id", "mine-1"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("Candela-Auth", "Bearer cdl-key"),
                ("Helicone-User-Id", "alice"),
                ("Host", "127.0.0.1:7700"),
                ("Connection", "keep-alive"),
                ("X-Forwarded-For", "192.0.2.2"),
                ("X-Forwarded-Proto", "http"),
                ("x-envoy-external-address", "192.0.2.2"),
                ("x-envoy-expected-rq-timeout-ms", "15000"),
                ("X-Envoy-Attempt-Count", "1"),
                ("X-Request-ID", "9f3c1c1e-envoy"),
                ("Forwarded", "for=192.0.2.2"),
            ]
        )
    )
    assert _upstream_headers(received) == {
        "Authorization": "Bearer sk-provider",
        "anthropic-version": "2023-06-01",
        "Content-Type": "application/json",
        "X-Client-Request-Id": "mine-1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
