"""QueryService over gRPC on real ClickHouse 18.16, Postgres and AuthService: what a caller sees.

Validation answers INVALID_ARGUMENT with one field violation per mistake (and never ClickHouse's text),
cursors page through stably and are refused when tampered with, the organization comes from the key,
aggregates over days proven free of copies (score averages included) are read without FINAL, and the
usage RPC reads the writers' counters and the limits from Postgres.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.ingest.v1 import ingest_service_pb2 as ingest_pb
from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_ingest.packing import pack_batch
from candela_ingest.writer.rows import REQUEST_COLUMNS, Row, clickhouse_row, score_rows, scores_insert_statement
from candela_query.app import QueryDeps, create_server
from candela_query.body_reader import MAX_GAP_BYTES, BodyReader
from candela_query.clickhouse import ClickHouseReader
from candela_query.config import QueryConfig
from candela_query.usage_reader import UsageReader
from candela_runtime.errors import FieldViolation, bad_request_violations, rpc_error_status
from candela_runtime.security import KeyAuthenticator
from candela_stack import seaweed
from candela_stack.stack import Component, Stack, StackConfig
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, bearer, create_key, create_organization
from tests.integration.query_support import DriverRunner, insert_rows, make_record, make_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ClickHouse 18.16 and the S3 store the bodies are read from."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE, Component.S3})
    )
    with Stack(config) as stack:
        yield stack


class RecordingReader(ClickHouseReader):
    """The service's ClickHouse reader, keeping the statements it ran (reads with FINAL or without)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[str] = []

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.statements.append(sql)
        return await super().fetch(sql, params)


class Fixture:
    """A running query service and two organizations' read keys."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        key: str,
        other_key: str,
        org: str,
        reader: RecordingReader,
    ) -> None:
        self.channel = channel
        self.stub: query_service_pb2_grpc.QueryServiceAsyncStub = query_service_pb2_grpc.QueryServiceStub(channel)
        self.key = key
        self.other_key = other_key
        self.organization_id = org
        self.reader = reader


@pytest.fixture(scope="module")
async def service(
    clickhouse: Stack,
    auth_server: AuthServer,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
    postgres_dsn: str,
) -> AsyncIterator[Fixture]:
    org = await create_organization(auth_stub, "Query Co")
    other = await create_organization(auth_stub, "Other Co")
    key = (await create_key(auth_stub, org, auth_pb.API_KEY_SCOPE_READ)).secret
    other_key = (await create_key(auth_stub, other, auth_pb.API_KEY_SCOPE_READ)).secret
    reader = RecordingReader(
        clickhouse.clickhouse_host,
        clickhouse.clickhouse_port,
        clickhouse.clickhouse_database,
        2,
        user=clickhouse.clickhouse_user,
        password=clickhouse.clickhouse_password,
    )
    loader = DriverRunner.of(clickhouse)
    insert_rows(loader.client, make_rows([org], 400, seed=3))
    loader.close()
    config = QueryConfig(
        service_token=SERVICE_TOKEN,
        auth_addr=auth_server.address,
        s3_endpoint=clickhouse.s3_endpoint,
        s3_access_key=clickhouse.s3_access_key,
        s3_secret_key=clickhouse.s3_secret_key,
        s3_bucket=clickhouse.s3_bucket,
        max_page_size=200,
    )
    usage = await UsageReader.connect(postgres_dsn)
    async with grpc.aio.insecure_channel(auth_server.address) as auth_channel:
        deps = QueryDeps(
            clickhouse=reader,
            bodies=BodyReader(
                config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.s3_bucket, config.s3_region
            ),
            auth_channel=auth_channel,
            authenticator=KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(auth_channel), SERVICE_TOKEN),
            usage=usage,
        )
        server = await create_server(config, deps)
        await server.set_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Fixture(channel, key, other_key, org, reader)
        await server.stop(1)
    await usage.close()
    reader.close()


def cond(field: str, operator: str, value: struct_pb2.Value, key: str = "") -> pb.FilterCondition:
    return pb.FilterCondition(field=field, operator=operator, value=value, property_key=key)


def text(value: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=value)


async def violations_of(call: object) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert "Code:" not in status.message
    assert "DB::Exception" not in status.message
    return [violation.field for violation in bad_request_violations(status)]


async def test_bad_input_names_every_bad_field(service: Fixture) -> None:
    request = pb.QueryRequestsRequest(
        limit=5000,
        filter=pb.RequestFilter(
            conditions=[
                cond("no_such_field", "equals", text("x")),
                cond("latency_ms", "like", text("1%")),
                cond("latency_ms", "gt", text("fast")),
                cond("property", "equals", text("x")),
            ],
            any=[pb.RequestFilter(conditions=[cond("created_at", "gte", text("yesterday"))])],
        ),
        sort=pb.RequestSort(field="model"),
        cursor="not-a-cursor",
    )
    fields = await violations_of(service.stub.QueryRequests(request, metadata=bearer(service.key)))
    assert fields == [
        "limit",
        "filter.conditions[0].field",
        "filter.conditions[1].operator",
        "filter.conditions[2].value",
        "filter.conditions[3].property_key",
        "filter.any[0].conditions[0].value",
        "sort.field",
        "cursor",
    ]


async def test_cursor_pages_and_refuses_tampering(service: Fixture) -> None:
    request = pb.QueryRequestsRequest(
        limit=70, filter=pb.RequestFilter(conditions=[cond("model", "not_equals", text("x"))])
    )
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        request.cursor = cursor
        response = await service.stub.QueryRequests(request, metadata=bearer(service.key))
        seen.extend(record.request_id for record in response.requests)
        pages += 1
        if not response.next_cursor:
            break
        cursor = response.next_cursor
        last_cursor = cursor
    assert pages == 6
    assert len(seen) == len(set(seen)) == 400
    body, signature = last_cursor.split(".")
    forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + signature
    request.cursor = forged
    assert await violations_of(service.stub.QueryRequests(request, metadata=bearer(service.key))) == ["cursor"]
    # A cursor from another query (another filter) is refused too.
    other = pb.QueryRequestsRequest(limit=70, cursor=last_cursor)
    assert await violations_of(service.stub.QueryRequests(other, metadata=bearer(service.key))) == ["cursor"]


async def test_the_key_decides_the_organization(service: Fixture) -> None:
    mine = await service.stub.QueryRequests(pb.QueryRequestsRequest(limit=3), metadata=bearer(service.key))
    assert {record.organization_id for record in mine.requests} == {service.organization_id}
    theirs = await service.stub.QueryRequests(pb.QueryRequestsRequest(), metadata=bearer(service.other_key))
    assert list(theirs.requests) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetRequest(
            pb.GetRequestRequest(request_id=mine.requests[0].request_id), metadata=bearer(service.other_key)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _chat_body(rng: random.Random, role: str, words: int) -> bytes:
    """A JSON chat body (UTF-8, not ASCII only) whose text differs from every other's."""
    vocabulary = ("the", "model", "answer", "café", "token", "prompt", "naïve", "result", "🔥", "explain")
    return json.dumps({"role": role, "content": " ".join(rng.choices(vocabulary, k=words))}).encode()


