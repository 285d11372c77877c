"""Ingest reads a valid batch in C (wire_batch_parts) exactly as parsing and checking it would, or leaves it
to those exact checks: it never passes a batch they refuse, nor reads one differently."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import BatchParts, batch_parts, wire_batch_parts
from candela_ingest.wire import logwire
from candela_ingest.wire.validation import BatchLimits, validate_ingest_request
from candela_ingest.wire.varint import varint
from candela_runtime.errors import InvalidArgument
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES
from tests import wire_strategies
from tests.unit.test_ingest_wire_decoder import mutated

pytestmark = [pytest.mark.unit, pytest.mark.wire]

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
LIMITS = BatchLimits(
    max_batch_records=20, max_record_bytes=64 * 1024, max_metadata_bytes=8 * 1024, max_clock_skew=timedelta(minutes=5)
)
LATEST = NOW + LIMITS.max_clock_skew
_TOKENS = [field.name for field in log_record_pb2.TokenUsage.DESCRIPTOR.fields]
_UUID = st.uuids().map(str)
_ID = st.one_of(_UUID, _UUID.map(str.upper), st.sampled_from(["", "not-a-uuid", str(uuid.uuid4()) + " "]))
_COST = st.sampled_from(["0", "0.0001605", "12", "999999.99", "1000000", "007.5", "1e3", ".5", "5.", "-1", "", "x"])
_TEXT = st.one_of(st.sampled_from(["", "openai", "gpt-4o-mini"]), st.text(max_size=10))


_INT64 = st.integers(-(2**63), 2**63 - 1)
_INT32 = st.integers(-(2**31), 2**31 - 1)
_EDGES = [
    int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) - 1,
    int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()),
    int(LATEST.timestamp()),
    int(LATEST.timestamp()) + 1,
]


def _break(record: log_record_pb2.LogRecord, item: pb.IngestRecord, data: st.DataObject) -> None:
    """Changes one field of a valid record to any value of its type: often invalid, sometimes not."""
    field = data.draw(
        st.sampled_from(
            ["id", "status", "latency", "seconds", "nanos", "unset", "first_token", "tokens", "cost", "omitted"]
        )
    )
    if field == "id":
        setattr(record, data.draw(st.sampled_from(["request_id", "organization_id", "api_key_id"])), data.draw(_ID))
    elif field == "status":
        record.status_code = data.draw(st.one_of(st.sampled_from([-1, 0, 999, 1000]), _INT32))
    elif field == "latency":
        record.latency_ms = data.draw(st.one_of(st.sampled_from([-1, 2**32 - 1, 2**32]), _INT64))
    elif field == "seconds":
        record.created_at.seconds = data.draw(st.one_of(st.sampled_from(_EDGES), _INT64))
    elif field == "nanos":
        record.created_at.nanos = data.draw(
            st.one_of(st.sampled_from([-1, 999_999_999, 10**9]), st.integers(-(2**31), 2**31 - 1))
        )
    elif field == "unset":
        record.ClearField("created_at")
    elif field == "first_token":
        record.time_to_first_token_ms = data.draw(st.one_of(st.sampled_from([-1, 2**31 - 1, 2**31]), _INT64))
    elif field == "tokens":
        setattr(
            record.usage,
            data.draw(st.sampled_from(_TOKENS)),
            data.draw(st.one_of(st.sampled_from([-1, 2**32]), _INT64)),
        )
    elif field == "cost":
        setattr(record, data.draw(st.sampled_from(["cost_usd", "cost_saved_usd"])), data.draw(_COST))
    else:
        record.request_body_omitted = True
        item.request_body = data.draw(st.binary(max_size=8))


_IDS = [str(uuid.UUID(int=index * 7919 + 10**20)) for index in range(20)]
_VALID: wire_strategies.Vocabulary = {
    "request_id": _IDS,
    "organization_id": [str(uuid.UUID(int=1)), str(uuid.UUID(int=2))],
    "api_key_id": ["", _IDS[0]],
    "seconds": [int((NOW - timedelta(seconds=ago)).timestamp()) for ago in (-300, 0, 1, 3600, 86_400)],
    "nanos": [0, 1, 999_999_999],
    "status_code": [200, 429],
    "latency_ms": [0, 850, 2**32 - 1],
    "time_to_first_token_ms": [0, 900, 2**31 - 1],
    **{name: [0, 1, 5000, 2**32 - 1] for name in _TOKENS},
    "cost_usd": ["0.0001605", "0", "12"],
    "cost_saved_usd": ["0.0001605", "0", "12"],
    "request_body_omitted": [False],
    "response_body_omitted": [False],
}
"""Valid values of the fields ingest checks; every other field (found in the descriptors) takes any value."""


@st.composite
def records(draw: st.DrawFn) -> pb.IngestRecord:
    """A valid IngestRecord: every field of it and of its LogRecord set or not, those ingest checks to
    valid values, the others to any value (so a new field is sent too)."""
    record: Any = draw(wire_strategies.messages(log_record_pb2.LogRecord.DESCRIPTOR, _VALID, strict=True))
    record.request_id = draw(st.sampled_from(_IDS))
    record.organization_id = draw(st.sampled_from(_VALID["organization_id"]))
    record.created_at.seconds = draw(st.sampled_from(_VALID["seconds"]))  # required: set, whatever was drawn
    item: Any = draw(wire_strategies.messages(pb.IngestRecord.DESCRIPTOR, _VALID, exclude={"record"}, strict=True))
    item.record.CopyFrom(record)
    return item  # type: ignore[no-any-return]


def _exact(data: bytes) -> BatchParts | None:
    """What ingest's exact path makes of ``data``: the parts when it passes, None when it is refused."""
    try:
        request = pb.IngestRequest.FromString(data)
        validate_ingest_request(request, LIMITS, NOW)
    except (DecodeError, InvalidArgument):
        return None
    return batch_parts(request.records)


