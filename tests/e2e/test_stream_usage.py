"""Exact cost by default, through the gateway with the openai SDK: an OpenAI stream that did not ask for its
usage is asked for it, priced, and relayed to the client as it would have arrived without Candela, event by
event whatever the provider's line endings; a non-streamed answer says its cost; every answer, refusals
included, carries Helicone-Id beside Candela-Id."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

Call = Callable[[openai.OpenAI, dict[str, Any]], Any]
PROMPT = "Say usage please"


def _chat(client: openai.OpenAI, options: dict[str, Any]) -> Any:
    """A streamed chat completion, answered with its headers (``.headers``, ``.parse()`` for the chunks)."""
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True, **options
    )


def _completion(client: openai.OpenAI, options: dict[str, Any]) -> Any:
    """A streamed legacy completion, answered with its headers."""
    return client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt=PROMPT, stream=True, **options
    )


def _client(base_url: str, marker: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key="sk-x", max_retries=0, default_headers={"x-test-marker": marker, **headers}
    )


def _comparable(chunks: Iterable[Any]) -> list[dict[str, Any]]:
    """The chunks as the SDK parsed them, less what differs between two calls (the id and the time)."""
    return [chunk.model_dump(exclude={"id", "created"}) for chunk in chunks]


def _headers(admin: Bootstrap, **extra: str) -> dict[str, str]:
    return {"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", **extra}


@pytest.mark.parametrize(
    ("call", "model", "path"),
    [(_chat, "gpt-4o-mini", "/v1/chat/completions"), (_completion, "gpt-3.5-turbo-instruct", "/v1/completions")],
    ids=["chat", "completions"],
)
def test_a_stream_that_did_not_ask_for_usage_is_priced_and_the_sdk_sees_what_the_provider_sends(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    call: Call,
    model: str,
    path: str,
) -> None:
    marker = uuid.uuid4().hex
    gateway = closing.enter_context(_client(f"{stack.gateway_url}/v1", marker, **_headers(admin)))
    direct = closing.enter_context(_client(f"{stack.fake_provider_url}/v1", marker))
    answered = call(gateway, {})
    via_gateway = list(answered.parse())
    without_candela = list(call(direct, {}).parse())
    asked = list(call(direct, {"stream_options": {"include_usage": True}}).parse())
    assert _comparable(via_gateway) == _comparable(without_candela)
    assert all(chunk.choices for chunk in via_gateway), "no usage chunk reached a client that did not ask"
    usage = asked[-1].usage
    assert usage is not None
    assert asked[-1].choices == []

    upstream = fake_requests(stack, x_test_marker=marker)
    assert [request["path"] for request in upstream] == [path] * 3
    assert upstream[0]["json"]["stream_options"] == {"include_usage": True}, "Candela asked for the usage"
    assert "stream_options" not in upstream[1]["json"]

    record = wait_for_logged_request(query_stub, admin.api_key, answered.headers["candela-id"]).request
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert Decimal(record.cost_usd) == expected_cost(model, "openai", usage.prompt_tokens, usage.completion_tokens)


def test_a_client_that_asked_for_usage_gets_its_chunk_and_its_body_goes_untouched(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    marker = uuid.uuid4().hex
    gateway = closing.enter_context(_client(f"{stack.gateway_url}/v1", marker, **_headers(admin)))
    answered = _chat(gateway, {"stream_options": {"include_usage": True}})
    chunks = list(answered.parse())
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    (upstream,) = fake_requests(stack, x_test_marker=marker)
    assert upstream["json"]["stream_options"] == {"include_usage": True}
    record = wait_for_logged_request(query_stub, admin.api_key, answered.headers["candela-id"]).request
    assert record.usage.completion_tokens == chunks[-1].usage.completion_tokens


@pytest.mark.parametrize(
    ("stream_options", "headers"),
    [({"include_usage": False}, {}), (None, {"Candela-Stream-Usage": "false"})],
    ids=["client-refused", "switched-off"],
)
def test_no_usage_is_asked_for_when_the_client_or_the_switch_says_no(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    stream_options: dict[str, Any] | None,
    headers: dict[str, str],
) -> None:
    """The body reaches the provider byte for byte as sent (odd spacing and key order included), and the log
    has no tokens and no cost: unknown, never zero."""
    marker = uuid.uuid4().hex
    options = f', "stream_options" : {json.dumps(stream_options)}' if stream_options is not None else ""
    sent = (
        '{"stream":true,  "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say no"}]' + options + "}"
    ).encode()
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/chat/completions",
        content=sent,
        headers=_headers(admin, **{"Content-Type": "application/json", "x-test-marker": marker, **headers}),
        timeout=30,
    ) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_raw())
        request_id = response.headers["candela-id"]
    assert b'"choices":[]' not in received
    (upstream,) = fake_requests(stack, x_test_marker=marker)
    assert base64.b64decode(upstream["body_base64"]) == sent
    record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (0, 0)
    assert not record.HasField("cost_usd")


def _events(stream: bytes, ending: bytes) -> list[bytes]:
    """The events of a stream whose every line ends with ``ending`` (a test's own split, not the proxy's)."""
    return [event + ending * 2 for event in stream.split(ending * 2)[:-1]]


@pytest.mark.parametrize(("name", "ending"), [("crlf", b"\r\n"), ("cr", b"\r")])
def test_crlf_and_cr_streams_are_relayed_event_by_event_without_the_usage_chunk(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, name: str, ending: bytes
) -> None:
    """The provider pauses 400 ms before each of three deltas and cuts every event into 5-byte writes: each
    event reaches the client when the provider has sent it, not when the stream ends."""
    marker = uuid.uuid4().hex
    fake = {
        "x-fake-reply": "one two three four five six",
        "x-fake-delay-ms": "400",
        "x-fake-line-ending": name,
        "x-fake-write-bytes": "5",
        "x-fake-write-delay-ms": "1",
        "x-test-marker": marker,
    }
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count"}], "stream": True}
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream(
        "POST", f"{stack.gateway_url}/v1/chat/completions", json=body, headers=_headers(admin, **fake), timeout=30
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["candela-id"]
        for piece in response.iter_raw():
            arrivals.append((time.monotonic(), piece))
    received = b"".join(piece for _, piece in arrivals)
    events = _events(received, ending)
    # When did each event arrive whole? The first (the role) leaves the provider before the first pause.
    arrived_at: list[float] = []
    seen = b""
    for at, piece in arrivals:
        seen += piece
        while len(arrived_at) < len(events) and len(seen) >= sum(len(event) for event in events[: len(arrived_at) + 1]):
            arrived_at.append(at)
    assert arrived_at[-1] - arrived_at[0] > 0.8, arrived_at
    assert arrived_at[2] - arrived_at[1] > 0.2, arrived_at

    assert b"".join(events) == received, "every line ends as the provider ended it"
    assert events[-1] == b"data: [DONE]" + ending * 2
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert [chunk["choices"][0]["delta"].get("content") for chunk in chunks] == [
        "",
        "one two",
        " three four",
        " five six",
        None,
    ]
    assert all(chunk["choices"] for chunk in chunks), "the usage chunk was hidden"

    record = wait_for_logged_request(query_stub, admin.api_key, request_id)
    assert record.request.usage.completion_tokens == 6
    assert Decimal(record.request.cost_usd) == expected_cost(
        "gpt-4o-mini", "openai", record.request.usage.prompt_tokens, 6
    )
    assert record.response_body.encode() == received


def test_a_priced_answer_says_its_cost_and_an_unpriced_one_does_not(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    body = {"messages": [{"role": "user", "content": "price me"}]}
    url = f"{stack.gateway_url}/v1/chat/completions"
    priced = httpx.post(url, json={**body, "model": "gpt-4o-mini"}, headers=_headers(admin), timeout=30)
    assert priced.status_code == 200
    record = wait_for_logged_request(query_stub, admin.api_key, priced.headers["candela-id"]).request
    assert record.cost_usd
    assert priced.headers["candela-cost-usd"] == record.cost_usd
    assert Decimal(record.cost_usd) == expected_cost(
        "gpt-4o-mini", "openai", record.usage.prompt_tokens, record.usage.completion_tokens
    )

    unpriced = httpx.post(url, json={**body, "model": "no-such-model-x"}, headers=_headers(admin), timeout=30)
    assert unpriced.status_code == 200
    record = wait_for_logged_request(query_stub, admin.api_key, unpriced.headers["candela-id"]).request
    assert not record.HasField("cost_usd")
    assert "candela-cost-usd" not in unpriced.headers

    with httpx.stream(
        "POST", url, json={**body, "model": "gpt-4o-mini", "stream": True}, headers=_headers(admin), timeout=30
    ) as streamed:
        b"".join(streamed.iter_raw())
    assert "candela-cost-usd" not in streamed.headers, "a stream's cost is known after its headers left"


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', {}, 200),
        (b'{"model": "gpt-4o-mini", "messages": []}', {"Candela-Auth": "Bearer not-a-key"}, 401),
        (b'{"model": "gpt-4o-mini", "messa', {}, 400),
        (b'{"model": "gpt-4o-mini", "messages": []}', {"Candela-RateLimit-Policy": "ten;w=60"}, 400),
    ],
    ids=["answer", "bad-key", "bad-json", "bad-header"],
)
def test_every_answer_carries_helicone_id_beside_candela_id(
    stack: Stack, admin: Bootstrap, content: bytes, headers: dict[str, str], status: int
) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        content=content,
        headers={**_headers(admin), "Content-Type": "application/json", **headers},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert response.headers["helicone-id"] == response.headers["candela-id"]
    uuid.UUID(response.headers["candela-id"])


def test_a_rate_limited_refusal_carries_helicone_id_beside_candela_id(stack: Stack, admin: Bootstrap) -> None:
    headers = _headers(admin, **{"Candela-RateLimit-Policy": "1;w=60;s=user", "Candela-User-Id": uuid.uuid4().hex})
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "once"}]}
    url = f"{stack.gateway_url}/v1/chat/completions"
    statuses = [httpx.post(url, json=body, headers=headers, timeout=30) for _ in range(2)]
    assert [response.status_code for response in statuses] == [200, 429]
    assert statuses[1].headers["helicone-id"] == statuses[1].headers["candela-id"]
