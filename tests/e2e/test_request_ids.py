"""Candela-Request-Id through the gateway: an id belongs to its organization, and the first log of an id wins.

Two organizations sending the same id are two requests: each is counted in its own usage and each reads
back its own log. An organization sending an id again is answered as usual, but its log is neither stored
nor counted: the query API and the usage totals keep the first one (the README's Headers section).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable

import asyncpg
import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Stack
from tests.e2e.conftest import wait_for_logged_request
from tests.e2e.tenancy_support import Tenant, make_tenant

pytestmark = pytest.mark.e2e


def _chat(stack: Stack, tenant: Tenant, request_id: str, user_id: str) -> httpx.Response:
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        headers={
            "Candela-Auth": f"Bearer {tenant.keys['proxy']}",
            "Candela-Request-Id": request_id,
            "Candela-User-Id": user_id,
            "Authorization": "Bearer sk-x",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["candela-id"] == request_id
    return response


def _usage(stack: Stack, tenant: Tenant) -> int:
    """Requests counted in the organization's usage totals."""

    async def read() -> int:
        connection = await asyncpg.connect(stack.postgres_dsn)
        try:
            value = await connection.fetchval(
                "SELECT coalesce(sum(request_count), 0) FROM organization_usage_daily WHERE organization_id = $1",
                uuid.UUID(tenant.organization_id),
            )
        finally:
            await connection.close()
        return int(value)

    return asyncio.run(read())


def _usage_is(stack: Stack, tenant: Tenant, wanted: int) -> bool:
    return _usage(stack, tenant) == wanted


def _reused_logs(stack: Stack) -> float:
    """Logs the writers dropped as reuses of a request id (candela_writer_request_ids_reused_total)."""
    total = 0.0
    for port in stack.writer_metrics_ports():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            total += sum(s.value for s in family.samples if s.name == "candela_writer_request_ids_reused_total")
    return total


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_request_id_is_per_organization_and_its_first_log_wins(
    stack: Stack, gateway_channel: grpc.Channel, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    first, second = make_tenant(stack, gateway_channel, "First"), make_tenant(stack, gateway_channel, "Second")
    request_id = str(uuid.uuid4())
    before = {tenant.organization_id: _usage(stack, tenant) for tenant in (first, second)}
    for tenant in (first, second):
        _chat(stack, tenant, request_id, f"{tenant.user_id}-shared-id")
    for tenant in (first, second):
        logged = wait_for_logged_request(query_stub, tenant.keys["read"], request_id)
        assert logged.request.organization_id == tenant.organization_id
        assert logged.request.user_id == f"{tenant.user_id}-shared-id", "each organization reads its own log"
        wanted = before[tenant.organization_id] + 1
        _until(functools.partial(_usage_is, stack, tenant, wanted), f"{tenant.organization_id} counted its request")

    reused_before = _reused_logs(stack)
    _chat(stack, first, request_id, "someone-else")  # answered as usual: the id is the client's to choose
    _until(lambda: _reused_logs(stack) > reused_before, "the writers dropped the reuse")
    logged = wait_for_logged_request(query_stub, first.keys["read"], request_id)
    assert logged.request.user_id == f"{first.user_id}-shared-id", "the first log of the id is kept"
    assert _usage(stack, first) == before[first.organization_id] + 1, "the reuse is not counted"
    assert _usage(stack, second) == before[second.organization_id] + 1
