"""Faults under load: SDK-shaped traffic through the gateway while, in turn, each part of the mesh dies.

Each phase gets an organization of its own and puts bounded load through Envoy (chat completions, half of
them streamed) while one fault happens: a writer SIGKILLed, ClickHouse stopped, ingest SIGKILLed, the
proxy SIGKILLed, the broker restarted (on its durable s3 engine), the proxy's spool filled. Then it
compares every ``Candela-Id`` a client was told about (a 200 whose answer arrived whole) with what the
query API returns for that organization, and asserts: none missing, none doubled, usage exact (the
organization's usage counters equal what its rows add up to).

A request whose answer did not arrive whole (the connection died with the proxy, Envoy answered 503) was
never acknowledged; the proxy may still have logged it, so the check is "every acknowledged id is there",
plus exactness of what is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as query_pb
from candela.query.v1 import query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.stack import Component, Stack, StackConfig
from tests.e2e.proxy_support import wait_until

pytestmark = pytest.mark.e2e

WORKERS = 6
"""Concurrent clients during a phase."""
MAX_REQUESTS = 400
"""Most requests one phase has acknowledged before its clients stop (bounds the load whatever the pace)."""
SETTLE_S = 120.0
"""How long a phase waits for every acknowledged log to become visible."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole mesh with the broker on its durable s3 engine and quick retries everywhere."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("faults-under-load"),
        kafka_engine="s3",
        env={
            "CANDELA_RETRY_MAX_BACKOFF_S": "1",
            "CANDELA_KAFKA_SESSION_TIMEOUT_MS": "3000",
            "CANDELA_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "CANDELA_BATCH_MAX_WAIT_MS": "100",
            "CANDELA_INGEST_TIMEOUT_S": "2",
            # A spool of a few dozen logs, and the operator's choice to refuse rather than drop: the
            # spool-filling drill must end in 503s, never in an answered request whose log is lost.
            "CANDELA_SPOOL_MAX_BYTES": "64000",
            "CANDELA_REFUSE_WHEN_LOG_FULL": "true",
        },
    )
    with Stack(config) as running:
        yield running


@dataclass
class Tenant:
    """One phase's organization and its proxy+read key."""

    organization_id: str
    api_key: str


def _tenant(stack: Stack, name: str) -> Tenant:
    metadata = service_metadata(stack.service_token)
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        organization = auth.CreateOrganization(
            auth_pb.CreateOrganizationRequest(name=name), metadata=metadata, timeout=10
        ).organization
        created = auth.CreateApiKey(
            auth_pb.CreateApiKeyRequest(
                organization_id=organization.id,
                name=f"{name} load",
                scopes=[auth_pb.API_KEY_SCOPE_PROXY, auth_pb.API_KEY_SCOPE_READ],
            ),
            metadata=metadata,
            timeout=10,
        )
    return Tenant(organization.id, created.secret)


@dataclass
class Load:
    """Clients sending chat completions through the gateway; remembers what each was told."""

    stack: Stack
    tenant: Tenant
    acknowledged: list[str] = field(default_factory=list)
    """Candela-Id of every 200 whose answer arrived whole."""
    failures: int = 0
    """Requests that did not get a whole 200 (refused, cut off, or the connection failed)."""
    sent: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(self, client: httpx.AsyncClient, streamed: bool) -> bool:
        """One request; True when it was acknowledged (a 200 whose answer arrived whole)."""
        self.sent += 1
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"fault drill {self.sent}"}],
            "stream": streamed,
        }
        headers = {"Authorization": "Bearer sk-test", "Candela-Auth": f"Bearer {self.tenant.api_key}"}
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                answer = await response.aread()
        except httpx.HTTPError:
            self.failures += 1
            return False
        whole = b"data: [DONE]" in answer if streamed else answer.rstrip().endswith(b"}")
        if response.status_code != 200 or not whole:
            self.failures += 1
            return False
        self.acknowledged.append(response.headers["Candela-Id"])
        return True

    async def _worker(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.stack.gateway_url, timeout=15) as client:
            while not self._stopping.is_set() and len(self.acknowledged) < MAX_REQUESTS:
                if not await self._one(client, streamed=(self.sent + index) % 2 == 0):
                    await asyncio.sleep(0.2)  # the fault is on: no point hammering it

    async def wait_acknowledged(self, count: int, timeout_s: float = 60.0) -> None:
        """Returns once at least ``count`` requests were acknowledged (or the load's budget is spent)."""
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < min(count, MAX_REQUESTS):
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} of {count} requests served"
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        """Load for the duration of the block, plus a tail of served requests once the fault has healed."""
        workers = [asyncio.create_task(self._worker(index)) for index in range(WORKERS)]
        try:
            yield self
            await self.wait_acknowledged(len(self.acknowledged) + 30, timeout_s=90)
        finally:
            self._stopping.set()
            await asyncio.wait_for(asyncio.gather(*workers), 60)


