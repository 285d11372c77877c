"""Request bodies of any legal size and pace, and requests refused at admission before anything goes upstream.

Large bodies (1, 8 and 30 MB) go through the real openai SDK and raw httpx, via the Envoy gateway and
straight to the proxy; slow senders pause between parts, chunked senders declare no length. Each is answered
and its log holds the exact bytes sent, read back through the query API. Headers the log cannot hold (bytes
that are not UTF-8), prompt inputs above the bound ingest keeps, and numbers in Unicode digits are a 400
before the provider is called.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, MAX_RECORD_BYTES
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

MB = 1_000_000
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def large_query_stub(stack: Stack) -> Iterator[query_service_pb2_grpc.QueryServiceStub]:
    """QueryService through the gateway, on a channel that takes answers holding a 30 MB body."""
    with grpc.insecure_channel(
        stack.gateway_addr, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as channel:
        yield query_service_pb2_grpc.QueryServiceStub(channel)


def _chat_body(size: int, marker: str) -> bytes:
    """A chat request of exactly ``size`` bytes whose user message starts with ``marker``."""
    empty = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": marker}]}).encode()
    content = marker + "x" * (size - len(empty))
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()
    assert len(body) == size
    return body


def _headers(admin: Bootstrap, marker: str) -> dict[str, str]:
    return {
        "Candela-Auth": f"Bearer {admin.api_key}",
        "Authorization": "Bearer sk-provider",
        "Content-Type": "application/json",
        "x-test-marker": marker,
    }


def _logged_request_body(
    stub: query_service_pb2_grpc.QueryServiceStub, admin: Bootstrap, request_id: str
) -> query_service_pb2.GetRequestResponse:
    # A 30 MB log takes longer than most to travel (S3 upload of the body, then Kafka and the writer).
    return wait_for_logged_request(stub, admin.api_key, request_id, timeout_s=90)


def _assert_answered_and_logged(
    stub: query_service_pb2_grpc.QueryServiceStub, admin: Bootstrap, answer: httpx.Response, sent: bytes
) -> None:
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["choices"][0]["message"]["content"].startswith("Echo:")
    logged = _logged_request_body(stub, admin, answer.headers["Candela-Id"])
    assert logged.request.status_code == 200
    assert not logged.request.request_body_omitted
    assert logged.request_body.encode() == sent, "the logged request body differs from the bytes sent"
    assert logged.request.usage.prompt_tokens > 0


@pytest.mark.parametrize("size", [1 * MB, 8 * MB, 30 * MB])
def test_large_bodies_are_answered_and_logged_whole(
    stack: Stack, admin: Bootstrap, large_query_stub: query_service_pb2_grpc.QueryServiceStub, size: int
) -> None:
    marker = f"big-{uuid.uuid4().hex}"
    body = _chat_body(size, marker)
    for base in (stack.gateway_url, stack.proxy_url):
        answer = httpx.post(f"{base}/v1/chat/completions", content=body, headers=_headers(admin, marker), timeout=120)
        _assert_answered_and_logged(large_query_stub, admin, answer, body)
    received = fake_requests(stack, x_test_marker=marker)
    assert len(received) == 2
    assert all(len(request["body"].encode()) == size for request in received)


@pytest.mark.parametrize("size", [1 * MB + 200_000, 8 * MB, 30 * MB])
def test_the_openai_sdk_sends_large_bodies_through_the_gateway(
    stack: Stack,
    admin: Bootstrap,
    large_query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    size: int,
) -> None:
    marker = f"sdk-{uuid.uuid4().hex}"
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-provider",
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
            max_retries=0,
            timeout=120,
        )
    )
    content = marker + "y" * size
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": content}])
    completion = raw.parse()
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith(f"Echo: {marker}")
    logged = _logged_request_body(large_query_stub, admin, raw.headers["Candela-Id"])
    (received,) = fake_requests(stack, x_test_marker=marker)
    # What the provider got is what the SDK sent (the proxy forwards it untouched), and the log holds it.
    assert logged.request_body == received["body"]
    assert json.loads(logged.request_body)["messages"][0]["content"] == content


def _raw_exchange(port: int, head: bytes, parts: list[bytes], pause_s: float) -> tuple[int, bytes]:
    """Sends ``head`` then each part with a pause between; returns the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head)
        for index, part in enumerate(parts):
            if index:
                time.sleep(pause_s)
            connection.sendall(part)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            assert chunk, f"the connection closed before an answer: {answer!r}"
            answer += chunk
        head_text, _, rest = answer.partition(b"\r\n\r\n")
        status = int(head_text.split(b" ", 2)[1])
        lines = head_text.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            chunk = connection.recv(65536)
            assert chunk, "the connection closed mid-answer"
            rest += chunk
        return status, rest[:length]