def _assert_same(parts: BatchParts, expected: BatchParts) -> None:
    assert [log_record_pb2.LogMessage.FromString(record) for record in parts.records] == [
        log_record_pb2.LogMessage.FromString(record) for record in expected.records
    ]
    assert list(parts.keys) == list(expected.keys)
    assert list(parts.organization_ids) == list(expected.organization_ids)
    assert list(parts.request_bodies) == list(expected.request_bodies)
    assert list(parts.response_bodies) == list(expected.response_bodies)
    assert [{**(context or {})} for context in parts.trace_contexts] == [
        {**(context or {})} for context in expected.trace_contexts
    ]


@settings(max_examples=500, deadline=None)
@given(st.lists(records(), max_size=24), st.data())
def test_a_batch_read_in_c_is_one_the_exact_checks_pass_and_read_alike(
    items: list[pb.IngestRecord], data: st.DataObject
) -> None:
    clean = not items or data.draw(st.booleans())
    if not clean:
        # One field of one record changed: what the C reader makes of the batch then rests on that field alone.
        item = items[data.draw(st.integers(0, len(items) - 1))]
        _break(item.record, item, data)
    serialized = pb.IngestRequest(records=items).SerializeToString()
    parts = wire_batch_parts(serialized, LIMITS, LATEST)
    expected = _exact(serialized)
    small = all(item.record.ByteSize() * 4 <= LIMITS.max_metadata_bytes for item in items)  # see over_limit()
    if clean and small and 1 <= len(items) <= LIMITS.max_batch_records:
        assert parts is not None, "a batch of valid, canonical records is read in C"
    if parts is None:
        return
    assert expected is not None, "the C reader passed a batch the exact checks refuse"
    _assert_same(parts, expected)


def _assert_left_to_the_exact_checks(data: bytes) -> None:
    """The C reader leaves a batch in doubt to the exact checks. Its pure-Python twin (CANDELA_NO_EXTENSIONS=1)
    reads with those checks, so it either leaves the batch too or reads it as they do."""
    parts = wire_batch_parts(data, LIMITS, LATEST)
    if not logwire.NO_EXTENSIONS or parts is None:
        assert parts is None
        return
    expected = _exact(data)
    assert expected is not None, "the pure-Python reader passed a batch the exact checks refuse"
    _assert_same(parts, expected)


