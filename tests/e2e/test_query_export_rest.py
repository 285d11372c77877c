"""POST /v1/request/export through the real Envoy transcoder: a file streamed to a REST client as it is read.

A fresh organization gets 12,000 stored requests (written into the stack's ClickHouse as the writers write
them), so the export spans 12 of the query service's 1,000-row pages and the first bytes must reach the
client while later pages are still being read.
"""

from __future__ import annotations

import csv
import io
import json
import time
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
from clickhouse_driver import Client

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_ingest.writer.rows import insert_statement
from candela_runtime.security import service_metadata
from candela_stack.stack import Stack
from tests.integration.query_support import make_rows

pytestmark = pytest.mark.e2e

ROWS = 12_000


@pytest.fixture(scope="module")
def exporter(stack: Stack, gateway_channel: grpc.Channel) -> str:
    """A read key of a new organization holding ROWS requests (each a single version)."""
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    organization = auth.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name="Export REST Co"), metadata=internal, timeout=10
    ).organization
    key = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            organization_id=organization.id, name="export", scopes=[auth_pb.API_KEY_SCOPE_READ]
        ),
        metadata=internal,
        timeout=10,
    ).secret
    # make_rows adds a stale older copy of every tenth row; the newest copy is what an export shows.
    rows = make_rows([organization.id], ROWS, seed=5)
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    try:
        client.execute(insert_statement(), rows)
    finally:
        client.disconnect()
    secret: str = key
    return secret


def _stream(stack: Stack, key: str, body: dict[str, Any]) -> Any:
    return httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/request/export",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_csv_streams_chunked_with_its_first_bytes_before_the_end(stack: Stack, exporter: str) -> None:
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    with _stream(stack, exporter, {"format": "EXPORT_FORMAT_CSV", "sort": {"field": "created_at"}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == 'attachment; filename="candela-requests.csv"'
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        body = bytearray()
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, len(chunk)))
            body += chunk
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert len(rows) == len({row["request_id"] for row in rows}) == ROWS
    assert [row["created_at"] for row in rows] == sorted(row["created_at"] for row in rows)[::-1]
    assert not any(row["model"] == "stale-copy" for row in rows)
    # Streamed, not buffered by the gateway: the client got bytes long before the last page was read.
    assert len(arrivals) > 5
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < last / 2, arrivals[:3]


def test_jsonl_with_a_filter_and_a_row_cap(stack: Stack, exporter: str) -> None:
    body = {
        "format": "EXPORT_FORMAT_JSONL",
        "filter": {"conditions": [{"field": "provider", "operator": "equals", "value": "anthropic"}]},
        "sort": {"field": "cost_usd", "ascending": True},
        "maxRows": "2500",
    }
    with _stream(stack, exporter, body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        text = response.read().decode("utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 2500
    assert {line["provider"] for line in lines} == {"anthropic"}
    costs = [line["cost_usd"] for line in lines if line["cost_usd"] is not None]
    assert costs == sorted(costs, key=Decimal)


def test_a_bad_format_is_a_400_json_error_naming_the_field(stack: Stack, exporter: str) -> None:
    with _stream(stack, exporter, {"sort": {"field": "model"}}) as response:
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
        error = json.loads(response.read())
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (details,) = error["details"]
    assert [violation["field"] for violation in details["fieldViolations"]] == ["sort.field", "format"]
    with _stream(stack, exporter, {"format": "EXPORT_FORMAT_PDF"}) as response:
        assert response.status_code == 400
