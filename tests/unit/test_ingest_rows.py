"""LogMessage -> ClickHouse ``requests`` row, and usage aggregation for the Postgres counters."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire.validation import check_log_message
from candela_ingest.writer.daily_usage import BatchRequests, aggregate_usage, counted_oldest_first, ledger_columns
from candela_ingest.writer.rows import (
    NO_FIRST_TOKEN,
    REQUEST_COLUMNS,
    clickhouse_row,
    exact_cost,
    insert_statement,
    request_columns,
)
from candela_runtime.errors import Violations
from candela_schema.requests_table import REQUESTS_COLUMNS

pytestmark = pytest.mark.unit

ORG = str(uuid.uuid4())
CREATED = datetime(2026, 3, 7, 23, 59, 59, 654321, tzinfo=UTC)
MIGRATIONS = Path(__file__).parents[2] / "schema/src/candela_schema/migrations/clickhouse"
MIGRATION = MIGRATIONS / "0001_requests.sql"
ADDED_COLUMNS = sorted({MIGRATIONS / column.added_by for column in REQUESTS_COLUMNS} - {MIGRATION})
"""The migrations that ALTER columns into ``requests`` after the first."""


def _record(**fields: Any) -> log_record_pb2.LogRecord:
    record = log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), organization_id=ORG, **fields)
    if not record.HasField("created_at"):
        record.created_at.FromDatetime(CREATED)
    return record


def _batch(records: list[log_record_pb2.LogRecord]) -> BatchRequests:
    return BatchRequests.of(request_columns([log_record_pb2.LogMessage(record=record) for record in records], 1))


def _usage(records: list[log_record_pb2.LogRecord]) -> list[Any]:
    batch = _batch(records)
    return aggregate_usage(batch, batch.positions)


def _row(message: log_record_pb2.LogMessage, version: int = 42) -> dict[str, Any]:
    return dict(zip(REQUEST_COLUMNS, clickhouse_row(message, version), strict=True))


def test_columns_match_the_migration() -> None:
    declared = []
    for line in MIGRATION.read_text().splitlines():
        words = line.strip().split()
        if len(words) >= 2 and not line.strip().startswith(("--", "CREATE", ")", "PARTITION", "ORDER")):
            declared.append(words[0])
    for migration in ADDED_COLUMNS:
        for line in migration.read_text().splitlines():
            words = line.strip().split()
            if words[:2] == ["ADD", "COLUMN"]:
                declared.append(words[2])
    # The columns added later come before `version` in a row, so `version` stays the last value.
    assert list(REQUEST_COLUMNS) == [name for name in declared if name != "version"] + ["version"]
    assert insert_statement() == f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES"


def test_full_row_mapping() -> None:
    record = _record(
        api_key_id=str(uuid.uuid4()),
        provider="anthropic",
        model="claude-sonnet-4",
        response_model="claude-sonnet-4-20250514",
        path="/v1/messages",
        status_code=200,
        streamed=True,
        latency_ms=1500,
        time_to_first_token_ms=230,
        usage=log_record_pb2.TokenUsage(
            prompt_tokens=100,
            completion_tokens=50,
            total_tokens=150,
            cache_read_tokens=10,
            cache_write_tokens=5,
            reasoning_tokens=7,
            audio_prompt_tokens=1,
            audio_completion_tokens=2,
        ),
        cost_usd="0.0012345678901234",
        user_id="user-1",
        session_id="s-1",
        session_path="/a/b",
        session_name="chat",
        properties={"env": "prod", "app": "web"},
        prompt_id="greeting",
        prompt_version="3",
        cache_hit=True,
        finish_reason="end_turn",
        target_url="https://fallback.example/v1",
        cost_saved_usd="0.0000000000015",
        attempts=[
            log_record_pb2.UpstreamAttempt(target_url="", status_code=0, error="connection refused", latency_ms=3),
            log_record_pb2.UpstreamAttempt(target_url="https://fallback.example/v1", status_code=200, latency_ms=9),
        ],
        prompt_inputs={"topic": "tides", "city": "Brest"},
        usage_clamped=True,
        response_body_over_limit=True,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    message = log_record_pb2.LogMessage(
        record=record,
        request_body=log_record_pb2.BodyRef(
            object_key="bodies/x/1.zst", offset=10, length=20, frame_offset=500, frame_length=70
        ),
        response_body=log_record_pb2.BodyRef(
            object_key="bodies/x/1.zst", offset=0, length=40, frame_offset=570, frame_length=30
        ),
    )
    row = _row(message, version=1_700_000_000_000_001)
    assert row == {
        "organization_id": ORG,
        "request_id": record.request_id,
        "created_at": int(CREATED.timestamp()),
        "created_at_us": int(CREATED.timestamp()) * 1_000_000 + 654321,
        "api_key_id": record.api_key_id,
        "provider": "anthropic",
        "model": "claude-sonnet-4",
        "response_model": "claude-sonnet-4-20250514",
        "path": "/v1/messages",
        "status_code": 200,
        "error": "",
        "streamed": 1,
        "latency_ms": 1500,
        "time_to_first_token_ms": 230,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "cache_read_tokens": 10,
        "cache_write_tokens": 5,
        "reasoning_tokens": 7,
        "audio_prompt_tokens": 1,
        "audio_completion_tokens": 2,
        "cost_usd": Decimal("0.001234567890"),
        "priced": 1,
        "user_id": "user-1",
        "session_id": "s-1",
        "session_path": "/a/b",
        "session_name": "chat",
        "property_keys": ["app", "env"],
        "property_values": ["web", "prod"],
        "prompt_id": "greeting",
        "prompt_version": "3",
        "cache_hit": 1,
        "finish_reason": "end_turn",
        "request_body_omitted": 0,
        "response_body_omitted": 0,
        "request_body_key": "bodies/x/1.zst",
        "request_body_offset": 10,
        "request_body_length": 20,
        "response_body_key": "bodies/x/1.zst",
        "response_body_offset": 0,
        "response_body_length": 40,
        "request_body_frame_offset": 500,
        "request_body_frame_length": 70,
        "response_body_frame_offset": 570,
        "response_body_frame_length": 30,
        "version": 1_700_000_000_000_001,
        "target_url": "https://fallback.example/v1",
        "cost_saved_usd": Decimal("0.000000000002"),
        "cost_saved_known": 1,
        "attempt_target_urls": ["", "https://fallback.example/v1"],
        "attempt_status_codes": [0, 200],
        "attempt_errors": ["connection refused", ""],
        "attempt_latencies_ms": [3, 9],
        "prompt_input_keys": ["city", "topic"],
        "prompt_input_values": ["Brest", "tides"],
        "usage_clamped": 1,
        "request_body_over_limit": 0,
        "response_body_over_limit": 1,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


def test_unset_fields_map_to_their_sentinels() -> None:
    record = _record(request_body_omitted=True, status_code=0, error="client went away")
    row = _row(log_record_pb2.LogMessage(record=record))
    assert row["time_to_first_token_ms"] == NO_FIRST_TOKEN
    assert (row["priced"], row["cost_usd"]) == (0, Decimal(0))
    assert (row["request_body_key"], row["request_body_offset"], row["request_body_length"]) == ("", 0, 0)
    assert (row["response_body_key"], row["response_body_length"]) == ("", 0)
    assert (row["request_body_frame_offset"], row["request_body_frame_length"]) == (0, 0)
    assert (row["response_body_frame_offset"], row["response_body_frame_length"]) == (0, 0)
    assert (row["property_keys"], row["property_values"]) == ([], [])
    assert row["request_body_omitted"] == 1
    assert row["error"] == "client went away"
    assert (row["target_url"], row["cost_saved_known"], row["cost_saved_usd"]) == ("", 0, Decimal(0))
    assert (row["attempt_target_urls"], row["attempt_status_codes"], row["prompt_input_keys"]) == ([], [], [])


def test_a_cost_saved_that_is_not_a_cost_makes_the_message_a_dead_letter() -> None:
    violations = Violations()
    check_log_message(violations, log_record_pb2.LogMessage(record=_record(cache_hit=True, cost_saved_usd="NaN")))
    assert [v.field for v in violations.items] == ["record.cost_saved_usd"]


def test_a_zero_first_token_time_is_kept() -> None:
    assert _row(log_record_pb2.LogMessage(record=_record(time_to_first_token_ms=0)))["time_to_first_token_ms"] == 0


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("0", Decimal("0E-12")),
        ("1.5e-7", Decimal("0.000000150000")),
        ("0.0000000000005", Decimal("0.000000000000")),  # half-even: 0.5e-12 rounds to 0
        ("0.0000000000015", Decimal("0.000000000002")),
        ("999999.999999999999", Decimal("999999.999999999999")),
    ],
)
def test_cost_is_exact_to_twelve_places(text: str, stored: Decimal) -> None:
    cost = exact_cost(text)
    assert cost == stored
    assert cost.as_tuple().exponent == -12


def test_usage_aggregates_per_organization_and_utc_day() -> None:
    other = str(uuid.uuid4())
    late = _record(cost_usd="0.1", usage=log_record_pb2.TokenUsage(prompt_tokens=10, completion_tokens=1))
    next_day = _record(cost_usd="0.2", usage=log_record_pb2.TokenUsage(prompt_tokens=20, completion_tokens=2))
    next_day.created_at.FromDatetime(datetime(2026, 3, 8, 0, 0, 1, tzinfo=UTC))
    unpriced = _record(usage=log_record_pb2.TokenUsage(prompt_tokens=5, completion_tokens=5))
    precise = _record(cost_usd="0.0000000000015")
    elsewhere = _record(cost_usd="1")
    elsewhere.organization_id = other

    usage = _usage([late, next_day, unpriced, precise, elsewhere])
    by_key = {(u.organization_id, u.day): u for u in usage}
    mine = by_key[(uuid.UUID(ORG), date(2026, 3, 7))]
    assert (mine.request_count, mine.prompt_tokens, mine.completion_tokens, mine.unpriced_count) == (3, 15, 6, 1)
    assert mine.cost_usd == Decimal("0.100000000002")
    assert by_key[(uuid.UUID(ORG), date(2026, 3, 8))].cost_usd == Decimal("0.2")
    assert by_key[(uuid.UUID(other), date(2026, 3, 7))].request_count == 1
    assert usage == sorted(usage, key=lambda u: (u.organization_id, u.day)), "sorted: one lock order"


def test_an_organization_with_only_unpriced_requests_costs_zero() -> None:
    (usage,) = _usage([_record(), _record()])
    assert (usage.request_count, usage.unpriced_count, usage.cost_usd) == (2, 2, Decimal(0))


def test_duplicates_collapse_to_the_last_record() -> None:
    first = _record(cost_usd="1")
    again = log_record_pb2.LogRecord()
    again.CopyFrom(first)
    again.cost_usd = "2"
    shouted = log_record_pb2.LogRecord()
    shouted.CopyFrom(first)
    shouted.request_id = first.request_id.upper()
    shouted.cost_usd = "3"
    batch = _batch([first, _record(), again, shouted])
    assert len(batch.positions) == 2
    assert batch.positions[ORG, first.request_id] == 3
    (usage,) = aggregate_usage(batch, batch.positions)
    assert (usage.request_count, usage.cost_usd) == (2, Decimal(3))
    assert batch.reused == ()


def test_two_organizations_with_one_request_id_are_two_requests() -> None:
    """A request id is chosen by the client: another organization's use of it is another request."""
    first = _record(cost_usd="1")
    other = log_record_pb2.LogRecord()
    other.CopyFrom(first)
    other.organization_id = str(uuid.uuid4())
    other.cost_usd = "2"
    batch = _batch([first, other])
    assert batch.positions == {(ORG, first.request_id): 0, (other.organization_id, first.request_id): 1}
    usage = aggregate_usage(batch, batch.positions)
    assert sorted((day.request_count, day.cost_usd) for day in usage) == [(1, Decimal(1)), (1, Decimal(2))]
    assert batch.without(frozenset()) is batch.columns


