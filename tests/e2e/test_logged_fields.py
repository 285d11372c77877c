"""The LogRecord fields about routing and caching come back from GetRequest as the proxy recorded them:
target_url, every upstream attempt of a retried or fallback call, and what a cache hit saved."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import httpx
import pytest

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
# "Say <marker>" with the fake's token counting: 3 priming + 3 per message + 2 words; 12 reply words.
PROMPT_TOKENS = 3 + 3 + 2
REPLY_TOKENS = 12


def _post(stack: Stack, admin: Bootstrap, marker: str, via: str = "", **headers: str) -> httpx.Response:
    """A chat call through the gateway, or through the proxy at ``via``."""
    return httpx.post(
        f"{via or stack.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": f"Say {marker}"}]},
        headers={"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", **headers},
        timeout=30,
    )


def _attempts(record: log_record_pb2.LogRecord) -> list[tuple[str, int]]:
    return [(attempt.target_url, attempt.status_code) for attempt in record.attempts]


def test_retried_call_logs_every_attempt(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    key = uuid.uuid4().hex
    response = _post(
        stack,
        admin,
        key,
        **{
            "x-fake-fail-times": "2",
            "x-fake-key": key,
            "x-fake-status": "503",
            "Candela-Retry-Enabled": "true",
            "Candela-Retry-Min-Timeout": "10",
            "Candela-Retry-Max-Timeout": "50",
        },
    )
    assert response.status_code == 200
    record = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert _attempts(record) == [("", 503), ("", 503), ("", 200)]
    assert all(attempt.latency_ms >= 0 for attempt in record.attempts)
    assert record.target_url == ""  # the provider's default base URL answered
    assert not record.HasField("cost_saved_usd")
    assert record.trace_id == "", "the test stack does not trace, so the log names no trace"


def test_fallback_logs_the_target_that_answered(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, local_target_proxy: str
) -> None:
    assert stack.fake_provider_url is not None
    fallback_url = stack.fake_provider_url.rstrip("/")
    key = uuid.uuid4().hex
    fallbacks = [{"target-url": fallback_url, "onCodes": [500]}]
    response = _post(
        stack,
        admin,
        key,
        local_target_proxy,
        **{"x-fake-fail-times": "1", "x-fake-key": key, "Candela-Fallbacks": json.dumps(fallbacks)},
    )
    assert response.status_code == 200
    assert len(fake_requests(stack, x_fake_key=key)) == 2
    record = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert record.target_url == fallback_url
    assert _attempts(record) == [("", 500), (fallback_url, 200)]


def test_custom_target_is_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, local_target_proxy: str
) -> None:
    assert stack.fake_provider_url is not None
    target = stack.fake_provider_url.rstrip("/")
    response = _post(stack, admin, uuid.uuid4().hex, local_target_proxy, **{"Candela-Target-Url": target})
    assert response.status_code == 200
    record = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert (record.target_url, _attempts(record)) == (target, [(target, 200)])


def test_cache_hit_logs_what_it_saved(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    marker = uuid.uuid4().hex
    headers = {"Candela-Cache-Enabled": "true", "Cache-Control": "max-age=60"}
    miss = _post(stack, admin, marker, **headers)
    hit = _post(stack, admin, marker, **headers)
    assert (miss.headers["candela-cache"], hit.headers["candela-cache"]) == ("MISS", "HIT")
    first = wait_for_logged_request(query_stub, admin.api_key, miss.headers["candela-id"]).request
    cached = wait_for_logged_request(query_stub, admin.api_key, hit.headers["candela-id"]).request
    paid = expected_cost(MODEL, "openai", PROMPT_TOKENS, REPLY_TOKENS)
    assert Decimal(first.cost_usd) == paid
    assert not first.HasField("cost_saved_usd")
    assert Decimal(cached.cost_saved_usd) == paid
    assert Decimal(cached.cost_usd) == 0
    assert _attempts(first) == [("", 200)]
    assert _attempts(cached) == [], "a cache hit never went upstream"