def _valid_item(index: int) -> pb.IngestRecord:
    record = log_record_pb2.LogRecord(
        request_id=str(uuid.uuid4()), organization_id=str(uuid.UUID(int=index % 3 + 1)), api_key_id=str(uuid.uuid4()),
        provider="openai", model="gpt-4o-mini", status_code=200, latency_ms=850, time_to_first_token_ms=120,
        usage=log_record_pb2.TokenUsage(prompt_tokens=230, completion_tokens=210, total_tokens=440),
        cost_usd="0.0001605", cost_saved_usd="0", user_id="user-1", properties={"environment": "production", "é": "ü"},
        attempts=[log_record_pb2.UpstreamAttempt(target_url="https://api.openai.com/v1/chat", status_code=200)],
    )  # fmt: skip
    record.created_at.FromDatetime(NOW)
    item = pb.IngestRecord(record=record, request_body=b'{"model":"m"}' * index, response_body=b"{}")
    if index % 2:
        item.trace_context["traceparent"] = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    return item


def test_what_the_proxy_sends_is_read_in_c() -> None:
    # The common case must take the fast path, or the property above would hold by never taking it.
    data = pb.IngestRequest(
        records=[_valid_item(index) for index in range(LIMITS.max_batch_records)]
    ).SerializeToString()
    parts = wire_batch_parts(data, LIMITS, LATEST)
    expected = _exact(data)
    assert parts is not None
    assert expected is not None
    _assert_same(parts, expected)
    assert parts.trace_contexts[0] is None