def _head(path: str, headers: dict[str, str], framing: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: candela", "Connection: close", framing]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(parts: list[bytes]) -> list[bytes]:
    return [f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in parts] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("size", [12_000, 2 * MB])
def test_slow_and_chunked_senders_are_answered_and_logged_whole(
    stack: Stack,
    admin: Bootstrap,
    large_query_stub: query_service_pb2_grpc.QueryServiceStub,
    framing: str,
    size: int,
) -> None:
    """A body sent in parts 0.3 s apart (as a slow client or network does), with a length or chunked."""
    for url in (stack.gateway_url, stack.proxy_url):
        marker = f"slow-{uuid.uuid4().hex}"
        request_id = str(uuid.uuid4())
        body = _chat_body(size, marker)
        third = len(body) // 3
        parts = [body[:third], body[third : 2 * third], body[2 * third :]]
        declared = f"Content-Length: {len(body)}" if framing == "content-length" else "Transfer-Encoding: chunked"
        headers = {**_headers(admin, marker), "Candela-Request-Id": request_id}
        port = int(url.rsplit(":", 1)[1])
        status, answer = _raw_exchange(
            port,
            _head("/v1/chat/completions", headers, declared),
            parts if framing == "content-length" else _chunked(parts),
            0.3,
        )
        assert status == 200, answer[:500]
        assert json.loads(answer)["choices"][0]["message"]["content"].startswith(f"Echo: {marker}")
        logged = _logged_request_body(large_query_stub, admin, request_id)
        assert logged.request_body.encode() == body


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "header",
    [
        b"Candela-User-Id: caf\xe9",
        b"Candela-Property-Team: \xff\xfe",
        b"Candela-Property-Caf\xe9: x",
        b"Candela-Session-Name: r\xe9sum\xe9",
        b"Helicone-Prompt-Id: p\xe9",
    ],
)
def test_a_logged_header_that_is_not_utf8_is_a_400_before_the_provider_is_called(
    stack: Stack, admin: Bootstrap, header: bytes, stream: bool
) -> None:
    for url in (stack.gateway_url, stack.proxy_url):
        marker = f"latin1-{uuid.uuid4().hex}"
        body = json.dumps({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).encode()
        head = _head("/v1/chat/completions", _headers(admin, marker), f"Content-Length: {len(body)}")
        head = head[:-2] + header + b"\r\n\r\n"
        status, answer = _raw_exchange(int(url.rsplit(":", 1)[1]), head, [body], 0)
        assert status == 400, answer[:500]
        if not header.partition(b":")[0].isascii():
            # A header name that is not an HTTP token is refused by the HTTP parser itself (Envoy's in the
            # SDK's shape, aiohttp's as plain text), before any handler runs.
            if url == stack.gateway_url:
                assert json.loads(answer)["error"]["code"] == "http1.codec_error"
        else:
            error = json.loads(answer)["error"]
            assert error["code"] == "invalid_candela_header"
            assert "not valid UTF-8" in error["message"]
        assert fake_requests(stack, x_test_marker=marker) == [], "the provider was called"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Candela-Retry-Num", "²"),
        ("Candela-Cache-Bucket-Max-Size", "³"),
        ("Candela-Prompt-Version", "²"),
        ("Candela-RateLimit-Policy", "²;w=60"),
    ],
)
def test_numbers_in_unicode_digits_are_a_400(stack: Stack, admin: Bootstrap, name: str, value: str) -> None:
    marker = f"digits-{uuid.uuid4().hex}"
    # As bytes: the value goes out UTF-8 encoded, as a client that takes any text would send it.
    text = {**_headers(admin, marker), "Candela-Retry-Enabled": "true", "Candela-Cache-Enabled": "true", name: value}
    headers = {key.encode(): item.encode() for key, item in text.items()}
    answer = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_candela_header"
    assert name.lower() in answer.json()["error"]["message"].lower()
    assert fake_requests(stack, x_test_marker=marker) == []


def test_a_fallback_header_with_a_line_break_is_a_400(stack: Stack, admin: Bootstrap) -> None:
    marker = f"crlf-{uuid.uuid4().hex}"
    assert stack.fake_provider_url is not None
    fallbacks = [{"target-url": stack.fake_provider_url, "headers": {"X-Extra": "a\r\nX-Injected: yes"}}]
    answer = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={**_headers(admin, marker), "Candela-Fallbacks": json.dumps(fallbacks)},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "control character" in answer.json()["error"]["message"]
    assert fake_requests(stack, x_test_marker=marker) == []


