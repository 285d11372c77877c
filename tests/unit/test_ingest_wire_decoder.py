"""The writers' C wire decoder reads every log exactly as the protobuf runtime does, or leaves it to it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire.varint import varint
from candela_ingest.writer.batch import ConsumedMessage, DeadLetter, decode, decode_batch
from candela_ingest.writer.rows import RequestColumns, checked_request_columns, wire_request_columns

pytestmark = pytest.mark.unit

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.one_of(st.sampled_from(["", "openai", "gpt-4o-mini", str(uuid.uuid4())]), st.text(max_size=12))
_STRINGS = (
    "request_id", "organization_id", "api_key_id", "provider", "model", "response_model", "path", "error",
    "user_id", "session_id", "session_path", "session_name", "prompt_id", "prompt_version", "finish_reason",
    "target_url",
)  # fmt: skip
_TOKENS = [field.name for field in log_record_pb2.TokenUsage.DESCRIPTOR.fields]


@st.composite
def log_messages(draw: st.DrawFn) -> log_record_pb2.LogMessage:
    """Any LogMessage holding a log: every field set or not, to any value its type holds."""
    message = log_record_pb2.LogMessage()
    record = message.record
    for name in draw(st.lists(st.sampled_from(_STRINGS), unique=True)):
        setattr(record, name, draw(TEXT))
    if draw(st.booleans()):
        record.created_at.seconds = draw(st.one_of(st.integers(946_684_800, 4_102_444_800), INT64))
        record.created_at.nanos = draw(st.one_of(st.integers(0, 999_999_999), INT32))
    record.status_code = draw(st.one_of(st.sampled_from([0, 200, 429]), INT32))
    record.latency_ms = draw(INT64)
    for name in (
        "streamed",
        "cache_hit",
        "request_body_omitted",
        "response_body_omitted",
        "usage_clamped",
        "request_body_over_limit",
        "response_body_over_limit",
    ):
        setattr(record, name, draw(st.booleans()))
    if draw(st.booleans()):
        record.time_to_first_token_ms = draw(st.one_of(st.just(0), INT64))
    for name in draw(st.lists(st.sampled_from(_TOKENS), unique=True)):
        setattr(record.usage, name, draw(st.one_of(st.integers(0, 2**32), INT64)))
    for name in ("cost_usd", "cost_saved_usd"):
        if draw(st.booleans()):
            setattr(record, name, draw(st.sampled_from(["", "0", "0.0001605", "1e3", "NaN", "-1", "abc"])))
    record.properties.update(draw(st.dictionaries(TEXT, TEXT, max_size=3)))
    record.prompt_inputs.update(draw(st.dictionaries(TEXT, TEXT, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        record.attempts.add(target_url=draw(TEXT), status_code=draw(INT32), error=draw(TEXT), latency_ms=draw(INT64))
    for body in (message.request_body, message.response_body):
        if draw(st.booleans()):
            body.SetInParent()
            body.object_key = draw(st.sampled_from(["", "bodies/o/1.zst"]))
            body.offset, body.length, body.frame_offset, body.frame_length = (draw(INT64) for _ in range(4))
    if draw(st.booleans()):
        message.ingested_at.seconds = draw(INT64)
    return message


def _rows(columns: RequestColumns) -> list[tuple[Any, ...]]:
    return columns.rows()


@settings(max_examples=300, deadline=None)
@given(st.lists(log_messages(), min_size=1, max_size=8))
def test_every_log_is_read_as_the_runtime_reads_it(messages: list[log_record_pb2.LogMessage]) -> None:
    columns, suspects, fallback = wire_request_columns([message.SerializeToString() for message in messages], 7)
    expected_columns, expected_suspects = checked_request_columns(messages, 7)
    assert fallback == []
    assert _rows(columns) == _rows(expected_columns)
    assert suspects == expected_suspects


def test_updates_are_left_to_the_runtime_and_the_logs_around_them_are_read() -> None:
    log = log_record_pb2.LogMessage(record=log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), model="m"))
    update = log_record_pb2.LogMessage(update=log_record_pb2.LogUpdate(request_id=str(uuid.uuid4()), feedback=True))
    values = [log.SerializeToString(), update.SerializeToString(), log.SerializeToString()]
    columns, _, fallback = wire_request_columns(values, 0)
    assert fallback == [1]
    assert _rows(columns) == _rows(checked_request_columns([log, log], 0)[0])


def mutated(value: bytes, data: st.DataObject) -> bytes:
    """``value`` with bytes changed, inserted or cut off: malformed, or well-formed but unusual."""
    buffer = bytearray(value)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "insert", "truncate"]))
        position = data.draw(st.integers(0, max(len(buffer) - 1, 0)))
        if kind == "flip" and buffer:
            buffer[position] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            buffer[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del buffer[position:]
    return bytes(buffer)


@settings(max_examples=500, deadline=None)
@given(log_messages(), st.data())
def test_a_damaged_value_is_read_as_the_runtime_reads_it_or_left_to_it(
    message: log_record_pb2.LogMessage, data: st.DataObject
) -> None:
    value = mutated(message.SerializeToString(), data)
    columns, _, fallback = wire_request_columns([value], 0)
    try:
        parsed = log_record_pb2.LogMessage.FromString(value)
    except DecodeError:
        assert fallback == [0], "what the runtime cannot parse is never read as a log"
        return
    if fallback:
        return
    assert not parsed.HasField("update")
    assert _rows(columns) == _rows(checked_request_columns([parsed], 0)[0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(log_messages().map(lambda m: m.SerializeToString()), st.binary(max_size=40)), max_size=8))
def test_decode_batch_sorts_any_values_as_decode_does(values: list[bytes]) -> None:
    batch = [ConsumedMessage("logs", 0, offset, None, value) for offset, value in enumerate(values)]
    decoded, dead = decode_batch(batch)
    one_by_one = [decode(message) for message in batch]
    assert [letter.message.offset for letter in dead] == [
        result.message.offset for result in one_by_one if isinstance(result, DeadLetter)
    ]
    valid = [result for result in one_by_one if not isinstance(result, DeadLetter)]
    logs = [result for result in valid if not result.log.HasField("update")]
    assert [message.offset for message in decoded.logs] == [result.message.offset for result in logs]
    assert [entry.message.offset for entry in decoded.updates] == [
        result.message.offset for result in valid if result.log.HasField("update")
    ]
    assert _rows(decoded.columns) == _rows(checked_request_columns([result.log for result in logs], 0)[0])


@pytest.mark.parametrize(
    "field",
    [
        b"\x2a\x02\xc3\x28",  # provider = 5, an invalid two-byte sequence
        b"\xa2\x01\x06\x0a\x02\xed\xa0\x12\x00",  # properties = 20, a key holding a surrogate's first bytes
        b"\xea\x01\x04\x0a\x02\xff\xfe",  # attempts = 29, a target_url of bytes no UTF-8 text starts with
    ],
)
def test_a_string_that_is_not_utf8_is_left_to_the_runtime_even_when_a_later_one_replaces_it(field: bytes) -> None:
    # The runtime refuses the whole message for any occurrence that is not UTF-8 (a dead letter), so the
    # decoder must not read the later, valid occurrence as the log.
    record = field + log_record_pb2.LogRecord(provider="openai", request_id=str(uuid.uuid4())).SerializeToString()
    value = b"\x0a" + bytes([len(record)]) + record
    with pytest.raises(DecodeError):
        log_record_pb2.LogMessage.FromString(value)
    assert wire_request_columns([value], 0)[2] == [0]


def test_a_record_field_the_decoder_does_not_know_is_left_to_the_runtime() -> None:
    """A newer LogRecord (a field number past the last known) is read by the reference path, not skipped."""
    known = log_record_pb2.LogMessage(record=log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), model="m"))
    newer = log_record_pb2.LogMessage()
    newer.record.ParseFromString(known.record.SerializeToString() + varint(40 << 3) + varint(1))
    clamped = log_record_pb2.LogMessage(
        record=log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), usage_clamped=True)
    )
    columns, _, fallback = wire_request_columns([m.SerializeToString() for m in (known, newer, clamped)], 7)
    assert fallback == [1]
    assert columns["usage_clamped"] == [0, 1]
