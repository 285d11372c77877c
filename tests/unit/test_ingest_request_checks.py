"""Ingest's whole-batch check: it passes a batch only when the record-by-record checks find nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela_ingest.wire.validation import UINT32_MAX, BatchLimits, _all_records_pass, validate_ingest_request
from candela_runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMITS = BatchLimits(
    max_batch_records=100, max_record_bytes=4096, max_metadata_bytes=1024, max_clock_skew=timedelta(minutes=5)
)
LATEST = int((NOW + LIMITS.max_clock_skew).timestamp())


def _item(index: int) -> pb.IngestRecord:
    item = pb.IngestRecord(request_body=b"{}", response_body=b"{}")
    record = item.record
    record.request_id = str(uuid.uuid4())
    record.organization_id = str(uuid.uuid4())
    record.status_code = 200
    record.latency_ms = 10 + index
    record.cost_usd = "0.25"
    record.usage.completion_tokens = 3
    record.created_at.FromDatetime(NOW)
    return item


def _set(item: pb.IngestRecord, change: str) -> None:
    record = item.record
    match change:
        case "no-record":
            item.ClearField("record")
        case "request_id":
            record.request_id = "nope"
        case "upper-id":
            record.request_id = record.request_id.upper()
        case "organization_id":
            record.organization_id = ""
        case "api_key_id":
            record.api_key_id = "key"
        case "api_key_ok":
            record.api_key_id = str(uuid.uuid4())
        case "future":
            record.created_at.FromDatetime(NOW + timedelta(minutes=6))
        case "skewed-ok":
            record.created_at.FromDatetime(NOW + timedelta(minutes=4))
        case "old":
            record.created_at.FromDatetime(datetime(1999, 12, 31, tzinfo=UTC))
        case "no-created-at":
            record.ClearField("created_at")
        case "nanos":
            record.created_at.nanos = -1
        case "status":
            record.status_code = 1000
        case "latency":
            record.latency_ms = UINT32_MAX + 1
        case "first-token":
            record.time_to_first_token_ms = -1
        case "first-token-zero":
            record.time_to_first_token_ms = 0
        case "tokens":
            record.usage.reasoning_tokens = -1
        case "cost":
            record.cost_usd = "NaN"
        case "cost-empty":
            record.cost_usd = ""
        case "unpriced":
            record.ClearField("cost_usd")
        case "saved":
            record.cost_saved_usd = "-1"
        case "omitted-with-body":
            record.request_body_omitted = True
        case "omitted":
            record.response_body_omitted = True
            item.response_body = b""
        case "big-record":
            item.request_body = b"x" * 5000
        case "big-metadata":
            record.error = "e" * 2000
        case _:
            raise AssertionError(change)


def _slow_path_finds_problems(items: list[pb.IngestRecord]) -> bool:
    """The record-by-record verdict (the batch check bypassed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("candela_ingest.wire.validation._all_records_pass", lambda *_: False)
        try:
            validate_ingest_request(pb.IngestRequest(records=items), LIMITS, NOW)
        except InvalidArgument:
            return True
    return False


CHANGES = [
    "no-record", "request_id", "upper-id", "organization_id", "api_key_id", "api_key_ok", "future", "skewed-ok",
    "old", "no-created-at", "nanos", "status", "latency", "first-token", "first-token-zero", "tokens", "cost",
    "cost-empty", "unpriced", "saved", "omitted-with-body", "omitted", "big-record", "big-metadata",
]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES)
def test_the_batch_check_passes_a_batch_only_when_every_record_passes(change: str) -> None:
    items = [_item(index) for index in range(5)]
    _set(items[3], change)
    if _slow_path_finds_problems(items):
        assert not _all_records_pass(items, LIMITS, LATEST)
        with pytest.raises(InvalidArgument):
            validate_ingest_request(pb.IngestRequest(records=items), LIMITS, NOW)
    else:
        validate_ingest_request(pb.IngestRequest(records=items), LIMITS, NOW)


def test_a_valid_batch_is_passed_by_the_batch_check_alone() -> None:
    items = [_item(index) for index in range(20)]
    for index, change in enumerate(["upper-id", "api_key_ok", "skewed-ok", "first-token-zero", "unpriced", "omitted"]):
        _set(items[index], change)
    assert _all_records_pass(items, LIMITS, LATEST)