async def test_a_request_comes_back_with_its_exact_bodies_compressed_or_not(
    clickhouse: Stack, auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub, service: Fixture
) -> None:
    organization_id = await create_organization(auth_stub, "Bodies Co")
    key = (await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ)).secret
    rng = random.Random(12)
    s3 = seaweed.client(clickhouse.s3_endpoint, clickhouse.s3_access_key, clickhouse.s3_secret_key)
    # Logs packed by ingest into zstd frames: pairs sharing a frame or straddling two, a body bigger than a
    # frame, and logs with one body only.
    pairs = [(_chat_body(rng, "user", 150), _chat_body(rng, "assistant", 200)) for _ in range(60)]
    pairs[20] = (_chat_body(rng, "user", 20), _chat_body(rng, "assistant", 40_000))
    pairs[30] = (_chat_body(rng, "user", 50), b"")
    pairs[31] = (b"", _chat_body(rng, "assistant", 50))
    records = [
        ingest_pb.IngestRecord(
            record=make_record(rng, organization_id, index).record, request_body=req, response_body=res
        )
        for index, (req, res) in enumerate(pairs)
    ]
    packed = pack_batch(records, datetime.now(UTC))
    for packed_object in packed.objects:
        s3.put_object(Bucket=clickhouse.s3_bucket, Key=packed_object.key, Body=packed_object.data)
    expected = {item.record.request_id: (req, res) for item, (req, res) in zip(records, pairs, strict=True)}
    messages = list(packed.messages)
    assert len({m.request_body.frame_offset for m in messages if m.HasField("request_body")}) > 2
    # Logs stored before bodies were compressed: byte ranges of a plain object, as they always read.
    old_key = f"bodies/{organization_id}/2025/12/31/{uuid.uuid4()}.bin"
    old_object = bytearray()
    for index in range(3):
        request_body, response_body = _chat_body(rng, "user", 30), _chat_body(rng, "assistant", 40)
        message = log_record_pb2.LogMessage(record=make_record(rng, organization_id, 100 + index).record)
        message.request_body.MergeFrom(
            log_record_pb2.BodyRef(object_key=old_key, offset=len(old_object), length=len(request_body))
        )
        old_object += request_body
        if index == 2:
            old_object += bytes(MAX_GAP_BYTES + 1)  # this pair too far apart for one GET
        message.response_body.MergeFrom(
            log_record_pb2.BodyRef(object_key=old_key, offset=len(old_object), length=len(response_body))
        )
        old_object += response_body
        messages.append(message)
        expected[message.record.request_id] = (request_body, response_body)
    s3.put_object(Bucket=clickhouse.s3_bucket, Key=old_key, Body=bytes(old_object))
    # A log whose frame is not what its object holds.
    corrupt = log_record_pb2.LogMessage(record=make_record(rng, organization_id, 200).record)
    corrupt.request_body.MergeFrom(messages[0].request_body)
    corrupt.request_body.frame_offset += 1
    messages.append(corrupt)
    loader = DriverRunner.of(clickhouse)
    insert_rows(loader.client, [clickhouse_row(message, version=1) for message in messages])
    loader.close()

    for request_id, (request_body, response_body) in expected.items():
        response = await service.stub.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=bearer(key))
        assert (response.request_body, response.response_body) == (request_body.decode(), response_body.decode())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetRequest(pb.GetRequestRequest(request_id=corrupt.record.request_id), metadata=bearer(key))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "zstd" not in (caught.value.details() or "")