def test_a_reused_request_id_keeps_the_first_log_of_the_batch() -> None:
    """Within one organization the first log of a request id wins: a later one with another creation time is
    neither counted nor stored; copies of the first (same creation time) still collapse into it."""
    first = _record(cost_usd="1")
    reuse = log_record_pb2.LogRecord()
    reuse.CopyFrom(first)
    reuse.created_at.FromDatetime(CREATED.replace(second=0))
    reuse.cost_usd = "5"
    copy = log_record_pb2.LogRecord()
    copy.CopyFrom(first)
    batch = _batch([first, reuse, _record(), copy])
    assert batch.positions[ORG, first.request_id] == 3
    assert batch.reused == (1,)
    (usage,) = aggregate_usage(batch, batch.positions)
    assert (usage.request_count, usage.cost_usd) == (2, Decimal(1))
    kept = batch.without(frozenset())
    assert kept["cost_usd"] == [Decimal(1), Decimal(0), Decimal(1)]


def test_ledger_rows_are_sorted_like_uuids_and_keep_microseconds() -> None:
    records = [_record() for _ in range(50)]
    records[0].organization_id = ORG.upper()
    ledger = ledger_columns(_batch(records))
    assert [uuid.UUID(request_id) for request_id in ledger.request_ids] == sorted(
        uuid.UUID(record.request_id) for record in records
    )
    assert set(ledger.organization_ids) == {ORG}
    assert set(ledger.created_at_us) == {int(CREATED.timestamp()) * 1_000_000 + CREATED.microsecond}


