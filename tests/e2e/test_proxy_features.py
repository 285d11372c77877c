"""The proxy's features as a user meets them through the gateway: cache, rate limits, retries, fallbacks,
custom targets, stream usage, a client leaving mid-stream, bad control headers and metrics."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack.fake_provider import redacted_credential
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests, metric_value, wait_until

pytestmark = pytest.mark.e2e

PROMPT_TOKENS = 3 + 3 + 2
REPLY_TOKENS = 12


def _chat(marker: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {marker}"}], **extra}


def _headers(admin: Bootstrap, **extra: str) -> dict[str, str]:
    return {"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", **extra}


def _post(
    stack: Stack, body: object, headers: dict[str, str], path: str = "/v1/chat/completions", via: str = ""
) -> httpx.Response:
    """A call through the gateway, or through the proxy at ``via``."""
    return httpx.post(f"{via or stack.gateway_url}{path}", json=body, headers=headers, timeout=30)


def test_cache_hit_replays_the_answer_and_is_logged_as_cached(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    marker = uuid.uuid4().hex
    headers = _headers(
        admin, **{"Candela-Cache-Enabled": "true", "Cache-Control": "max-age=60", "x-test-marker": marker}
    )
    first = _post(stack, _chat(marker), headers)
    second = _post(stack, _chat(marker), headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["candela-cache"], second.headers["candela-cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert len(fake_requests(stack, x_test_marker=marker)) == 1
    # Another seed is another cache.
    other = _post(stack, _chat(marker), {**headers, "Candela-Cache-Seed": "other"})
    assert other.headers["candela-cache"] == "MISS"

    miss = wait_for_logged_request(query_stub, admin.api_key, first.headers["candela-id"]).request
    hit = wait_for_logged_request(query_stub, admin.api_key, second.headers["candela-id"]).request
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert (hit.status_code, hit.usage.prompt_tokens, hit.usage.completion_tokens) == (200, PROMPT_TOKENS, REPLY_TOKENS)
    assert Decimal(miss.cost_usd) == expected_cost("gpt-4o-mini", "openai", PROMPT_TOKENS, REPLY_TOKENS)
    assert Decimal(hit.cost_usd) == 0  # nothing was paid for the hit


def test_streamed_answer_is_cached_and_replayed_as_sse(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    marker = uuid.uuid4().hex
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-x",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-Cache-Enabled": "true",
                "x-test-marker": marker,
            },
            max_retries=0,
        )
    )
    received = []
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Say {marker}"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            received.append((response.headers["candela-cache"], b"".join(response.iter_bytes())))
    assert [state for state, _ in received] == ["MISS", "HIT"]
    assert received[0][1] == received[1][1]
    assert received[1][1].endswith(b"data: [DONE]\n\n")
    assert len(fake_requests(stack, x_test_marker=marker)) == 1


def test_cache_bucket_fills_before_it_answers(stack: Stack, admin: Bootstrap) -> None:
    marker = uuid.uuid4().hex
    headers = _headers(admin, **{"Candela-Cache-Enabled": "true", "Candela-Cache-Bucket-Max-Size": "2"})
    states = [_post(stack, _chat(marker), headers).headers["candela-cache"] for _ in range(3)]
    assert states == ["MISS", "MISS", "HIT"]


def test_rate_limit_per_user_over_a_window(stack: Stack, admin: Bootstrap) -> None:
    # A 10 s window: the refusals below must not depend on how fast a loaded machine makes the calls (the
    # sliding estimate weighs the previous fixed window less as time passes).
    user = f"limited-{uuid.uuid4().hex}"
    headers = _headers(admin, **{"Candela-RateLimit-Policy": "2;w=10;s=user", "Candela-User-Id": user})
    answers = [_post(stack, _chat("limit"), headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["candela-ratelimit-remaining"] for a in answers[:2]] == ["1", "0"]
    refused = answers[2]
    assert refused.headers["candela-ratelimit-limit"] == "2"
    assert refused.headers["candela-ratelimit-policy"] == "2;w=10;u=request;s=user"
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "candela_rate_limited")
    assert "2 requests per 10s" in error["message"]
    # Another user has a quota of their own; the Anthropic path refuses in Anthropic's shape.
    other = _post(stack, _chat("limit"), {**headers, "Candela-User-Id": f"{user}-2"})
    assert other.status_code == 200
    anthropic_refusal = _post(
        stack,
        {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        {**headers, "anthropic-version": "2023-06-01"},
        "/anthropic/v1/messages",
    )
    assert anthropic_refusal.status_code == 429
    assert anthropic_refusal.json()["error"]["type"] == "rate_limit_error"
    # The window slides: within about one window the user may call again.
    sliding = _headers(admin, **{"Candela-RateLimit-Policy": "2;w=2;s=user", "Candela-User-Id": f"{user}-3"})
    assert [_post(stack, _chat("limit"), sliding).status_code for _ in range(3)] == [200, 200, 429]
    started = time.monotonic()
    wait_until(lambda: _post(stack, _chat("limit"), sliding).status_code == 200, timeout_s=6, what="window")
    assert time.monotonic() - started < 4


def test_retries_ride_out_provider_errors(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    key = uuid.uuid4().hex
    failing = {"x-fake-fail-times": "2", "x-fake-key": key, "x-fake-status": "503"}
    response = _post(
        stack,
        _chat("retry"),
        _headers(
            admin,
            **failing,
            **{"Candela-Retry-Enabled": "true", "Candela-Retry-Min-Timeout": "10", "Candela-Retry-Max-Timeout": "50"},
        ),
    )
    assert response.status_code == 200
    assert len(fake_requests(stack, x_fake_key=key)) == 3
    logged = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert logged.status_code == 200

    # Without retries the provider's error reaches the client unchanged, and is logged.
    key = uuid.uuid4().hex
    failed = _post(stack, _chat("retry"), _headers(admin, **{**failing, "x-fake-key": key}))
    assert failed.status_code == 503
    assert failed.json()["error"]["type"]
    assert len(fake_requests(stack, x_fake_key=key)) == 1
    assert wait_for_logged_request(query_stub, admin.api_key, failed.headers["candela-id"]).request.status_code == 503


def test_fallback_is_tried_on_the_listed_status(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, local_target_proxy: str
) -> None:
    assert stack.fake_provider_url is not None
    key = uuid.uuid4().hex
    fallbacks = [
        {
            "target-url": stack.fake_provider_url,
            "onCodes": [500],
            "headers": {"x-fallback": "yes"},
            "bodyKeyOverride": {"model": "gpt-4o"},
        }
    ]
    response = _post(
        stack,
        _chat("fallback"),
        _headers(admin, **{"x-fake-fail-times": "1", "x-fake-key": key, "Candela-Fallbacks": json.dumps(fallbacks)}),
        via=local_target_proxy,
    )
    assert response.status_code == 200
    first, second = fake_requests(stack, x_fake_key=key)
    assert json.loads(first["body"])["model"] == "gpt-4o-mini"
    assert (second["headers"].get("x-fallback"), json.loads(second["body"])["model"]) == ("yes", "gpt-4o")
    logged = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    host = stack.fake_provider_url.removeprefix("http://")
    assert (logged.status_code, logged.provider, logged.response_model) == (200, host, "gpt-4o")
    assert not logged.HasField("cost_usd")  # an unknown custom provider is unpriced, not 0

    # A status the fallback does not list is answered as is.
    key = uuid.uuid4().hex
    answered = _post(
        stack,
        _chat("fallback"),
        _headers(
            admin,
            **{
                "x-fake-fail-times": "1",
                "x-fake-status": "400",
                "x-fake-key": key,
                "Candela-Fallbacks": json.dumps(fallbacks),
            },
        ),
        via=local_target_proxy,
    )
    assert answered.status_code == 400
    assert len(fake_requests(stack, x_fake_key=key)) == 1


def test_target_url_reaches_any_openai_compatible_provider(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, local_target_proxy: str
) -> None:
    assert stack.fake_provider_url is not None
    marker = uuid.uuid4().hex
    response = _post(
        stack,
        _chat(marker, model="llama-3.1-8b-instant"),
        _headers(admin, **{"Helicone-Target-Url": stack.fake_provider_url, "x-test-marker": marker}),
        via=local_target_proxy,
    )
    assert response.status_code == 200
    (upstream,) = fake_requests(stack, x_test_marker=marker)
    # The provider key passes through (the fake provider records only its fingerprint).
    assert upstream["headers"]["authorization"] == redacted_credential("Bearer sk-x")
    logged = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert logged.provider == stack.fake_provider_url.removeprefix("http://")
    assert (logged.usage.prompt_tokens, logged.usage.completion_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)


def test_stream_usage_header_true_reads_usage_hidden_from_a_client_that_did_not_ask(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    marker = uuid.uuid4().hex
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/chat/completions",
        json=_chat(marker, stream=True),
        headers=_headers(admin, **{"Candela-Stream-Usage": "true", "x-test-marker": marker}),
        timeout=30,
    ) as response:
        received = b"".join(response.iter_raw())
        request_id = response.headers["candela-id"]
    events = [json.loads(line[6:]) for line in received.decode().splitlines() if line.startswith("data: {")]
    assert events
    assert all(event["choices"] for event in events)
    assert received.endswith(b"data: [DONE]\n\n")
    (upstream,) = fake_requests(stack, x_test_marker=marker)
    assert json.loads(upstream["body"])["stream_options"] == {"include_usage": True}
    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    assert (logged.request.usage.prompt_tokens, logged.request.usage.completion_tokens) == (
        PROMPT_TOKENS,
        REPLY_TOKENS,
    )
    assert Decimal(logged.request.cost_usd) == expected_cost("gpt-4o-mini", "openai", PROMPT_TOKENS, REPLY_TOKENS)
    assert logged.response_body.encode() == received


def test_client_leaving_mid_stream_cancels_the_call_and_is_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    # Six deltas 400 ms apart: the whole answer would take about 2.4 s.
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/chat/completions",
        json=_chat("leave", stream=True),
        headers=_headers(admin, **{"x-fake-delay-ms": "400"}),
        timeout=30,
    ) as response:
        request_id = response.headers["candela-id"]
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    record = logged.request
    assert record.error == "client disconnected mid-stream"
    assert (record.status_code, record.streamed) == (200, True)
    assert record.latency_ms < 2000
    assert logged.response_body.encode().startswith(first)
    assert not logged.response_body.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("path", "headers", "status", "complaint"),
    [
        ("/v1/chat/completions", {"Candela-RateLimit-Policy": "ten;w=60"}, 400, "Candela-RateLimit-Policy"),
        ("/v1/chat/completions", {"Candela-Fallbacks": "[{"}, 400, "Candela-Fallbacks is not valid JSON"),
        ("/v1/chat/completions", {"Candela-Retry-Enabled": "yes", "Candela-Retry-Num": "-1"}, 400, "Retry-Num"),
        ("/anthropic/v1/messages", {"Helicone-RateLimit-Policy": "1;w=60;u=tokens"}, 400, "unit must be"),
        ("/anthropic/v2/messages", {}, 404, "no provider serves /anthropic/v2/messages"),
        ("/v1/chat/completions", {"Candela-RateLimit-Policy": "1;w=60;s=team"}, 400, "Candela-Property-team"),
    ],
)
def test_bad_control_headers_are_4xx_in_the_provider_shape_and_not_logged(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    path: str,
    headers: dict[str, str],
    status: int,
    complaint: str,
) -> None:
    user = f"bad-header-{uuid.uuid4().hex}"
    response = _post(stack, _chat("bad"), _headers(admin, **{"Candela-User-Id": user}, **headers), path)
    assert response.status_code == status
    body = response.json()
    # Envoy lowercases header names, so the message names the header as it arrived.
    if path.startswith("/anthropic"):
        assert body["type"] == "error"
        assert complaint.lower() in body["error"]["message"].lower()
    else:
        assert complaint.lower() in body["error"]["message"].lower()
        assert body["error"]["code"] in {"invalid_candela_header", "unknown_route"}
    good = _post(stack, _chat("good"), _headers(admin, **{"Candela-User-Id": user}))
    wait_for_logged_request(query_stub, admin.api_key, good.headers["candela-id"])
    listed = query_stub.QueryRequests(
        query_service_pb2.QueryRequestsRequest(filter=query_service_pb2.RequestFilter(user_id=user)),
        metadata=bearer(admin.api_key),
        timeout=5,
    )
    assert [r.request_id for r in listed.requests] == [good.headers["candela-id"]]


def test_client_supplied_request_id_is_kept(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    request_id = str(uuid.uuid4())
    response = _post(stack, _chat("id"), _headers(admin, **{"Helicone-Request-Id": request_id}))
    assert response.headers["candela-id"] == request_id
    assert wait_for_logged_request(query_stub, admin.api_key, request_id).request.request_id == request_id


def test_metrics_endpoint_counts_requests_and_log_shipping(stack: Stack, admin: Bootstrap) -> None:
    assert _post(stack, _chat("metrics"), _headers(admin)).status_code == 200
    text = httpx.get(f"{stack.proxy_url}/metrics", timeout=10).text
    assert metric_value(text, "candela_proxy_requests_total") >= 1
    for name in (
        "candela_proxy_log_queue_depth",
        "candela_proxy_spool_bytes",
        "candela_proxy_logs_dropped_total",
        "candela_proxy_redis_errors_total",
    ):
        assert name in text
    wait_until(
        lambda: (
            metric_value(httpx.get(f"{stack.proxy_url}/metrics", timeout=10).text, "candela_proxy_logs_sent_total") >= 1
        ),
        what="logs sent",
    )
