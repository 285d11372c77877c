"""What the gateway keeps and passes on about a request: no URL secret in any log or store, and nothing of
Envoy's own hop reaches the provider."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import topic_payloads, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests, wait_until

pytestmark = pytest.mark.e2e

ENVOY_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address", "x-request-id")
"""What Envoy used to add about its own hop, which the provider then received through the proxy."""


def _chat(marker: str) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {marker}"}]}


def _headers(admin: Bootstrap, **extra: str) -> dict[str, str]:
    return {"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", **extra}


def test_url_secrets_reach_no_log_record_or_topic(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    """Gemini-style `?key=` (and the like) in the request URL or in a custom target is redacted everywhere."""
    assert stack.fake_provider_url is not None
    run = uuid.uuid4().hex[:10]
    secrets = {name: f"{name}-{run}-s3cr3t" for name in ("key", "api_key", "Token", "sig", "password", "userinfo")}
    query = "&".join(f"{name}={value}" for name, value in secrets.items() if name != "userinfo")
    marker = uuid.uuid4().hex
    answered = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions?{query}&alt=sse",
        json=_chat(marker),
        headers=_headers(admin, **{"x-test-marker": marker}),
        timeout=30,
    )
    assert answered.status_code == 200, answered.text
    request_ids = [answered.headers["candela-id"]]
    (received,) = fake_requests(stack, x_test_marker=marker)
    assert "alt=sse" in received["query"], "the query string still reaches the provider"

    # A custom target carrying credentials (a userinfo and a query): logged, if accepted, without them.
    host = stack.fake_provider_url.removeprefix("http://")
    target = f"http://candela:{secrets['userinfo']}@{host}?key={secrets['key']}"
    targeted = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json=_chat(marker),
        # No Authorization beside the userinfo: that pair is a caller mistake of its own (a 400).
        headers={"Candela-Auth": f"Bearer {admin.api_key}", "Candela-Target-Url": target},
        timeout=30,
    )
    assert targeted.status_code < 500, targeted.text
    if "candela-id" in targeted.headers and targeted.status_code != 400:
        request_ids.append(targeted.headers["candela-id"])

    stored = [wait_for_logged_request(query_stub, admin.api_key, request_id) for request_id in request_ids]
    for response in stored:
        text = str(response) + response.SerializeToString().decode(errors="replace")
        assert not [name for name, secret in secrets.items() if secret in text], text
    if len(stored) == 2:
        logged = stored[1].request
        assert logged.provider == host, "the provider name is the target's host, without its userinfo"
        assert "REDACTED" in logged.target_url, logged.target_url

    rows = httpx.get(
        stack.clickhouse_http_url,
        params={"query": f"SELECT * FROM {stack.clickhouse_database}.requests FORMAT TabSeparated"},
        auth=(stack.clickhouse_user, stack.clickhouse_password),
        timeout=30,
    )
    assert rows.status_code == 200, rows.text
    assert request_ids[0] in rows.text, "ClickHouse holds none of the test's requests: checked nothing"
    assert not [name for name, secret in secrets.items() if secret in rows.text]

    payloads = asyncio.run(topic_payloads(stack, set(request_ids)))
    assert not [name for name, secret in secrets.items() for payload in payloads if secret.encode() in payload]

    access_log = stack.log_dir / "envoy-access.log"
    wait_until(lambda: request_ids[0] in _text(access_log), timeout_s=15)
    (line,) = [json.loads(line) for line in _text(access_log).splitlines() if request_ids[0] in line]
    assert line["path"] == "/v1/chat/completions", "the access log keeps the path, without its query"
    for log_file in sorted(path for path in stack.log_dir.rglob("*") if path.is_file()):
        text = _text(log_file)
        leaked = [name for name, secret in secrets.items() if secret in text]
        assert not leaked, f"{log_file.name} holds the URL's {leaked}"
        assert stack.clickhouse_password not in text, f"{log_file.name} holds the ClickHouse password"


def test_the_provider_gets_what_the_client_sent_and_nothing_of_the_gateway(stack: Stack, admin: Bootstrap) -> None:
    marker = uuid.uuid4().hex
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json=_chat(marker),
        headers=_headers(admin, **{"x-test-marker": marker, "X-Client-Custom": "kept"}),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (received,) = fake_requests(stack, x_test_marker=marker)
    headers = received["headers"]
    assert headers["x-client-custom"] == "kept", "the client's own headers reach the provider"
    assert headers["authorization"], "so does the provider key"
    arrived = sorted(name for name in headers if name in ENVOY_HEADERS or name.startswith("x-envoy-"))
    assert arrived == [], f"the provider received the gateway's {arrived}"
    assert not [name for name in headers if name.startswith(("candela-", "helicone-"))]

    # OpenAI's client-side request id is the client's own, and reaches the provider unchanged.
    marker = uuid.uuid4().hex
    own_id = f"client-{marker}"
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json=_chat(marker),
        headers=_headers(admin, **{"x-test-marker": marker, "X-Client-Request-Id": own_id}),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (received,) = fake_requests(stack, x_test_marker=marker)
    assert received["headers"]["x-client-request-id"] == own_id
    assert "x-request-id" not in received["headers"]


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
