"""The writer's ClickHouse inserts on ClickHouse 18.16: rows read back as written, bad rows refused.

ClickHouseRowSink encodes its insert blocks itself (candela_ingest.writer.native) and sends them on the
driver's connection; here a real server takes them, and the driver's own reader (which shares no code with
the encoder) reads them back.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_driver import Client

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.errors import StoreRejected, StoreUnavailable
from candela_ingest.writer.rows import REQUEST_COLUMNS, SCORE_COLUMNS, RequestColumns, request_columns, score_rows
from candela_schema.requests_table import table_order
from candela_stack.stack import Component, Stack, StackConfig
from tests.unit.test_ingest_native_encoding import comparable, varied_messages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ClickHouse 18.16 server with the shipped migrations."""
    config = StackConfig.for_tests(tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE}))
    with Stack(config) as stack:
        yield stack


def _sink(stack: Stack, table: str = "requests") -> ClickHouseRowSink:
    return ClickHouseRowSink(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
        table=table,
    )


@pytest.fixture
async def sink(clickhouse: Stack) -> AsyncIterator[ClickHouseRowSink]:
    rows = _sink(clickhouse)
    yield rows
    await rows.close()


def _query(stack: Stack, sql: str, params: dict[str, Any] | None = None, **settings: Any) -> list[tuple[Any, ...]]:
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
        settings=settings,
    )
    try:
        rows: list[tuple[Any, ...]] = client.execute(sql, params)
        return rows
    finally:
        client.disconnect()


def _types(stack: Stack, table: str) -> dict[str, str]:
    return {str(row[0]): str(row[1]) for row in _query(stack, f"DESCRIBE TABLE {table}")}


def _read_back(stack: Stack, table: str, organizations: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The table's rows of ``organizations`` by request id, each value in the form it was written."""
    types = _types(stack, table)
    found = _query(
        stack,
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM {table} WHERE organization_id IN %(organizations)s",
        {"organizations": tuple(uuid.UUID(organization) for organization in organizations)},
    )
    return {
        str(row[REQUEST_COLUMNS.index("request_id")]): {
            name: comparable(types[name], value) for name, value in zip(REQUEST_COLUMNS, row, strict=True)
        }
        for row in found
    }


def _written(stack: Stack, table: str, columns: RequestColumns) -> dict[str, dict[str, Any]]:
    """``columns`` as rows by (lower-case) request id, each value in the form it reads back."""
    types = _types(stack, table)
    rows = columns.rows()
    return {
        row[REQUEST_COLUMNS.index("request_id")].lower(): {
            name: comparable(types[name], value) for name, value in zip(REQUEST_COLUMNS, row, strict=True)
        }
        for row in rows
    }


def test_the_migrations_make_the_declared_table_on_clickhouse_18(clickhouse: Stack) -> None:
    """The shipped migrations on the stack's 18.16 server make the table candela_schema.requests_table declares
    (for modern ClickHouse: tests/unit/test_schema_requests_table.py, on chDB)."""
    version = str(_query(clickhouse, "SELECT version()")[0][0])
    assert version.startswith("18.16."), version
    described = [(str(row[0]), str(row[1])) for row in _query(clickhouse, "DESCRIBE TABLE requests")]
    assert described == [(column.name, column.type_on(version)) for column in table_order()]


def _organizations() -> list[str]:
    return [str(uuid.uuid4()) for _ in range(3)]


async def test_every_column_reads_back_as_written(clickhouse: Stack, sink: ClickHouseRowSink) -> None:
    organizations = _organizations()
    columns = request_columns(varied_messages(400, organizations), version=2**64 - 1)
    count = columns.count
    # The columns' limits, where the messages do not reach them.
    edges: dict[str, list[Any]] = {
        "cost_usd": [Decimal("999999.999999999999"), Decimal("-999999.999999999999"), Decimal("1E-12"), Decimal(0)],
        "status_code": [-(2**31), 2**31 - 1, 0, 200],
        "request_body_offset": [2**64 - 1, 0, 1, 2**63],
        "attempt_latencies_ms": [[-(2**63), 2**63 - 1], [], [0] * 300, [5]],
        "created_at": [0, 2**32 - 1, 1_764_720_000, 1],
    }
    for name, values in edges.items():
        columns = columns.replaced(name, (values * count)[:count])
    await sink.insert(columns)
    assert _read_back(clickhouse, "requests", organizations) == _written(clickhouse, "requests", columns)


async def test_a_batch_larger_than_the_drivers_write_buffer(clickhouse: Stack, sink: ClickHouseRowSink) -> None:
    organizations = _organizations()
    columns = request_columns(varied_messages(5000, organizations), version=1)
    await sink.insert(columns)
    assert _read_back(clickhouse, "requests", organizations) == _written(clickhouse, "requests", columns)


async def test_scores_read_back_as_written(clickhouse: Stack, sink: ClickHouseRowSink) -> None:
    organization = str(uuid.uuid4())
    update = log_record_pb2.LogUpdate(
        request_id=str(uuid.uuid4()), organization_id=organization, scores={"accuracy": 0.25, "é": -1.5}, feedback=True
    )
    update.updated_at.FromDatetime(datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC))
    rows = score_rows(update)
    await sink.insert_scores(rows)
    found = _query(
        clickhouse,
        f"SELECT {', '.join(SCORE_COLUMNS)} FROM request_scores WHERE organization_id = %(o)s ORDER BY name",
        {"o": uuid.UUID(organization)},
    )
    types = _types(clickhouse, "request_scores")
    read = [
        tuple(comparable(types[name], value) for name, value in zip(SCORE_COLUMNS, row, strict=True)) for row in found
    ]
    assert read == [tuple(comparable(types[n], v) for n, v in zip(SCORE_COLUMNS, row, strict=True)) for row in rows]