async def test_aggregates_sessions_and_users_over_grpc(service: Fixture) -> None:
    start = pb.AggregateRequestsRequest().start
    start.FromSeconds(1_767_225_600)
    end = pb.AggregateRequestsRequest().end
    end.FromSeconds(1_767_225_600 + 11 * 86_400)
    response = await service.stub.AggregateRequests(
        pb.AggregateRequestsRequest(
            start=start, end=end, group_by=[pb.GROUP_BY_MODEL, pb.GROUP_BY_TIME], time_bucket=pb.TIME_BUCKET_DAY
        ),
        metadata=bearer(service.key),
    )
    assert sum(group.metrics.request_count for group in response.groups) == 400
    assert all(group.keys[1].endswith("T00:00:00Z") for group in response.groups)
    total = await service.stub.AggregateRequests(
        pb.AggregateRequestsRequest(start=start, end=end), metadata=bearer(service.key)
    )
    [only] = total.groups
    assert Decimal(only.metrics.cost_usd) == sum(Decimal(g.metrics.cost_usd) for g in response.groups)
    assert only.metrics.error_rate == pytest.approx(only.metrics.error_count / 400)
    bad = pb.AggregateRequestsRequest(start=end, end=start, group_by=[pb.GROUP_BY_PROPERTY, pb.GROUP_BY_TIME])
    assert await violations_of(service.stub.AggregateRequests(bad, metadata=bearer(service.key))) == [
        "end",
        "property_key",
        "time_bucket",
    ]
    sessions = await service.stub.QuerySessions(pb.QuerySessionsRequest(limit=5), metadata=bearer(service.key))
    assert len(sessions.sessions) == 5
    first = sessions.sessions[0]
    tree = await service.stub.GetSession(
        pb.GetSessionRequest(session_id=first.session_id), metadata=bearer(service.key)
    )
    assert tree.session.metrics == first.metrics
    assert tree.root.metrics.request_count == first.metrics.request_count
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetSession(pb.GetSessionRequest(session_id="nope"), metadata=bearer(service.key))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    users = await service.stub.QueryUserMetrics(pb.QueryUserMetricsRequest(), metadata=bearer(service.key))
    assert sum(user.metrics.request_count for user in users.users) == 400


