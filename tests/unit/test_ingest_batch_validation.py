"""The writers' batch validation: column checks flag every invalid message, and valid batches pass whole."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire.validation import UINT32_MAX, check_log_message
from candela_ingest.writer.batch import ConsumedMessage, DeadLetter, DecodedBatch, decode, decode_batch
from candela_ingest.writer.rows import checked_request_columns, request_columns
from candela_runtime.errors import Violations
from tests.factories import log_message

pytestmark = pytest.mark.unit

ORG = str(uuid.uuid4())
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _valid(index: int = 0) -> log_record_pb2.LogMessage:
    message = log_message(
        organization_id=ORG,
        model="gpt-4o-mini",
        status_code=200,
        latency_ms=100 + index,
        cost_usd="0.0001",
        usage=log_record_pb2.TokenUsage(prompt_tokens=10),
        created_at=NOW,
    )
    message.request_body.object_key = f"bodies/{ORG}/object.zst"
    message.request_body.offset = index * 10
    message.request_body.length = 10
    message.request_body.frame_offset = index * 100
    message.request_body.frame_length = 50
    return message


def suspect_log_messages(messages: list[log_record_pb2.LogMessage]) -> list[int]:
    return checked_request_columns(messages, 1)[1]


def _is_invalid(message: log_record_pb2.LogMessage) -> bool:
    violations = Violations()
    check_log_message(violations, message)
    return bool(violations.items)


# Ways to break each checked field (or to leave it as a valid message may), applied at random.
_VALUES: dict[str, list[object]] = {
    "request_id": ["", "not-a-uuid", str(uuid.uuid4()).upper(), str(uuid.uuid4())[:-1] + "g"],
    "organization_id": ["", "x" * 36, str(uuid.uuid4())],
    "api_key_id": ["", "key", str(uuid.uuid4())],
    "status_code": [0, 999, 1000, -1],
    "latency_ms": [0, UINT32_MAX, UINT32_MAX + 1, -5],
    "time_to_first_token_ms": [None, 0, 2**31 - 1, 2**31, -1],
    "prompt_tokens": [0, UINT32_MAX, UINT32_MAX + 1, -1],
    "cost_usd": [None, "", "0", "1.5", "NaN", "-1", "1000000", "abc"],
    "cost_saved_usd": [None, "", "0.25", "Infinity"],
    "created_at": ["now", "unset", "epoch", "2101", "bad-nanos", "big-nanos"],
    "request_body": ["keep", "unset", "empty-key", "negative", "negative-frame"],
    "update": [False, True],
}
_CHANGES = {name: st.sampled_from(values) for name, values in _VALUES.items()}
_SINGLE_CHANGES = [(name, value) for name, values in _VALUES.items() for value in values]


def _apply(message: log_record_pb2.LogMessage, changes: dict[str, object]) -> None:
    record = message.record
    for name in ("request_id", "organization_id", "api_key_id", "status_code", "latency_ms"):
        if name in changes:
            setattr(record, name, changes[name])
    if "prompt_tokens" in changes:
        record.usage.prompt_tokens = changes["prompt_tokens"]  # type: ignore[assignment]
    for name in ("time_to_first_token_ms", "cost_usd", "cost_saved_usd"):
        if name in changes:
            if changes[name] is None:
                record.ClearField(name)  # type: ignore[arg-type]
            else:
                setattr(record, name, changes[name])
    stamp = changes.get("created_at", "now")
    if stamp == "unset":
        record.ClearField("created_at")
    elif stamp == "epoch":
        record.created_at.seconds = 0
    elif stamp == "2101":
        record.created_at.FromDatetime(datetime(2101, 1, 1, tzinfo=UTC))
    elif stamp == "bad-nanos":
        record.created_at.nanos = -1
    elif stamp == "big-nanos":
        record.created_at.nanos = 1_000_000_000
    body = changes.get("request_body", "keep")
    if body == "unset":
        message.ClearField("request_body")
    elif body == "empty-key":
        message.request_body.object_key = ""
    elif body == "negative":
        message.request_body.length = -1
    elif body == "negative-frame":
        message.request_body.frame_length = -1
    if changes.get("update"):
        update = log_record_pb2.LogUpdate(request_id=str(uuid.uuid4()), organization_id=ORG, feedback=True)
        update.updated_at.FromDatetime(NOW)
        message.update.CopyFrom(update)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(sorted(_CHANGES)), st.none()), min_size=1, max_size=12), st.data())
def test_every_invalid_message_is_a_suspect(shapes: list[dict[str, None]], data: st.DataObject) -> None:
    messages = []
    for index, shape in enumerate(shapes):
        message = _valid(index)
        _apply(message, {name: data.draw(_CHANGES[name]) for name in shape})
        messages.append(message)
    suspects = set(suspect_log_messages(messages))
    invalid = {index for index, message in enumerate(messages) if _is_invalid(message)}
    assert invalid <= suspects


@pytest.mark.parametrize(("name", "value"), _SINGLE_CHANGES)
def test_one_bad_field_among_valid_messages_makes_its_message_a_suspect(name: str, value: object) -> None:
    messages = [_valid(index) for index in range(4)]
    _apply(messages[2], {name: value})
    if _is_invalid(messages[2]):
        assert 2 in suspect_log_messages(messages)
    else:
        assert suspect_log_messages(messages) in ([], [2])


def test_a_valid_batch_has_no_suspects_even_with_unpriced_logs_and_missing_bodies() -> None:
    messages = [_valid(index) for index in range(50)]
    messages[3].record.ClearField("cost_usd")
    messages[4].ClearField("request_body")
    messages[5].record.api_key_id = str(uuid.uuid4())
    messages[6].record.time_to_first_token_ms = 0
    assert suspect_log_messages(messages) == []


def test_only_the_bad_ids_are_suspects() -> None:
    messages = [_valid(index) for index in range(10)]
    messages[2].record.request_id = "nope"
    messages[7].record.organization_id = ""
    assert suspect_log_messages(messages) == [2, 7]


def test_decode_batch_sorts_messages_as_decode_does_and_keeps_batch_order() -> None:
    logs = [_valid(index) for index in range(8)]
    logs[1].record.request_id = "bad"
    logs[5].record.cost_usd = "NaN"
    batch = [ConsumedMessage("logs", 0, offset, b"k", log.SerializeToString()) for offset, log in enumerate(logs)] + [
        ConsumedMessage("logs", 0, 8, b"k", b"\x0a\xff\xff not a message"),
        ConsumedMessage("logs", 0, 9, b"k", None),
    ]
    entries, dead = decode_batch(batch)
    one_by_one = [decode(message) for message in batch]
    assert [message.offset for message in entries.logs] == [
        result.message.offset for result in one_by_one if not isinstance(result, DeadLetter)
    ]
    assert [(letter.message.offset, letter.error) for letter in dead] == [
        (result.message.offset, result.error) for result in one_by_one if isinstance(result, DeadLetter)
    ]
    assert [letter.message.offset for letter in dead] == [1, 5, 8, 9]
    kept = [log_record_pb2.LogMessage.FromString(message.value or b"") for message in entries.logs]
    assert entries.columns == request_columns(kept, 0), "rows of the kept logs only"


def test_decode_batch_keeps_updates_apart_and_halves_keep_rows_with_their_logs() -> None:
    logs = [_valid(index) for index in range(5)]
    update = log_record_pb2.LogMessage(
        update=log_record_pb2.LogUpdate(request_id=str(uuid.uuid4()), organization_id=ORG, feedback=True)
    )
    update.update.updated_at.FromDatetime(NOW)
    payloads = [logs[0], logs[1], update, logs[2], logs[3], logs[4]]
    batch = [ConsumedMessage("logs", 0, offset, b"k", log.SerializeToString()) for offset, log in enumerate(payloads)]
    decoded, dead = decode_batch(batch)
    assert dead == []
    assert [entry.message.offset for entry in decoded.updates] == [2]
    assert [message.offset for message in decoded.logs] == [0, 1, 3, 4, 5]
    first, second = decoded.halves()
    assert (len(first), len(second)) == (3, 3)
    for half in (first, second):
        assert half.columns["request_id"] == [
            log_record_pb2.LogMessage.FromString(message.value or b"").record.request_id for message in half.logs
        ]
    assert [entry.message.offset for entry in second.updates] == [2]
    single, rest = DecodedBatch(decoded.logs[:1], decoded.columns.sliced(0, 1), decoded.updates).halves()
    assert (len(single.logs), len(single.updates), len(rest.logs), len(rest.updates)) == (1, 0, 0, 1)


@pytest.mark.parametrize("field", ["offset", "length", "frame_offset", "frame_length"])
def test_a_negative_body_position_is_a_suspect(field: str) -> None:
    """The columns are UInt64: a negative position must reach the exact check, never the insert."""
    messages = [_valid(index) for index in range(4)]
    setattr(messages[2].request_body, field, -1)
    assert 2 in suspect_log_messages(messages)
    assert _is_invalid(messages[2])


def test_a_cost_or_body_key_set_to_empty_is_a_suspect_though_it_reads_as_unset() -> None:
    messages = [_valid(index) for index in range(6)]
    messages[1].record.cost_usd = ""
    messages[2].record.cost_saved_usd = ""
    messages[3].response_body.object_key = ""
    messages[4].request_body.object_key = ""
    assert suspect_log_messages(messages) == [1, 2, 3, 4]
    assert all(_is_invalid(messages[index]) for index in (1, 2, 3, 4))