def _copy_of_requests(stack: Stack, replace: dict[str, str], **settings: Any) -> str:
    """A new table with the requests table's columns, some of them of another type."""
    table = f"requests_copy_{secrets.token_hex(4)}"
    ddl = str(_query(stack, "SHOW CREATE TABLE requests")[0][0])
    ddl = ddl.replace(f"{stack.clickhouse_database}.requests", f"{stack.clickhouse_database}.{table}", 1)
    for column, column_type in replace.items():
        ddl, replaced = re.subn(rf"\b{column} String\b", f"{column} {column_type}", ddl, count=1)
        assert replaced == 1, column
    _query(stack, ddl, **settings)
    return table


async def test_types_left_to_the_driver_still_insert(clickhouse: Stack) -> None:
    # Nullable and LowCardinality (the modern servers' provider column) are encoded by the driver.
    table = await asyncio.to_thread(
        _copy_of_requests,
        clickhouse,
        {"provider": "LowCardinality(String)", "error": "Nullable(String)"},
        allow_experimental_low_cardinality_type=1,
    )
    organizations = _organizations()
    columns = request_columns(varied_messages(50, organizations), version=1)
    columns = columns.replaced("error", [None if index % 2 else "failed" for index in range(50)])
    rows = _sink(clickhouse, table)
    try:
        await rows.insert(columns)
    finally:
        await rows.close()
    assert _read_back(clickhouse, table, organizations) == _written(clickhouse, table, columns)


async def test_rows_that_do_not_fit_are_rejected_and_the_next_insert_works(clickhouse: Stack) -> None:
    # The table of the writer's poison-message test: a model column of 11 bytes at most.
    table = await asyncio.to_thread(_copy_of_requests, clickhouse, {"model": "FixedString(11)"})
    organizations = _organizations()
    good = request_columns(varied_messages(20, organizations), version=1)
    good = good.replaced("model", ["gpt-4o-mini", "", "é"] * 6 + ["x", "y"])
    bad_rows: list[tuple[str, list[Any]]] = [
        ("model", ["not-in-the-enum"] * 20),
        ("status_code", [2**31] * 20),
        ("request_body_length", [0] * 19 + [-1]),
        ("organization_id", ["not-a-uuid"] * 20),
        ("cost_usd", [Decimal("0.0000000000001")] * 20),
    ]
    rows = _sink(clickhouse, table)
    try:
        for name, values in bad_rows:
            bad = good.replaced(name, values)
            with pytest.raises(StoreRejected, match=name):
                await rows.insert(bad)
        # A server error is still the server's: an unknown table is unavailable, not rejected data.
        missing = _sink(clickhouse, "no_such_table")
        try:
            with pytest.raises(StoreUnavailable, match="code 60"):
                await missing.insert(good)
        finally:
            await missing.close()
        await rows.insert(good)  # the connection dropped by the refusals is made again
    finally:
        await rows.close()
    read = _read_back(clickhouse, table, organizations)
    padded = {request_id: {**row, "model": row["model"].rstrip("\x00")} for request_id, row in read.items()}
    assert padded == _written(clickhouse, table, good)
    assert _query(clickhouse, f"SELECT count() FROM {table}") == [(20,)], "nothing of the refused inserts landed"