def test_attempt_arrays_stay_aligned_across_logs_with_none_one_and_several_attempts() -> None:
    attempt = log_record_pb2.UpstreamAttempt
    records = [
        _record(attempts=[attempt(target_url="https://a.example", status_code=200, latency_ms=5)]),
        _record(),
        _record(
            attempts=[attempt(status_code=502, error="bad gateway"), attempt(target_url="https://b", latency_ms=7)]
        ),
        _record(attempts=[attempt(error="timeout", latency_ms=30_000)]),
    ]
    columns = request_columns([log_record_pb2.LogMessage(record=r) for r in records], 1)
    assert columns["attempt_target_urls"] == [["https://a.example"], [], ["", "https://b"], [""]]
    assert columns["attempt_status_codes"] == [[200], [], [502, 0], [0]]
    assert columns["attempt_errors"] == [[""], [], ["bad gateway", ""], ["timeout"]]
    assert columns["attempt_latencies_ms"] == [[5], [], [0, 7], [30_000]]


def test_counted_requests_of_limited_organizations_come_oldest_first() -> None:
    """The order in which room under a log limit is given out: creation time, then id; other organizations
    and requests not counted now are left out."""
    other = str(uuid.uuid4())
    records = [_record() for _ in range(6)]
    for index, seconds in enumerate((30, 10, 20, 10, 5, 1)):
        records[index].created_at.FromDatetime(CREATED.replace(second=seconds))
    records[4].organization_id = other
    records[5].organization_id = ORG.upper()
    batch = _batch(records)
    # records[5] was counted by an earlier batch
    counted = [(record.organization_id.lower(), record.request_id) for record in records[:5]]
    ordered = counted_oldest_first(batch, counted, frozenset({uuid.UUID(ORG)}))
    same_second = sorted((records[1].request_id, records[3].request_id))
    assert ordered == {
        uuid.UUID(ORG): [
            (ORG, request_id) for request_id in (*same_second, records[2].request_id, records[0].request_id)
        ]
    }


def test_a_batch_without_some_requests_keeps_the_others_aligned() -> None:
    records = [_record(cost_usd=str(index)) for index in range(5)]
    batch = _batch(records)
    kept = batch.without(frozenset({(ORG, records[1].request_id), (ORG, records[3].request_id)}))
    assert kept["request_id"] == [records[index].request_id for index in (0, 2, 4)]
    assert kept["cost_usd"] == [Decimal(0), Decimal(2), Decimal(4)]
    assert batch.without(frozenset()) is batch.columns
