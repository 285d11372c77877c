"""Validation of Ingest batches and of LogMessages read back from Kafka: each violation, by field path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.wire.validation import (
    BatchLimits,
    check_log_message,
    is_canonical_uuid,
    uuid_bytes,
    validate_ingest_request,
)
from candela_runtime.errors import InvalidArgument, Violations
from tests.factories import log_record

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = BatchLimits(
    max_batch_records=10, max_record_bytes=4096, max_metadata_bytes=1024, max_clock_skew=timedelta(hours=1)
)


def _record(**fields: Any) -> log_record_pb2.LogRecord:
    record = log_record(
        organization_id=str(uuid.uuid4()),
        api_key_id=str(uuid.uuid4()),
        provider="openai",
        model="gpt-4o-mini",
        status_code=200,
        latency_ms=120,
        cost_usd="0.000125",
        created_at=NOW - timedelta(seconds=5),
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _violations(*items: pb.IngestRecord) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        validate_ingest_request(pb.IngestRequest(records=items), LIMITS, NOW)
    return [(v.field, v.description) for v in caught.value.violations]


def _fields(*items: pb.IngestRecord) -> list[str]:
    return [field for field, _ in _violations(*items)]


def test_a_valid_batch_passes() -> None:
    items = [pb.IngestRecord(record=_record(), request_body=b"{}", response_body=b"{}") for _ in range(10)]
    validate_ingest_request(pb.IngestRequest(records=items), LIMITS, NOW)


def test_optional_fields_may_be_unset() -> None:
    record = _record(api_key_id="")
    record.ClearField("cost_usd")
    validate_ingest_request(pb.IngestRequest(records=[pb.IngestRecord(record=record)]), LIMITS, NOW)


def test_an_empty_batch_is_refused() -> None:
    assert _fields() == ["records"]


def test_too_many_records_are_refused() -> None:
    items = [pb.IngestRecord(record=_record()) for _ in range(LIMITS.max_batch_records + 1)]
    assert _violations(*items) == [("records", "holds 11 records, more than the limit of 10")]


def test_a_missing_record_is_named_by_its_index() -> None:
    assert _fields(pb.IngestRecord(record=_record()), pb.IngestRecord(request_body=b"x")) == ["records[1].record"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_id", ""),
        ("request_id", "not-a-uuid"),
        ("request_id", uuid.uuid4().hex),  # 32 hex digits without hyphens is not the canonical form
        ("organization_id", ""),
        ("organization_id", "1234"),
        ("api_key_id", "key-1"),
    ],
)
def test_identifiers_must_be_uuids(field: str, value: str) -> None:
    good = pb.IngestRecord(record=_record())
    bad = pb.IngestRecord(record=_record(**{field: value}))
    assert _fields(good, good, bad) == [f"records[2].record.{field}"]


def test_upper_case_uuids_are_accepted() -> None:
    record = _record(request_id=str(uuid.uuid4()).upper())
    validate_ingest_request(pb.IngestRequest(records=[pb.IngestRecord(record=record)]), LIMITS, NOW)


def test_created_at_is_required() -> None:
    record = _record()
    record.ClearField("created_at")
    assert _violations(pb.IngestRecord(record=record)) == [("records[0].record.created_at", "is required")]


@pytest.mark.parametrize(
    "moment",
    [datetime(1999, 12, 31, tzinfo=UTC), NOW + timedelta(hours=2)],
    ids=["before-2000", "beyond-clock-skew"],
)
def test_created_at_must_be_plausible(moment: datetime) -> None:
    record = _record()
    record.created_at.FromDatetime(moment)
    assert _fields(pb.IngestRecord(record=record)) == ["records[0].record.created_at"]


def test_created_at_within_the_clock_skew_is_accepted() -> None:
    record = _record()
    record.created_at.FromDatetime(NOW + timedelta(minutes=59))
    validate_ingest_request(pb.IngestRequest(records=[pb.IngestRecord(record=record)]), LIMITS, NOW)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"status_code": -1}, "status_code"),
        ({"status_code": 1000}, "status_code"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"latency_ms": 2**32}, "latency_ms"),
        ({"time_to_first_token_ms": -1}, "time_to_first_token_ms"),
        ({"time_to_first_token_ms": 2**31}, "time_to_first_token_ms"),
    ],
)
def test_numbers_must_fit_their_columns(fields: dict[str, int], path: str) -> None:
    assert _fields(pb.IngestRecord(record=_record(**fields))) == [f"records[0].record.{path}"]


@pytest.mark.parametrize("name", ["prompt_tokens", "completion_tokens", "cache_read_tokens", "audio_completion_tokens"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_token_counts_must_fit_uint32(name: str, value: int) -> None:
    record = _record()
    setattr(record.usage, name, value)
    assert _fields(pb.IngestRecord(record=record)) == [f"records[0].record.usage.{name}"]


@pytest.mark.parametrize("field", ["cost_usd", "cost_saved_usd"])
@pytest.mark.parametrize("cost", ["", "abc", "-0.01", "NaN", "Infinity", "1000000", "1e7"])
def test_costs_must_be_bounded_non_negative_decimals(field: str, cost: str) -> None:
    assert _fields(pb.IngestRecord(record=_record(**{field: cost}))) == [f"records[0].record.{field}"]


@pytest.mark.parametrize("cost", ["0", "0.000000000001", "12.5", "999999.999999999999", "1.5e-7"])
def test_costs_in_range_are_accepted(cost: str) -> None:
    validate_ingest_request(pb.IngestRequest(records=[pb.IngestRecord(record=_record(cost_usd=cost))]), LIMITS, NOW)


def test_an_omitted_body_must_be_empty() -> None:
    record = _record(request_body_omitted=True, response_body_omitted=True)
    item = pb.IngestRecord(record=record, request_body=b"secret prompt", response_body=b"secret answer")
    assert _fields(item) == ["records[0].request_body", "records[0].response_body"]


def test_record_and_metadata_sizes_are_bounded() -> None:
    big_bodies = pb.IngestRecord(record=_record(), request_body=b"x" * 3000, response_body=b"y" * 2000)
    big_metadata = pb.IngestRecord(record=_record(error="e" * 2000))
    violations = _violations(big_bodies, big_metadata)
    assert [field for field, _ in violations] == ["records[0]", "records[1].record"]
    assert "more than the limit of 4096" in violations[0][1]
    assert "more than the limit of 1024" in violations[1][1]


def test_every_problem_is_reported_at_once() -> None:
    first = _record(request_id="x", latency_ms=-1)
    second = _record(organization_id="")
    second.ClearField("created_at")
    fields = _fields(pb.IngestRecord(record=first), pb.IngestRecord(record=_record()), pb.IngestRecord(record=second))
    assert fields == [
        "records[0].record.request_id",
        "records[0].record.latency_ms",
        "records[2].record.organization_id",
        "records[2].record.created_at",
    ]


def test_log_messages_from_kafka_are_checked_with_body_refs() -> None:
    message = log_record_pb2.LogMessage(record=_record(request_id="nope"))
    message.request_body.CopyFrom(log_record_pb2.BodyRef(object_key="", offset=0, length=3))
    message.response_body.CopyFrom(log_record_pb2.BodyRef(object_key="k", offset=-1, length=3))
    violations = Violations()
    check_log_message(violations, message)
    assert [v.field for v in violations.items] == [
        "record.request_id",
        "request_body.object_key",
        "response_body",
    ]


def test_old_log_messages_are_fine_for_the_writer() -> None:
    record = _record()
    record.created_at.FromDatetime(datetime(2001, 1, 1, tzinfo=UTC))
    violations = Violations()
    check_log_message(violations, log_record_pb2.LogMessage(record=record))
    assert violations.items == []


_UUID_ALPHABET = "0123456789abcdefABCDEF-g ü"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.uuids().map(str),
            st.uuids().map(lambda value: str(value).upper()),
            st.text(alphabet=_UUID_ALPHABET, min_size=30, max_size=40),
            st.uuids().map(lambda value: str(value).replace("-", "")[:32] + "----"),
        ),
        max_size=6,
    )
)
def test_the_batch_uuid_check_agrees_with_the_per_value_one(values: list[str]) -> None:
    """uuid_bytes (the whole column at once) accepts exactly what the regular expression accepts, one by one,
    and its bytes are the UUIDs' own."""
    parsed = uuid_bytes(values)
    assert (parsed is not None) == all(is_canonical_uuid(value) for value in values)
    if parsed is not None:
        assert parsed == b"".join(uuid.UUID(value).bytes for value in values)