def _logged_ids(stack: Stack, tenant: Tenant) -> list[str]:
    """Every request id the query API returns for the tenant, page by page (duplicates kept)."""
    metadata = (("authorization", f"Bearer {tenant.api_key}"),)
    ids: list[str] = []
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        query = query_service_pb2_grpc.QueryServiceStub(channel)
        cursor = ""
        while True:
            page = query.QueryRequests(
                query_pb.QueryRequestsRequest(limit=500, cursor=cursor), metadata=metadata, timeout=15
            )
            ids.extend(record.request_id for record in page.requests)
            if not page.HasField("next_cursor"):
                return ids
            cursor = page.next_cursor


def _usage(stack: Stack, tenant: Tenant) -> tuple[dict[str, int], query_pb.RequestMetrics]:
    """The organization's usage counters and the totals of its rows, both from the query API."""
    metadata = (("authorization", f"Bearer {tenant.api_key}"),)
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        query = query_service_pb2_grpc.QueryServiceStub(channel)
        usage = query.GetOrganizationUsage(query_pb.GetOrganizationUsageRequest(), metadata=metadata, timeout=15)
        request = query_pb.AggregateRequestsRequest()
        request.start.FromSeconds(int(time.time()) - 3600)
        request.end.FromSeconds(int(time.time()) + 3600)
        groups = query.AggregateRequests(request, metadata=metadata, timeout=15).groups
    return dict(usage.counters), groups[0].metrics if groups else query_pb.RequestMetrics()


async def _assert_nothing_lost(stack: Stack, load: Load) -> None:
    """Every acknowledged id is logged once, and the usage counters add up to exactly what is logged."""
    assert load.acknowledged, "the phase served requests"
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) == len(load.acknowledged), "every response had an id of its own"
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            logged = await asyncio.to_thread(_logged_ids, stack, load.tenant)
            counters, totals = await asyncio.to_thread(_usage, stack, load.tenant)
        except grpc.RpcError as error:  # the store that was down may still be coming back
            if time.monotonic() > deadline:
                raise AssertionError(f"the query API kept failing: {error.code()}") from error
            await asyncio.sleep(0.5)
            continue
        missing = acknowledged - set(logged)
        settled = not missing and counters.get("request_count", 0) == len(set(logged)) == totals.request_count
        if settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged logs missing, e.g. {sorted(missing)[:3]}"
    assert len(logged) == len(set(logged)), "no log is listed twice"
    assert totals.request_count == len(logged), "aggregates count each log once"
    assert counters.get("request_count", 0) == len(logged), "usage counts each log once"
    assert counters.get("prompt_tokens", 0) == totals.prompt_tokens, "usage tokens equal the rows' tokens"
    assert counters.get("completion_tokens", 0) == totals.completion_tokens


async def _drill(stack: Stack, name: str, fault: Callable[[], None], warm_up: int = 40) -> Load:
    tenant = await asyncio.to_thread(_tenant, stack, name)
    load = Load(stack, tenant)
    async with load.running():
        await load.wait_acknowledged(warm_up)
        await asyncio.to_thread(fault)
    await _assert_nothing_lost(stack, load)
    return load


def _restart(stack: Stack, component: Component, *, kill: bool) -> Callable[[], None]:
    def fault() -> None:
        stack.stop_component(component, kill=kill)
        time.sleep(1.0)  # load keeps coming while it is down
        stack.start_component(component)

    return fault


async def test_writer_sigkilled(stack: Stack) -> None:
    await _drill(stack, "writer-kill", _restart(stack, Component.WRITER, kill=True))


async def test_clickhouse_stopped(stack: Stack) -> None:
    await _drill(stack, "clickhouse-stop", _restart(stack, Component.CLICKHOUSE, kill=False))


async def test_ingest_sigkilled(stack: Stack) -> None:
    await _drill(stack, "ingest-kill", _restart(stack, Component.INGEST, kill=True))


async def test_proxy_sigkilled(stack: Stack) -> None:
    load = await _drill(stack, "proxy-kill", _restart(stack, Component.PROXY, kill=True))
    assert load.failures > 0, "the kill cut some requests off: the drill hit the proxy mid-load"


async def test_broker_restarted(stack: Stack) -> None:
    assert stack.config.kafka_engine == "s3", "a restart keeps what the broker acknowledged only on a durable engine"
    await _drill(stack, "broker-restart", _restart(stack, Component.KAFKA, kill=True))


async def test_spool_filled(stack: Stack) -> None:
    """Ingest away long enough for the proxy's spool to fill: healthz says so, new requests get 503s, and
    every request answered before, during and after is logged once ingest is back."""
    seen: list[str] = []

    def health() -> str:
        status = str(httpx.get(f"{stack.proxy_url}/healthz", timeout=5).json()["status"])
        seen.append(status)
        return status

    def fault() -> None:
        stack.stop_component(Component.INGEST)
        try:
            wait_until(lambda: health() == "LOGS_AT_RISK", timeout_s=60, what="the spool to fill")
        finally:
            stack.start_component(Component.INGEST)
        wait_until(lambda: health() == "SERVING", timeout_s=60, what="the spool to drain")

    load = await _drill(stack, "spool-full", fault)
    assert "LOGS_AT_RISK" in seen
    assert load.failures > 0, "requests whose log could not be kept were refused"
