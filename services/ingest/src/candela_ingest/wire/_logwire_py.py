"""The pure-Python twin of the C wire decoder (_logwire.c): the same entry points, the same results, read
with the protobuf runtime. It is the reference the C decoder is tested and fuzzed against, and what
``CANDELA_NO_EXTENSIONS=1`` selects (see :mod:`candela_ingest.wire.logwire`).

It leaves to the caller ("fallback") what the protobuf runtime cannot parse, updates, and messages holding
a field this code does not know; the C decoder leaves those too, and also encodings it does not take on,
so what C decodes this decodes alike (the fuzzer's invariant).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import tags
from candela_ingest.wire.validation import check_log_record
from candela_ingest.wire.varint import varint
from candela_runtime.errors import Violations
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, prompt_inputs_bytes

COLUMNS: tuple[str, ...] = (
    "organization_id", "request_id", "created_at", "created_at_us", "created_at_nanos",
    "api_key_id", "provider", "model", "response_model", "path", "status_code", "error",
    "streamed", "latency_ms", "time_to_first_token_ms", "time_to_first_token_ms_as_set",
    "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "audio_prompt_tokens", "audio_completion_tokens",
    "cost_usd_text", "cost_saved_usd_text",
    "user_id", "session_id", "session_path", "session_name",
    "property_keys", "property_values",
    "prompt_id", "prompt_version", "cache_hit", "finish_reason",
    "request_body_omitted", "response_body_omitted",
    "request_body_key", "request_body_offset", "request_body_length",
    "request_body_frame_offset", "request_body_frame_length",
    "response_body_key", "response_body_offset", "response_body_length",
    "response_body_frame_offset", "response_body_frame_length",
    "target_url",
    "attempt_target_urls", "attempt_status_codes", "attempt_errors", "attempt_latencies_ms",
    "prompt_input_keys", "prompt_input_values",
    "usage_clamped", "request_body_over_limit", "response_body_over_limit",
    "trace_id",
)  # fmt: skip
"""The names of the columns :func:`columns` returns, in order (the C decoder's ``COLUMNS``; a test checks)."""

_RECORD_FIELDS = log_record_pb2.LogRecord.DESCRIPTOR.fields_by_name
_USAGE_FIELDS = log_record_pb2.TokenUsage.DESCRIPTOR.fields_by_name
_BODY_PARTS = {"key": "object_key", "offset": "offset", "length": "length"}
_BODY_PARTS.update(frame_offset="frame_offset", frame_length="frame_length")


def _has_unknown_fields(message: Any) -> bool:
    """Whether ``message`` (or any message in it) holds a field its descriptor does not declare. Drops them."""
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return bool(message.ByteSize() != size)


def _sorted_map(values: Any) -> tuple[list[str], list[str]]:
    keys = sorted(values)
    return keys, [values[key] for key in keys]


def _row(message: log_record_pb2.LogMessage) -> dict[str, Any]:
    """A decoded message's value in each of :data:`COLUMNS`, by name."""
    record = message.record
    row: dict[str, Any] = {}
    for name in COLUMNS:
        if name in _RECORD_FIELDS and _RECORD_FIELDS[name].type != _RECORD_FIELDS[name].TYPE_MESSAGE:
            value = getattr(record, name)
            row[name] = int(value) if isinstance(value, bool) else value
        elif name in _USAGE_FIELDS:
            row[name] = getattr(record.usage, name)
        elif name.startswith(("request_body_", "response_body_")) and not name.endswith(("_omitted", "_over_limit")):
            body, part = name.split("_body_")
            row[name] = getattr(getattr(message, f"{body}_body"), _BODY_PARTS[part])
    seconds, nanos = record.created_at.seconds, record.created_at.nanos
    first_token = record.time_to_first_token_ms
    row.update(
        created_at=seconds,
        created_at_nanos=nanos,
        created_at_us=seconds * 1_000_000 + nanos // 1000,
        time_to_first_token_ms=first_token if record.HasField("time_to_first_token_ms") else -1,
        time_to_first_token_ms_as_set=first_token,
        cost_usd_text=record.cost_usd,
        cost_saved_usd_text=record.cost_saved_usd,
    )
    row["property_keys"], row["property_values"] = _sorted_map(record.properties)
    row["prompt_input_keys"], row["prompt_input_values"] = _sorted_map(record.prompt_inputs)
    attempts = record.attempts
    row["attempt_target_urls"] = [attempt.target_url for attempt in attempts]
    row["attempt_status_codes"] = [attempt.status_code for attempt in attempts]
    row["attempt_errors"] = [attempt.error for attempt in attempts]
    row["attempt_latencies_ms"] = [attempt.latency_ms for attempt in attempts]
    return row


def _set_but_empty(message: log_record_pb2.LogMessage) -> bool:
    """Whether a cost or body reference is set to its empty value (only presence tells it from unset)."""
    record = message.record
    return (
        (record.HasField("cost_usd") and not record.cost_usd)
        or (record.HasField("cost_saved_usd") and not record.cost_saved_usd)
        or (message.HasField("request_body") and not message.request_body.object_key)
        or (message.HasField("response_body") and not message.response_body.object_key)
    )


def columns(values: list[bytes], /) -> tuple[list[list[Any]], list[int], list[int]]:
    """(one list per name of :data:`COLUMNS`, positions among the decoded of those with a cost or body
    reference set to its empty value, positions in ``values`` of the messages left to the caller)."""
    if not isinstance(values, list) or not all(isinstance(value, bytes) for value in values):
        raise TypeError("columns() takes a list of bytes")
    lists: list[list[Any]] = [[] for _ in COLUMNS]
    set_but_empty: list[int] = []
    fallback: list[int] = []
    for index, value in enumerate(values):
        try:
            message = log_record_pb2.LogMessage.FromString(value)
        except DecodeError:
            fallback.append(index)
            continue
        if message.HasField("update") or _has_unknown_fields(message):
            fallback.append(index)
            continue
        if _set_but_empty(message):
            set_but_empty.append(len(lists[0]))
        row = _row(message)
        for column, name in zip(lists, COLUMNS, strict=True):
            column.append(row[name])
    return lists, set_but_empty, fallback


_RECORD_FIELD_TAG = tags.tag(tags.LogMessage.RECORD, tags.WIRE_LEN)


def _is_canonical(record: log_record_pb2.LogRecord) -> bool:
    return all(value == value.lower() for value in (record.request_id, record.organization_id, record.api_key_id))


def ingest_request(
    data: bytes,
    max_records: int,
    max_record_bytes: int,
    max_metadata_bytes: int,
    earliest_seconds: int,
    latest_seconds: int,
    /,
) -> tuple[list[bytes], list[bytes], list[str], list[bytes], list[bytes], list[dict[str, str] | None]] | None:
    """A serialized IngestRequest's parts per record (LogMessage record field, request id, organization id,
    request body, response body, trace context) when every record passes ingest's checks with its
    identifiers canonical; else None ("check it exactly", never "invalid")."""
    try:
        request = ingest_service_pb2.IngestRequest.FromString(data)
    except DecodeError:
        return None
    items = request.records
    if not items or len(items) > max_records or _has_unknown_fields(request):
        return None
    violations = Violations()
    latest = datetime.fromtimestamp(latest_seconds, UTC)
    parts: tuple[list[Any], list[Any], list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [], [], [])
    for item in items:
        record = item.record
        if (
            not item.HasField("record")
            or item.ByteSize() > max_record_bytes
            or record.ByteSize() > max_metadata_bytes
            or record.created_at.seconds < earliest_seconds
            or prompt_inputs_bytes(record.prompt_inputs) > MAX_PROMPT_INPUTS_BYTES
            or (record.request_body_omitted and item.request_body)
            or (record.response_body_omitted and item.response_body)
            or not _is_canonical(record)
        ):
            return None
        check_log_record(violations, "record", record, latest_created_at=latest)
        if violations.items:
            return None
        serialized = record.SerializeToString()
        for part, value in zip(
            parts,
            (
                _RECORD_FIELD_TAG + varint(len(serialized)) + serialized,
                record.request_id.encode(),
                record.organization_id,
                item.request_body,
                item.response_body,
                dict(item.trace_context) or None,
            ),
            strict=True,
        ):
            part.append(value)
    return parts