async def test_score_averages_over_days_proven_free_of_copies_are_read_without_final(
    service: Fixture, clickhouse: Stack, auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub
) -> None:
    """AggregateRequests hands its span to the score averages too: over days holding one row per request
    they read the requests without FINAL, and average each score over the requests that have it."""
    org = await create_organization(auth_stub, "Scored Co")
    key = (await create_key(auth_stub, org, auth_pb.API_KEY_SCOPE_READ)).secret
    rows = [row for row in make_rows([org], 60, seed=19) if row[-1] == 2]  # no copies
    rng = random.Random(19)
    scores: list[Row] = []
    by_model: dict[str, list[float]] = {}
    for row in rows[::2]:
        values = dict(zip(REQUEST_COLUMNS, row, strict=True))
        update = log_record_pb2.LogUpdate(
            organization_id=org, request_id=str(values["request_id"]), scores={"accuracy": rng.random()}
        )
        update.updated_at.seconds = 1_780_000_000
        scores += score_rows(update)
        by_model.setdefault(str(values["model"]), []).append(update.scores["accuracy"])
    loader = DriverRunner.of(clickhouse)
    insert_rows(loader.client, rows)
    loader.client.execute(scores_insert_statement(), scores)
    loader.close()
    request = pb.AggregateRequestsRequest(group_by=[pb.GROUP_BY_MODEL])
    request.start.FromSeconds(1_767_225_600)
    request.end.FromSeconds(1_767_225_600 + 11 * 86_400)
    service.reader.statements.clear()
    response = await service.stub.AggregateRequests(request, metadata=bearer(key))
    got = {
        group.keys[0]: (round(group.metrics.score_averages["accuracy"], 9), group.metrics.score_counts["accuracy"])
        for group in response.groups
        if "accuracy" in group.metrics.score_counts
    }
    assert got == {model: (round(sum(values) / len(values), 9), len(values)) for model, values in by_model.items()}
    assert sum(group.metrics.request_count for group in response.groups) == len(rows)
    reads = [sql for sql in service.reader.statements if "avg(score_value)" in sql]
    assert len(reads) == 1, reads
    assert "FINAL" not in reads[0], "the proven days' scores were averaged with FINAL"


async def test_usage_against_limits_from_postgres(service: Fixture, postgres_dsn: str) -> None:
    today = datetime.now(UTC).date()
    connection = await asyncpg.connect(postgres_dsn)
    try:
        org = uuid.UUID(service.organization_id)
        await connection.execute(
            "INSERT INTO organization_usage_daily (organization_id, day, request_count, prompt_tokens,"
            " completion_tokens, cost_usd, unpriced_count) VALUES ($1, $2, 7, 70, 700, 0.000000000123, 1),"
            " ($1, $2 - 100, 5, 0, 0, 1, 0)",
            org,
            today,
        )
        await connection.execute("UPDATE organizations SET max_stored_logs = 10 WHERE id = $1", org)
        await connection.execute(
            "INSERT INTO organization_log_counters (organization_id, stored_logs, dropped_over_limit, expired_logs)"
            " VALUES ($1, 10, 2, 3)",
            org,
        )
    finally:
        await connection.close()
    usage = await service.stub.GetOrganizationUsage(
        pb.GetOrganizationUsageRequest(days=7), metadata=bearer(service.key)
    )
    assert [(d.day, d.request_count, d.cost_usd) for d in usage.days] == [(today.isoformat(), 7, "0.000000000123")]
    limits = {limit.name: limit for limit in usage.limits}
    assert (limits["max_stored_logs"].limited, limits["max_stored_logs"].limit) == (True, 10)
    # The writers' own count of kept logs, not the requests counted in usage.
    assert limits["max_stored_logs"].used == 10
    assert not limits["retention_days"].limited
    assert limits["retention_days"].used == 101
    assert usage.counters["request_count"] == 12
    assert usage.counters["unpriced_count"] == 1
    assert (usage.counters["dropped_over_limit"], usage.counters["expired_logs"]) == (2, 3)
    assert await violations_of(
        service.stub.GetOrganizationUsage(pb.GetOrganizationUsageRequest(days=-1), metadata=bearer(service.key))
    ) == ["days"]


async def test_a_clickhouse_failure_is_internal_without_its_text(
    clickhouse: Stack, auth_server: AuthServer, service: Fixture
) -> None:
    broken = ClickHouseReader(
        clickhouse.clickhouse_host,
        clickhouse.clickhouse_port,
        "no_such_database",
        1,
        user=clickhouse.clickhouse_user,
        password=clickhouse.clickhouse_password,
    )
    config = QueryConfig(
        service_token=SERVICE_TOKEN,
        auth_addr=auth_server.address,
        s3_endpoint="http://127.0.0.1:1",
        s3_access_key="unused",
        s3_secret_key="unused",
    )
    async with grpc.aio.insecure_channel(auth_server.address) as auth_channel:
        deps = QueryDeps(
            clickhouse=broken,
            bodies=BodyReader(config.s3_endpoint, "unused", "unused", "candela", "us-east-1"),
            auth_channel=auth_channel,
            authenticator=KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(auth_channel), SERVICE_TOKEN),
        )
        server = await create_server(config, deps)
        await server.set_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = query_service_pb2_grpc.QueryServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.QueryRequests(pb.QueryRequestsRequest(), metadata=bearer(service.key))
        finally:
            await server.stop(1)
            broken.close()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "no_such_database" not in details
    assert "DB::Exception" not in details
    assert "Code:" not in details


