"""No acknowledged log lost: a proxy SIGKILLed under load, and a full spool (reported; refused on request).

Each test runs a proxy of its own on the shared stack. A client "was told about" a log when it got a 200
with a ``Candela-Id`` and the whole answer (a stream read to its end).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as query_pb
from candela.query.v1 import query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.stack import Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.e2e.proxy_support import Service, free_port, metric_value, services, start_ingest, start_proxy, wait_until

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@dataclass(frozen=True)
class Organization:
    """A fresh organization, so its usage counters hold only this test's logs."""

    organization_id: str
    key: str


@pytest.fixture
def organization(stack: Stack, gateway_channel: grpc.Channel) -> Organization:
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    created = auth.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name=f"durability-{uuid.uuid4().hex[:6]}"), metadata=internal, timeout=10
    ).organization
    key = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            organization_id=created.id,
            name="durability",
            scopes=[auth_pb.API_KEY_SCOPE_PROXY, auth_pb.API_KEY_SCOPE_READ],
        ),
        metadata=internal,
        timeout=10,
    )
    return Organization(created.id, key.secret)


@dataclass
class Load:
    """Clients calling the proxy in threads until stopped; what each was told, by Candela-Id."""

    url: str
    key: str
    user_id: str
    answered: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Candela-Id -> (prompt tokens, completion tokens) the client was given."""
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, client_index: int) -> None:
        client = openai.OpenAI(
            base_url=f"{self.url}/v1",
            api_key="sk-test",
            max_retries=0,
            timeout=10,
            default_headers={"Candela-Auth": f"Bearer {self.key}", "Candela-User-Id": self.user_id},
        )
        with client:
            calls = 0
            while not self.stop.is_set():
                calls += 1
                try:
                    request_id, usage = self._stream(client) if (calls + client_index) % 2 else self._call(client)
                except (openai.APIError, httpx.HTTPError):
                    with self.lock:
                        self.failures += 1  # the kill and the restart: this client was told nothing
                    self.stop.wait(0.05)  # the proxy is down: no busy loop of refused connections
                    continue
                with self.lock:
                    self.answered[request_id] = usage

    @staticmethod
    def _call(client: openai.OpenAI) -> tuple[str, tuple[int, int]]:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        completion = raw.parse()
        assert raw.http_response.status_code == 200
        assert completion.usage is not None
        return raw.headers["candela-id"], (completion.usage.prompt_tokens, completion.usage.completion_tokens)

    @staticmethod
    def _stream(client: openai.OpenAI) -> tuple[str, tuple[int, int]]:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        usage = None
        for chunk in raw.parse():
            usage = chunk.usage or usage
        assert raw.http_response.status_code == 200
        assert usage is not None
        return raw.headers["candela-id"], (usage.prompt_tokens, usage.completion_tokens)

    def count(self) -> int:
        with self.lock:
            return len(self.answered)


@pytest.fixture
def load_threads() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=30)


def _logged(query_stub: query_service_pb2_grpc.QueryServiceStub, key: str, user_id: str) -> list[Any]:
    """Every log of ``user_id``, page by page."""
    rows: list[Any] = []
    cursor = ""
    while True:
        page = query_stub.QueryRequests(
            query_pb.QueryRequestsRequest(
                filter=query_pb.RequestFilter(user_id=user_id), limit=500, sort=query_pb.RequestSort(), cursor=cursor
            ),
            metadata=bearer(key),
            timeout=10,
        )
        rows += page.requests
        if not page.HasField("next_cursor"):
            return rows
        cursor = page.next_cursor


def test_a_proxy_killed_under_load_loses_no_log_it_answered_for(
    stack: Stack,
    organization: Organization,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    load_threads: list[threading.Thread],
    tmp_path: Path,
) -> None:
    port = free_port()
    # Logs wait up to 2 s in memory before a batch goes to ingest: a kill under load always finds some
    # there (and in flight), which only the write-ahead log keeps.
    overrides = {"CANDELA_LOG_FLUSH_INTERVAL_S": "2", "CANDELA_LOG_BATCH_SIZE": "5000"}
    load = Load("", organization.key, f"durability-{uuid.uuid4().hex[:8]}")
    with services() as started:
        proxy, load.url = start_proxy(stack, tmp_path, port=port, **overrides)
        started.append(proxy)
        load_threads += [threading.Thread(target=load.run, args=(index,)) for index in range(6)]
        for thread in load_threads:
            thread.start()
        try:
            wait_until(lambda: load.count() >= 60, what="answers before the kill")
            proxy.stop(kill=True)
            before_kill = load.count()
            restarted, _ = start_proxy(stack, tmp_path, port=port, **overrides)
            started.append(restarted)
            wait_until(lambda: load.count() >= before_kill + 40, what="answers after the restart")
        finally:
            load.stop.set()
        for thread in load_threads:
            thread.join(timeout=30)

        answered = dict(load.answered)
        deadline = time.monotonic() + 60
        while True:
            rows = _logged(query_stub, organization.key, load.user_id)
            ids = [row.request_id for row in rows]
            missing = set(answered) - set(ids)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(answered)} logs a client was answered for are lost"
        for request_id in answered:
            wait_for_logged_request(query_stub, organization.key, request_id, timeout_s=5)
        assert len(ids) == len(set(ids)), "no log is doubled"
        assert "resending them" in restarted.output(), "the restarted proxy found the killed one's logs"
        for row in rows:
            if row.request_id in answered:
                assert (row.usage.prompt_tokens, row.usage.completion_tokens) == answered[row.request_id]

        # Usage counted exactly once per stored log (a request the kill interrupted may be logged too).
        expected = {
            "request_count": len(rows),
            "prompt_tokens": sum(row.usage.prompt_tokens for row in rows),
            "completion_tokens": sum(row.usage.completion_tokens for row in rows),
        }

        def counters() -> dict[str, int]:
            usage = query_stub.GetOrganizationUsage(
                query_pb.GetOrganizationUsageRequest(), metadata=bearer(organization.key), timeout=10
            )
            return {name: usage.counters.get(name, 0) for name in expected}

        wait_until(lambda: counters() == expected, timeout_s=30, what=f"usage {expected}")
        assert counters() == expected


def _ingest_down_proxy(stack: Stack, tmp_path: Path, ingest_port: int, refuse: bool) -> tuple[Service, str]:
    """A proxy whose ingest is not there (yet) and whose spool holds about a dozen logs."""
    return start_proxy(
        stack,
        tmp_path,
        CANDELA_INGEST_ADDR=f"127.0.0.1:{ingest_port}",
        CANDELA_INGEST_TIMEOUT_S="0.5",
        CANDELA_LOG_FLUSH_INTERVAL_S="0.02",
        CANDELA_SPOOL_MAX_BYTES="16000",
        CANDELA_REFUSE_WHEN_LOG_FULL=str(refuse).lower(),
    )


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/healthz", timeout=10)


def test_a_full_spool_is_reported_and_by_default_requests_go_on(
    stack: Stack, organization: Organization, tmp_path: Path
) -> None:
    with services() as started:
        proxy, url = _ingest_down_proxy(stack, tmp_path, free_port(), refuse=False)
        started.append(proxy)
        headers = {"Candela-Auth": f"Bearer {organization.key}", "Authorization": "Bearer sk-x"}
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        for _ in range(200):
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            if _health(url).status_code != 200:
                break
        health = _health(url)
        assert health.status_code == 503, "an orchestrator sees a proxy whose logs are being dropped"
        assert health.json()["status"] == "LOGS_AT_RISK"
        assert "log spool full" in health.json()["reason"]
        wait_until(
            lambda: metric_value(httpx.get(f"{url}/metrics", timeout=10).text, "candela_proxy_logs_dropped_total") > 0,
            what="dropped logs counted",
        )
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric_value(metrics, "candela_proxy_logs_at_risk") == 1
        # The operator chose availability (the default): answers go on, their logs are dropped (counted).
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10).status_code == 200


def test_a_full_spool_refuses_new_requests_when_asked_and_loses_none_it_answered(
    stack: Stack, organization: Organization, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    ingest_port = free_port()
    with services() as started:
        proxy, url = _ingest_down_proxy(stack, tmp_path, ingest_port, refuse=True)
        started.append(proxy)
        client = openai.OpenAI(
            base_url=f"{url}/v1",
            api_key="sk-test",
            max_retries=0,
            default_headers={"Candela-Auth": f"Bearer {organization.key}"},
        )
        answered: list[str] = []
        refused: openai.APIStatusError | None = None
        with client:
            for _ in range(200):
                try:
                    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
                except openai.APIStatusError as err:
                    refused = err
                    break
                answered.append(raw.headers["candela-id"])
            assert refused is not None, "the spool never filled"
            assert refused.status_code == 503
            assert isinstance(refused.body, dict)
            assert refused.body["code"] == "candela_log_unavailable", refused.body
            assert "log spool full" in refused.body["message"]
            refused_id = refused.response.headers["candela-id"]
            anthropic_refused = httpx.post(
                f"{url}/anthropic/v1/messages",
                json={"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": MESSAGES},
                headers={"Candela-Auth": f"Bearer {organization.key}", "anthropic-version": "2023-06-01"},
                timeout=10,
            )
            assert anthropic_refused.status_code == 503
            assert anthropic_refused.json()["type"] == "error", "Anthropic's error shape"
            health = _health(url)
            assert (health.status_code, health.json()["status"]) == (503, "LOGS_AT_RISK")

            started.append(start_ingest(stack, tmp_path, ingest_port))
            wait_until(lambda: _health(url).status_code == 200, timeout_s=60, what="the spool to drain")
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
            answered.append(raw.headers["candela-id"])
        for request_id in answered:
            wait_for_logged_request(query_stub, organization.key, request_id, timeout_s=60)
        # The refusal's id names no log: it was refused before anything was kept.
        with pytest.raises(grpc.RpcError) as missing:
            query_stub.GetRequest(query_pb.GetRequestRequest(request_id=refused_id), metadata=bearer(organization.key))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric_value(metrics, "candela_proxy_logs_dropped_total") == 0
        assert metric_value(metrics, "candela_proxy_logs_at_risk") == 0