@pytest.mark.parametrize(
    "change",
    [
        lambda item: setattr(item.record, "request_id", item.record.request_id.upper()),  # valid: canonicalized
        lambda item: setattr(item.record, "api_key_id", "key-1"),
        lambda item: item.record.created_at.FromDatetime(LATEST + timedelta(seconds=1)),
        lambda item: setattr(item.record, "cost_usd", "1E-7"),  # valid, but left to Decimal
        lambda item: setattr(item.record.usage, "prompt_tokens", 2**32),
        lambda item: setattr(item.record, "request_body_omitted", True),
        lambda item: setattr(item, "request_body", b"x" * (LIMITS.max_record_bytes // 4)),
        lambda item: item.record.properties.update({"k": "v" * (LIMITS.max_metadata_bytes // 4)}),
    ],
)
def test_a_record_in_doubt_sends_the_batch_to_the_exact_checks(change: object) -> None:
    items = [_valid_item(index) for index in range(3)]
    change(items[1])  # type: ignore[operator]
    _assert_left_to_the_exact_checks(pb.IngestRequest(records=items).SerializeToString())


_EARLIEST = _EDGES[1]


@pytest.mark.parametrize(
    ("path", "value", "valid"),
    [
        ("status_code", 999, True), ("status_code", 1000, False), ("status_code", -1, False),
        ("latency_ms", 2**32 - 1, True), ("latency_ms", 2**32, False), ("latency_ms", -1, False),
        ("time_to_first_token_ms", 2**31 - 1, True), ("time_to_first_token_ms", 2**31, False),
        ("time_to_first_token_ms", -1, False),
        ("created_at.seconds", _EARLIEST, True), ("created_at.seconds", _EARLIEST - 1, False),
        ("created_at.seconds", _EDGES[2], True), ("created_at.seconds", _EDGES[3], False),
        ("created_at.nanos", 999_999_999, True), ("created_at.nanos", 10**9, False), ("created_at.nanos", -1, False),
        *((f"usage.{name}", value, value == 2**32 - 1) for name in _TOKENS for value in (2**32 - 1, 2**32, -1)),
        *(("cost_usd", value, valid) for value, valid in [("999999.999", True), ("007.5", True), ("1000000", False)]),
        ("cost_saved_usd", "0", True), ("cost_saved_usd", "", False), ("cost_saved_usd", "-0.5", False),
        ("api_key_id", "", True), ("api_key_id", "key", False), ("organization_id", "", False),
        ("request_id", str(uuid.uuid4())[:-1] + "g", False), ("request_id", str(uuid.uuid4()).replace("-", "_"), False),
    ],
)  # fmt: skip
def test_each_bound_is_decided_in_c_as_the_exact_checks_decide_it(path: str, value: object, valid: bool) -> None:
    items = [_valid_item(index) for index in range(3)]
    *parents, name = path.split(".")
    target = items[1].record
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)
    data = pb.IngestRequest(records=items).SerializeToString()
    assert (_exact(data) is not None) == valid
    assert (wire_batch_parts(data, LIMITS, LATEST) is not None) == valid


def test_an_empty_or_oversized_batch_is_left_to_the_exact_checks() -> None:
    assert wire_batch_parts(b"", LIMITS, LATEST) is None
    items = [_valid_item(index) for index in range(LIMITS.max_batch_records + 1)]
    assert wire_batch_parts(pb.IngestRequest(records=items).SerializeToString(), LIMITS, LATEST) is None


def test_a_record_sent_twice_in_one_item_is_left_to_the_runtime_which_merges_it() -> None:
    item = _valid_item(1)
    duplicated = item.SerializeToString() + pb.IngestRecord(record=item.record).SerializeToString()
    data = b"\x0a" + varint(len(duplicated)) + duplicated
    _assert_left_to_the_exact_checks(data)
    assert _exact(data) is not None


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_damaged_batch_is_read_as_the_runtime_reads_it_or_left_to_it(data: st.DataObject) -> None:
    damaged = mutated(pb.IngestRequest(records=[_valid_item(index) for index in range(3)]).SerializeToString(), data)
    parts = wire_batch_parts(damaged, LIMITS, LATEST)
    if parts is None:
        return
    expected = _exact(damaged)
    assert expected is not None, "the C reader passed bytes the runtime cannot parse or the checks refuse"
    _assert_same(parts, expected)


def test_prompt_inputs_above_the_shared_bound_are_refused_by_the_exact_checks_not_passed_in_c() -> None:
    """Ingest keeps the bound the proxy and the prompts service keep, whatever its metadata limit allows."""
    limits = BatchLimits(
        max_batch_records=20,
        max_record_bytes=MAX_RECORD_BYTES,
        max_metadata_bytes=MAX_RECORD_METADATA_BYTES,
        max_clock_skew=timedelta(minutes=5),
    )
    at_bound, over_bound = _valid_item(1), _valid_item(2)
    at_bound.record.prompt_inputs["document"] = "é" * ((MAX_PROMPT_INPUTS_BYTES - len("document")) // 2)
    over_bound.record.prompt_inputs["document"] = "x" * (MAX_PROMPT_INPUTS_BYTES - len("document") + 1)
    validate_ingest_request(pb.IngestRequest(records=[at_bound]), limits, NOW)
    data = pb.IngestRequest(records=[at_bound, over_bound]).SerializeToString()
    assert wire_batch_parts(data, limits, LATEST) is None
    with pytest.raises(InvalidArgument) as refused:
        validate_ingest_request(pb.IngestRequest.FromString(data), limits, NOW)
    assert [violation.field for violation in refused.value.violations] == ["records[1].record.prompt_inputs"]
    assert str(MAX_PROMPT_INPUTS_BYTES) in refused.value.violations[0].description


def _with_unknown_field(where: str) -> bytes:
    """A valid batch of three with a field no reader knows (number 99) in one of its messages."""
    items = [_valid_item(index) for index in range(3)]
    unknown = varint(99 << 3 | 0) + varint(1)
    if where == "record":
        items[1].record.MergeFromString(unknown)
    elif where == "record.usage":
        items[1].record.usage.MergeFromString(unknown)
    elif where == "item":
        items[1].MergeFromString(unknown)
    data = pb.IngestRequest(records=items).SerializeToString()
    if where == "request":
        data += unknown
    elif where == "trace_context":
        entry = b"\x0a\x01k\x12\x01v" + unknown
        item = items[1].SerializeToString() + b"\x22" + varint(len(entry)) + entry
        data = pb.IngestRequest(records=[items[0]]).SerializeToString() + b"\x0a" + varint(len(item)) + item
    return data


@pytest.mark.parametrize("where", ["request", "item", "trace_context", "record", "record.usage"])
def test_a_field_the_reader_does_not_know_sends_the_batch_to_the_exact_checks(where: str) -> None:
    data = _with_unknown_field(where)
    assert _exact(data) is not None, "the exact path reads it"
    assert wire_batch_parts(data, LIMITS, LATEST) is None