async def _described_violations(call: object) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_error_status(caught.value)
    assert status is not None
    return {violation.field: violation.description for violation in bad_request_violations(status)}


STORED_RANGE = "between 1970-01-01T00:00:00Z and 2106-02-07T06:28:15Z (what ClickHouse's DateTime holds)"


async def test_times_outside_what_clickhouse_holds_are_invalid_argument_naming_the_range(service: Fixture) -> None:
    """Once INTERNAL (protobuf's conversion raised, or ClickHouse refused the bound)."""
    day = 1_767_225_600
    huge, far, before_epoch = (
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=253_402_300_799),  # 9999-12-31T23:59:59Z
        timestamp_pb2.Timestamp(seconds=-1),
    )
    negative_nanos = timestamp_pb2.Timestamp(seconds=day, nanos=-5)
    ok = timestamp_pb2.Timestamp(seconds=day)
    key = bearer(service.key)

    requests = service.stub.QueryRequests(
        pb.QueryRequestsRequest(filter=pb.RequestFilter(created_after=huge, created_before=negative_nanos)),
        metadata=key,
    )
    assert await _described_violations(requests) == {
        "filter.created_after": f"must be {STORED_RANGE}, got {2**62} seconds since the epoch",
        "filter.created_before.nanos": "must be 0 to 999999999, got -5",
    }
    nested = pb.RequestFilter(all=[pb.RequestFilter(created_before=far)])
    requests = service.stub.QueryRequests(pb.QueryRequestsRequest(filter=nested), metadata=key)
    assert list(await _described_violations(requests)) == ["filter.all[0].created_before"]

    aggregate = service.stub.AggregateRequests(pb.AggregateRequestsRequest(start=ok, end=far), metadata=key)
    assert await _described_violations(aggregate) == {
        "end": f"must be {STORED_RANGE}, got 253402300799 seconds since the epoch"
    }
    aggregate = service.stub.AggregateRequests(pb.AggregateRequestsRequest(start=negative_nanos, end=ok), metadata=key)
    assert list(await _described_violations(aggregate)) == ["start.nanos"]
    sessions = service.stub.QuerySessions(pb.QuerySessionsRequest(start=before_epoch, end=huge), metadata=key)
    assert list(await _described_violations(sessions)) == ["start", "end"]
    users = service.stub.QueryUserMetrics(pb.QueryUserMetricsRequest(end=far), metadata=key)
    assert list(await _described_violations(users)) == ["end"]
    # The ends of the range themselves are accepted.
    first, last = timestamp_pb2.Timestamp(seconds=0), timestamp_pb2.Timestamp(seconds=2**32 - 1)
    found = await service.stub.QueryRequests(
        pb.QueryRequestsRequest(filter=pb.RequestFilter(created_after=first, created_before=last), limit=1),
        metadata=key,
    )
    assert len(found.requests) == 1


def _nested_filter_request(levels: int) -> bytes:
    """A QueryRequestsRequest whose filter nests ``levels`` sub-filters in ``all`` (field 9), as bytes:
    the protobuf runtime refuses to build one this deep."""
    inner = b""
    for _ in range(levels):
        inner = b"\x4a" + _varint(len(inner)) + inner
    return b"\x0a" + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_filters_nested_past_any_limit_are_invalid_argument_naming_it(service: Fixture) -> None:
    """Past protobuf's 100 levels the request does not even parse: once UNKNOWN, now INVALID_ARGUMENT."""
    call = service.channel.unary_unary(
        "/candela.query.v1.QueryService/QueryRequests", request_serializer=bytes, response_deserializer=bytes
    )
    for levels in (101, 5000):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(_nested_filter_request(levels), metadata=bearer(service.key), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_error_status(caught.value)
        assert status is not None
        assert bad_request_violations(status) == [
            FieldViolation("filter", "nests messages more than 100 levels deep (protobuf's limit)")
        ]
    # Below protobuf's limit, the query's own (much lower) limit answers.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(_nested_filter_request(99), metadata=bearer(service.key), timeout=10)
    status = rpc_error_status(caught.value)
    assert status is not None
    [violation] = bad_request_violations(status)
    assert violation.description == "filters may nest at most 8 levels"