def test_prompt_inputs_above_the_logged_bound_are_a_400_before_the_provider_is_called(
    stack: Stack, admin: Bootstrap
) -> None:
    marker = f"inputs-{uuid.uuid4().hex}"
    document = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "prompt_id": "any-prompt",
        "inputs": {"document": "é" * (MAX_PROMPT_INPUTS_BYTES // 2)},
    }
    answer = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions", json=document, headers=_headers(admin, marker), timeout=30
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_prompt_request"
    assert f"more than the limit of {MAX_PROMPT_INPUTS_BYTES}" in error["message"]
    assert fake_requests(stack, x_test_marker=marker) == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompt_tokens", [5e9, -7, 2**63])
def test_out_of_range_usage_is_logged_zeroed_flagged_and_unpriced(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    prompt_tokens: float,
    stream: bool,
) -> None:
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-provider",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "x-fake-usage": json.dumps({"prompt_tokens": prompt_tokens}),
            },
            max_retries=0,
        )
    )
    messages: list[Any] = [{"role": "user", "content": "Say hello"}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        ) as response:
            chunks = list(response.parse())
            request_id = response.headers["Candela-Id"]
        assert chunks[-1].usage is not None
    else:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        assert raw.parse().choices[0].message.content
        request_id = raw.headers["Candela-Id"]
    logged = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert logged.status_code == 200
    assert logged.usage_clamped
    assert (logged.usage.prompt_tokens, logged.usage.completion_tokens) == (0, 12)
    assert not logged.HasField("cost_usd"), "a clamped usage is not what was billed: the log stays unpriced"
    # The flag reaches REST callers too.
    found = httpx.get(
        f"{stack.gateway_url}/v1/request/{request_id}",
        headers={"Authorization": f"Bearer {admin.api_key}"},
        timeout=30,
    )
    assert found.status_code == 200, found.text
    assert found.json()["request"]["usageClamped"] is True


def test_bodies_above_what_one_log_holds_are_left_out_with_a_marker_and_the_log_kept(
    stack: Stack, admin: Bootstrap, large_query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    """A 30 MB request answered with ~40 MB: together above a stored log's 64 MiB, so the larger body (the
    answer) is left out, marked as such, and the log is kept with the request body whole."""
    marker = f"over-{uuid.uuid4().hex}"
    document = {"model": "text-embedding-3-small", "input": "w " * (15 * MB), "dimensions": 1_800_000}
    body = json.dumps(document).encode()
    answer = httpx.post(
        f"{stack.gateway_url}/v1/embeddings", content=body, headers=_headers(admin, marker), timeout=300
    )
    assert answer.status_code == 200
    assert len(answer.content) + len(body) > MAX_RECORD_BYTES
    assert len(answer.json()["data"][0]["embedding"]) == 1_800_000  # the client got the whole answer
    logged = _logged_request_body(large_query_stub, admin, answer.headers["Candela-Id"])
    record = logged.request
    assert (record.response_body_omitted, record.response_body_over_limit) == (True, True)
    assert (record.request_body_omitted, record.request_body_over_limit) == (False, False)
    assert logged.response_body == ""
    assert logged.request_body.encode() == body
    assert record.usage.prompt_tokens == 15 * MB


def test_a_declared_length_above_the_limit_is_refused_before_any_body_is_sent(stack: Stack, admin: Bootstrap) -> None:
    """Headers alone, announcing 10 GB: the gateway answers 413 at once, not after waiting for the body."""
    for path, shape in (
        ("/v1/chat/completions", "openai"),
        ("/anthropic/v1/messages", "anthropic"),
        ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", "google"),
    ):
        head = _head(path, {**_headers(admin, "declared"), "Content-Length": str(10**10)}, "Accept: */*")
        started = time.monotonic()
        status, answer = _raw_exchange(int(stack.gateway_url.rsplit(":", 1)[1]), head, [], 0)
        elapsed = time.monotonic() - started
        assert status == 413
        assert elapsed < 2.0, f"the 413 took {elapsed:.1f} s"
        error = json.loads(answer)["error"]
        if shape == "openai":
            assert (error["type"], error["code"]) == ("invalid_request_error", "request_payload_too_large")
        if shape == "google":
            assert (error["code"], error["status"]) == (413, "INVALID_ARGUMENT")
        assert "byte limit" in error["message"]


def test_headers_or_a_model_name_that_would_make_the_log_too_large_are_a_400(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    """Straight to the proxy (Envoy caps request headers at 60 KiB): 64 properties of ~7 KB each would make a
    log's metadata larger than ingest keeps (256 KiB), so the request is refused before the provider is
    called rather than answered and its log refused."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    marker = f"props-{uuid.uuid4().hex}"
    properties = {f"Candela-Property-P{index}-{'n' * 4000}": "€" * 1000 for index in range(64)}
    text = {**_headers(admin, marker), **properties}
    refused = httpx.post(
        f"{stack.proxy_url}/v1/chat/completions",
        json=chat,
        headers={key.encode(): value.encode() for key, value in text.items()},
        timeout=30,
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_candela_header"
    long_model = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={**chat, "model": "m" * 300_000},
        headers=_headers(admin, marker),
        timeout=30,
    )
    assert long_model.status_code == 400, long_model.text
    assert long_model.json()["error"]["code"] == "invalid_model"
    assert fake_requests(stack, x_test_marker=marker) == []
    # Within the bound, every property is logged.
    fitting = dict(list(properties.items())[:6])
    text = {**_headers(admin, marker), **fitting}
    answered = httpx.post(
        f"{stack.proxy_url}/v1/chat/completions",
        json=chat,
        headers={key.encode(): value.encode() for key, value in text.items()},
        timeout=30,
    )
    assert answered.status_code == 200, answered.text
    logged = wait_for_logged_request(query_stub, admin.api_key, answered.headers["Candela-Id"]).request
    assert dict(logged.properties) == {name.split("-", 2)[2].lower(): value for name, value in fitting.items()}
