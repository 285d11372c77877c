"""The Envoy gateway as users meet it: body limits, unknown routes, access logs, long streams, health checks."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2
from candela_stack import envoy_config
from candela_stack.stack import Bootstrap, Component, Stack
from tests.e2e.conftest import bearer
from tests.e2e.proxy_support import wait_until

pytestmark = pytest.mark.e2e

ENVOY_DEFAULT_ROUTE_TIMEOUT_S = 15.0
"""What Envoy would cut a response at if a route kept its default timeout."""


def _client(stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack, **headers: str) -> openai.OpenAI:
    return closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-provider-key-never-logged",
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", **headers},
            max_retries=0,
            timeout=60,
        )
    )


def test_a_body_above_the_gateways_limit_gets_a_413_in_openais_shape(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    client = _client(stack, admin, closing)
    over_envoy = envoy_config.BodyLimits().proxy + envoy_config.BODY_LIMIT_HEADROOM + 1024
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * over_envoy}])
    assert refused.value.status_code == 413
    assert refused.value.response.headers["content-type"] == "application/json"
    error = refused.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_payload_too_large")
    # Just above the proxy's own limit (below Envoy's backstop) the proxy answers, in the same shape.
    over_proxy = envoy_config.BodyLimits().proxy + 1024
    with pytest.raises(openai.APIStatusError) as refused_by_proxy:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * over_proxy}])
    assert refused_by_proxy.value.status_code == 413
    assert refused_by_proxy.value.response.json()["error"]["code"] == "request_too_large"


def test_unknown_routes_get_a_clear_4xx(stack: Stack, admin: Bootstrap, gateway_channel: grpc.Channel) -> None:
    headers = {"Candela-Auth": f"Bearer {admin.api_key}"}
    # Outside every provider prefix and REST mapping: the proxy (the catch-all) says which paths exist.
    for path in ("/v2/request/query", "/admin"):
        answer = httpx.post(f"{stack.gateway_url}{path}", json={}, headers=headers, timeout=10)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("application/json")
        error = answer.json()["error"]
        assert path in error["message"]
        assert error["code"] == "unknown_route"
    # Under a provider prefix, an unknown path is the provider's to judge: its own 404, passed through.
    passed_through = httpx.post(f"{stack.gateway_url}/v1/no-such-thing", json={}, headers=headers, timeout=10)
    assert passed_through.status_code == 404
    assert "error" in passed_through.json()
    unknown_service = gateway_channel.unary_unary(
        "/candela.billing.v1.BillingService/GetInvoice", request_serializer=bytes, response_deserializer=bytes
    )
    with pytest.raises(grpc.RpcError) as failure:
        unknown_service(b"", timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no such gRPC service" in (failure.value.details() or "")
    unknown_method = gateway_channel.unary_unary(
        "/candela.query.v1.QueryService/DropEverything", request_serializer=bytes, response_deserializer=bytes
    )
    with pytest.raises(grpc.RpcError) as failure:
        unknown_method(b"", metadata=bearer(admin.api_key), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_proxys_operational_endpoints_are_not_served_at_the_gateway(stack: Stack) -> None:
    for path in ("/metrics", "/healthz"):
        outside = httpx.get(f"{stack.gateway_url}{path}", timeout=10)
        assert outside.status_code == 404, path
        assert outside.headers["content-type"].startswith("application/json")
        assert "candela_proxy" not in outside.text
        assert "error" in outside.json()
    # The operator's scraper reaches them on the proxy's own loopback port.
    inside = httpx.get(f"{stack.proxy_url}/metrics", timeout=10)
    assert inside.status_code == 200
    assert "candela_proxy_requests_total" in inside.text


def _access_log_lines(stack: Stack) -> list[dict[str, Any]]:
    path: Path = stack.log_dir / "envoy-access.log"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_access_log_has_a_json_line_per_request_and_no_secret(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack, gateway_channel: grpc.Channel
) -> None:
    client = _client(stack, admin, closing, **{"x-api-key": "sk-ant-never-logged"})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "log me"}]
    )
    candela_id = raw.headers["candela-id"]
    # A gRPC call presenting the key as metadata is logged too, without it.
    with contextlib.suppress(grpc.RpcError):
        grpc_stub = gateway_channel.unary_unary(
            "/candela.query.v1.QueryService/GetRequest",
            request_serializer=query_service_pb2.GetRequestRequest.SerializeToString,
            response_deserializer=bytes,
        )
        grpc_stub(query_service_pb2.GetRequestRequest(request_id=candela_id), metadata=bearer(admin.api_key), timeout=5)

    def logged() -> bool:
        return any(line.get("candela_id") == candela_id for line in _access_log_lines(stack))

    wait_until(logged, timeout_s=10, what="the access log line (Envoy flushes it within a second)")
    line = next(line for line in _access_log_lines(stack) if line.get("candela_id") == candela_id)
    assert (line["method"], line["path"], line["status"], line["upstream_cluster"]) == (
        "POST",
        "/v1/chat/completions",
        200,
        "proxy",
    )
    assert line["request_id"]
    assert line["bytes_received"] > 0
    assert line["bytes_sent"] > 0
    assert isinstance(line["duration_ms"], int)
    wait_until(
        lambda: any(entry.get("upstream_cluster") == "query" for entry in _access_log_lines(stack)),
        timeout_s=10,
        what="the gRPC call's access log line",
    )
    text = (stack.log_dir / "envoy-access.log").read_text()
    for secret in (admin.api_key, "sk-provider-key-never-logged", "sk-ant-never-logged"):
        assert secret not in text


def test_a_stream_longer_than_any_route_timeout_is_not_cut(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    words = 16  # 8 deltas of 2 words, ~2.1 s apart: ~17 s in all, silent for 2 s at a time
    client = _client(stack, admin, closing, **{"x-fake-delay-ms": "2100", "x-fake-reply": " ".join(["tick"] * words)})
    began = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"slow {uuid.uuid4().hex}"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    took = time.monotonic() - began
    assert text.split() == ["tick"] * words
    assert took > ENVOY_DEFAULT_ROUTE_TIMEOUT_S, f"the stream took only {took:.1f} s: it proves nothing"


def _query_health(stack: Stack) -> str:
    """The query endpoint's health per Envoy's admin /clusters: "healthy" or the failed check flags."""
    statuses = httpx.get(f"{stack.envoy_admin_url}/clusters?format=json", timeout=5).json()["cluster_statuses"]
    (query,) = [cluster for cluster in statuses if cluster["name"] == "query"]
    (host,) = query["host_statuses"]
    failed = sorted(flag for flag, value in host["health_status"].items() if value is True)
    return ",".join(failed) or "healthy"


def test_health_checks_mark_a_stopped_service_unhealthy_and_a_restarted_one_healthy(stack: Stack) -> None:
    assert _query_health(stack) == "healthy"
    stack.stop_component(Component.QUERY)
    try:
        wait_until(lambda: "failed_active_health_check" in _query_health(stack), timeout_s=15, what="query unhealthy")
    finally:
        stack.start_component(Component.QUERY)
    began = time.monotonic()
    wait_until(lambda: _query_health(stack) == "healthy", timeout_s=15, what="query healthy again")
    assert time.monotonic() - began < 5, "Envoy probes an unhealthy upstream every second"
