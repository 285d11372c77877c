"""The writers' C wire decoder reads every log exactly as the protobuf runtime does, or leaves it to it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import tags
from candela_ingest.wire.varint import varint
from candela_ingest.writer.batch import ConsumedMessage, DeadLetter, decode, decode_batch
from candela_ingest.writer.rows import RequestColumns, checked_request_columns, wire_request_columns
from tests import wire_strategies

pytestmark = [pytest.mark.unit, pytest.mark.wire]


def log_messages() -> st.SearchStrategy[log_record_pb2.LogMessage]:
    """Any LogMessage holding a log: every field of it and of its sub-messages (found in the descriptors)
    set or not, to any value its type holds or one the decoder treats specially."""
    return wire_strategies.messages(log_record_pb2.LogMessage.DESCRIPTOR, exclude={"update"})  # type: ignore[return-value]


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


_UNKNOWN_FIELDS = {
    "varint": varint(99 << 3 | 0) + varint(1),
    "fixed64": varint(99 << 3 | 1) + bytes(8),
    "length-delimited": varint(99 << 3 | 2) + varint(2) + b"hi",
    "fixed32": varint(1000 << 3 | 5) + bytes(4),
}
_MESSAGES_WITH_UNKNOWN = (
    "", "record", "record.created_at", "record.usage", "record.attempts", "request_body", "response_body",
    "ingested_at",
)  # fmt: skip


def _full_log() -> log_record_pb2.LogMessage:
    message = log_record_pb2.LogMessage(
        record=log_record_pb2.LogRecord(
            request_id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), model="m",
            usage=log_record_pb2.TokenUsage(prompt_tokens=3), properties={"k": "v"}, prompt_inputs={"n": "x"},
            attempts=[log_record_pb2.UpstreamAttempt(target_url="https://u", status_code=200)],
        ),
        request_body=log_record_pb2.BodyRef(object_key="bodies/o/1.zst", length=3),
        response_body=log_record_pb2.BodyRef(object_key="bodies/o/1.zst", offset=3, length=4),
    )  # fmt: skip
    message.record.created_at.seconds = 1_800_000_000
    message.ingested_at.seconds = 1_800_000_001
    return message


@pytest.mark.parametrize("encoding", list(_UNKNOWN_FIELDS))
@pytest.mark.parametrize("path", _MESSAGES_WITH_UNKNOWN)
def test_a_field_the_decoder_does_not_know_in_any_message_is_left_to_the_runtime(path: str, encoding: str) -> None:
    """Every message the decoder reads field by field: an unknown field there is the runtime's, never skipped."""
    message = _full_log()
    target: Any = message
    for name in filter(None, path.split(".")):
        target = getattr(target, name)
    if path == "record.attempts":
        target = target[0]
    target.MergeFromString(_UNKNOWN_FIELDS[encoding])
    value = message.SerializeToString()
    assert log_record_pb2.LogMessage.FromString(value) == message, "the runtime reads it"
    plain = _full_log().SerializeToString()
    columns, _, fallback = wire_request_columns([plain, value, plain], 0)
    assert fallback == [1]
    assert columns.count == 2


@pytest.mark.parametrize("map_field", [20, 30])  # LogRecord.properties, LogRecord.prompt_inputs
def test_a_map_entry_with_a_field_the_decoder_does_not_know_is_left_to_the_runtime(map_field: int) -> None:
    entry = b"\x0a\x01k\x12\x01v" + _UNKNOWN_FIELDS["varint"]
    record = _full_log().record.SerializeToString() + varint(map_field << 3 | 2) + varint(len(entry)) + entry
    value = b"\x0a" + varint(len(record)) + record
    log_record_pb2.LogMessage.FromString(value)  # the runtime reads it
    assert wire_request_columns([value], 0)[2] == [0]


def test_a_log_with_an_unknown_field_is_stored_as_the_runtime_reads_it() -> None:
    """Left to the runtime, such a log still becomes its row: the fallback path loses nothing."""
    message = _full_log()
    message.record.usage.MergeFromString(_UNKNOWN_FIELDS["varint"])
    batch = [ConsumedMessage("logs", 0, 0, None, message.SerializeToString())]
    decoded, dead = decode_batch(batch)
    assert dead == []
    assert _rows(decoded.columns) == _rows(checked_request_columns([message], 0)[0])


@pytest.mark.parametrize("field", list(tags.LogRecord), ids=lambda field: field.name.lower())
def test_a_known_field_sent_with_another_wire_type_is_left_to_the_runtime(field: tags.LogRecord) -> None:
    """No LogRecord field is a fixed32: the runtime keeps such an occurrence as an unknown field."""
    record = _full_log().record.SerializeToString() + varint(field << 3 | 5) + bytes(4)
    value = b"\x0a" + varint(len(record)) + record
    log_record_pb2.LogMessage.FromString(value)  # the runtime reads it
    assert wire_request_columns([value], 0)[2] == [0]


def test_a_group_is_left_to_the_runtime() -> None:
    group = varint(99 << 3 | 3) + varint(1 << 3 | 0) + varint(7) + varint(99 << 3 | 4)
    record = _full_log().record.SerializeToString() + group
    value = b"\x0a" + varint(len(record)) + record
    log_record_pb2.LogMessage.FromString(value)  # the runtime reads it
    assert wire_request_columns([value], 0)[2] == [0]


@pytest.mark.parametrize(
    "value",
    [
        b"\x1a\x80\x80\x80\x80\x80\x80\x80\x00\x12\x00",  # response_body's length 0 in 8 bytes (found by the fuzzer)
        b"\x1a\x80\x80\x80\x80\x80\x00",  # in 6 bytes
        b"\x9a\x80\x80\x80\x80\x00\x00",  # response_body's tag in 6 bytes
    ],
)
def test_a_tag_or_length_longer_than_five_bytes_is_left_to_the_runtime_which_refuses_it(value: bytes) -> None:
    with pytest.raises(DecodeError):
        log_record_pb2.LogMessage.FromString(value)
    assert wire_request_columns([value], 0)[2] == [0]


def test_a_tag_or_length_of_five_bytes_is_read() -> None:
    value = b"\x9a\x80\x80\x80\x00" + b"\x80\x80\x80\x80\x00" + _full_log().SerializeToString()
    columns, _, fallback = wire_request_columns([value], 0)
    assert fallback == []
    assert _rows(columns) == _rows(checked_request_columns([log_record_pb2.LogMessage.FromString(value)], 0)[0])
