"""Validation of incoming logs: every problem of a batch is reported at once, as field violations.

Ingest refuses a whole batch when any record is invalid (nothing is written), naming each bad field by
its path in the request, e.g. ``records[2].record.request_id``. The same record checks run again in the
writers on what they read from Kafka, since anything can be produced to a topic.

The numeric bounds are those of the ClickHouse columns (UInt32 token counts, Decimal64(12) cost): a value
out of them would otherwise be refused only by the insert, for its whole batch, and then isolated by
bisection; stopped here, it is one dead letter at once.
"""

from __future__ import annotations

import binascii
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_runtime.errors import Violations
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, MAX_TOKEN_COUNT, prompt_inputs_bytes

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
MAX_STATUS_CODE = 999
# Decimal64(12) holds up to 9,223,372.036854775807; no single LLM call costs a million dollars.
MAX_COST_USD = Decimal(1_000_000)
COST_DECIMAL_PLACES = 12
EARLIEST_CREATED_AT = datetime(2000, 1, 1, tzinfo=UTC)
NANOS_PER_SECOND = 1_000_000_000
_TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_prompt_tokens",
    "audio_completion_tokens",
)
_USAGE_FIELDS = tuple(f"usage.{name}" for name in _TOKEN_FIELDS)
_TOKEN_COUNTS = operator.attrgetter(*_TOKEN_FIELDS)
_COST_FIELDS: tuple[Literal["cost_usd"], Literal["cost_saved_usd"]] = ("cost_usd", "cost_saved_usd")
EARLIEST_SECONDS = int(EARLIEST_CREATED_AT.timestamp())
LATEST_SECONDS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class BatchLimits:
    """Bounds on one Ingest call."""

    max_batch_records: int
    max_record_bytes: int
    max_metadata_bytes: int
    max_clock_skew: timedelta


CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


_UUID_TEXT = 36
_HYPHENS = (8, 13, 18, 23)


def uuid_bytes(values: Sequence[str]) -> bytes | None:
    """The 16 big-endian bytes of each of ``values``, concatenated, if every one is a UUID in its
    36-character hyphenated form (any case); None otherwise.

    The text of all the values is checked and parsed at once (this runs over every id of every log, in
    ingest and in the writers): each value 36 characters with its hyphens in place, then the hex digits
    without them, whose bytes have the exact length only if each value held 32 of them. A value that is
    no str raises TypeError.
    """
    count = len(values)
    text = "".join(values)
    hyphens = "-" * count
    if len(text) != _UUID_TEXT * count or any(text[at::_UUID_TEXT] != hyphens for at in _HYPHENS):
        return None
    try:
        # bytes.translate deletes the hyphens several times faster than str.replace.
        raw = binascii.unhexlify(text.encode("ascii").translate(None, b"-"))
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        return None
    # A hyphen elsewhere than in the four places leaves fewer digits.
    return raw if len(raw) == 16 * count else None


def is_canonical_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in its 36-character hyphenated form (any case).

    A regular expression rather than ``uuid.UUID``; batches are checked a column at a time with
    :func:`uuid_bytes`, and this names the bad values once a batch is in doubt.
    """
    return CANONICAL_UUID.fullmatch(value) is not None


def parse_cost(value: str) -> Decimal | None:
    """The cost as an exact Decimal, or None when it is not a finite, non-negative, bounded decimal."""
    try:
        cost = Decimal(value)
    except InvalidOperation:
        return None
    if not cost.is_finite() or cost < 0 or cost >= MAX_COST_USD:
        return None
    return cost


# The checks below take the record's path and the field's name apart and join them only for a violation:
# they run for every log, in ingest and again in the writers, and valid logs are the common case.


def _check_uuid(violations: Violations, path: str, field: str, value: str, *, required: bool) -> None:
    if not value:
        if required:
            violations.add(f"{path}.{field}", "is required")
        return
    if not is_canonical_uuid(value):
        violations.add(f"{path}.{field}", f"must be a UUID (8-4-4-4-12 hex digits), got {value[:64]!r}")


def _check_range(violations: Violations, path: str, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        violations.add(f"{path}.{field}", f"must be between {low} and {high}, got {value}")


def check_log_record(
    violations: Violations,
    path: str,
    record: log_record_pb2.LogRecord,
    *,
    latest_created_at: datetime | None = None,
) -> None:
    """Adds a violation for each bad field of ``record``, named ``<path>.<field>``.

    ``latest_created_at`` bounds ``created_at`` from above (now plus the allowed clock skew); the writers
    pass None because they may legitimately read old messages from the topic.
    """
    _check_uuid(violations, path, "request_id", record.request_id, required=True)
    _check_uuid(violations, path, "organization_id", record.organization_id, required=True)
    _check_uuid(violations, path, "api_key_id", record.api_key_id, required=False)
    if not record.HasField("created_at"):
        violations.add(f"{path}.created_at", "is required")
    else:
        stamp = record.created_at
        earliest = EARLIEST_SECONDS
        latest = LATEST_SECONDS if latest_created_at is None else int(latest_created_at.timestamp())
        if not 0 <= stamp.nanos < NANOS_PER_SECOND:
            violations.add(f"{path}.created_at.nanos", f"must be between 0 and 999999999, got {stamp.nanos}")
        elif not earliest <= stamp.seconds <= latest:
            violations.add(
                f"{path}.created_at",
                f"must lie between {EARLIEST_CREATED_AT.isoformat()} and "
                f"{datetime.fromtimestamp(latest, UTC).isoformat()}, got {stamp.seconds} s since the epoch",
            )
    _check_range(violations, path, "status_code", record.status_code, 0, MAX_STATUS_CODE)
    _check_range(violations, path, "latency_ms", record.latency_ms, 0, UINT32_MAX)
    if record.HasField("time_to_first_token_ms"):
        _check_range(violations, path, "time_to_first_token_ms", record.time_to_first_token_ms, 0, INT32_MAX)
    if record.HasField("usage"):
        tokens = _TOKEN_COUNTS(record.usage)
        # One pass in C for the common all-valid case; the slow loop only names the bad fields.
        if min(tokens) < 0 or max(tokens) > MAX_TOKEN_COUNT:
            for field, value in zip(_USAGE_FIELDS, tokens, strict=True):
                _check_range(violations, path, field, value, 0, MAX_TOKEN_COUNT)
    for name in _COST_FIELDS:
        if not record.HasField(name):
            continue
        value = getattr(record, name)
        if parse_cost(value) is None:
            violations.add(
                f"{path}.{name}",
                f"must be a non-negative decimal below {MAX_COST_USD} (unset when unpriced), got {value[:64]!r}",
            )


def validate_ingest_request(request: ingest_service_pb2.IngestRequest, limits: BatchLimits, now: datetime) -> None:
    """Raises :class:`~candela_runtime.errors.InvalidArgument` listing every problem of the batch."""
    violations = Violations()
    if not request.records:
        violations.add("records", "at least one record is required")
    elif len(request.records) > limits.max_batch_records:
        violations.add(
            "records", f"holds {len(request.records)} records, more than the limit of {limits.max_batch_records}"
        )
    latest_created_at = now + limits.max_clock_skew
    if not violations.items and _all_records_pass(request.records, limits, int(latest_created_at.timestamp())):
        return
    for index, item in enumerate(request.records):
        path = f"records[{index}]"
        size = item.ByteSize()
        if size > limits.max_record_bytes:
            violations.add(path, f"is {size} bytes, more than the limit of {limits.max_record_bytes}")
        if not item.HasField("record"):
            violations.add(f"{path}.record", "is required")
            continue
        metadata_size = item.record.ByteSize()
        if metadata_size > limits.max_metadata_bytes:
            violations.add(
                f"{path}.record", f"is {metadata_size} bytes, more than the limit of {limits.max_metadata_bytes}"
            )
        check_log_record(violations, f"{path}.record", item.record, latest_created_at=latest_created_at)
        # Checked here, not in check_log_record: the writers keep what ingest accepted before this bound.
        inputs_size = prompt_inputs_bytes(item.record.prompt_inputs)
        if inputs_size > MAX_PROMPT_INPUTS_BYTES:
            violations.add(
                f"{path}.record.prompt_inputs",
                f"total {inputs_size} bytes, more than the limit of {MAX_PROMPT_INPUTS_BYTES} the proxy and prompts"
                " service keep",
            )
        if item.record.request_body_omitted and item.request_body:
            violations.add(f"{path}.request_body", "must be empty when record.request_body_omitted is set")
        if item.record.response_body_omitted and item.response_body:
            violations.add(f"{path}.response_body", "must be empty when record.response_body_omitted is set")
    violations.raise_if_any("the batch of logs is invalid")


_BYTE_SIZE = operator.methodcaller("ByteSize")
_STAMP = operator.attrgetter("seconds", "nanos")
_RECORD_NUMBERS = operator.attrgetter("status_code", "latency_ms", "time_to_first_token_ms")
_OMITTED = operator.attrgetter("request_body_omitted", "response_body_omitted")
_REQUEST_BODY = operator.attrgetter("request_body")
_RESPONSE_BODY = operator.attrgetter("response_body")

RECORD_BOUNDS: tuple[tuple[str, int, int], ...] = (
    ("status_code", 0, MAX_STATUS_CODE),
    ("latency_ms", 0, UINT32_MAX),
    ("time_to_first_token_ms", 0, INT32_MAX),
    # The proxy zeroes (and flags) a provider's count beyond this bound, so its logs always pass.
    *((name, 0, MAX_TOKEN_COUNT) for name in _TOKEN_FIELDS),
)
"""The bounds :func:`check_log_record` puts on a record's numbers (unset ones read 0, which is within)."""


def batch_within_bounds(
    numbers: Mapping[str, Sequence[int]], seconds: Sequence[int], nanos: Sequence[int], latest_seconds: int
) -> bool:
    """Whether a batch's numbers (each of :data:`RECORD_BOUNDS` by name, across the batch) and creation
    times all lie within the bounds of :func:`check_log_record`: a pass over each column in C."""
    return (
        min(seconds) >= EARLIEST_SECONDS
        and max(seconds) <= latest_seconds
        and min(nanos) >= 0
        and max(nanos) < NANOS_PER_SECOND
        and all(min(numbers[name]) >= low and max(numbers[name]) <= high for name, low, high in RECORD_BOUNDS)
    )


def _all_records_pass(
    items: Sequence[ingest_service_pb2.IngestRecord], limits: BatchLimits, latest_seconds: int
) -> bool:
    """True only if every record passes the per-record checks of :func:`validate_ingest_request`.

    The same checks, run over each field across the batch at once in C (getters, ``min``/``max``, one
    :func:`uuid_bytes` per id field): a valid batch, the common case, is passed at that price,
    and any doubt (a False) sends the batch through the record-by-record checks, which name every
    problem. Unset fields read as their defaults, which pass as the exact checks do (zeros) or fail here
    (an empty id; created_at at the epoch, which is also how an unset record reads).
    """
    records = [item.record for item in items]
    metadata = max(map(_BYTE_SIZE, records))
    # Metadata no larger than the prompt-inputs bound surely holds inputs within it; a larger one is checked
    # record by record (rare: the proxy's logs are a few KiB).
    if metadata > min(limits.max_metadata_bytes, MAX_PROMPT_INPUTS_BYTES):
        return False
    # A record's size is at most its largest parts' sum plus their three keys and lengths (11 bytes each):
    # cheaper than sizing every record whole, and any doubt falls back to doing just that.
    bodies = max(map(len, map(_REQUEST_BODY, items))) + max(map(len, map(_RESPONSE_BODY, items)))
    if metadata + bodies + 33 > limits.max_record_bytes and max(map(_BYTE_SIZE, items)) > limits.max_record_bytes:
        return False
    for field, required in (("request_id", True), ("organization_id", True), ("api_key_id", False)):
        values = list(map(operator.attrgetter(field), records))
        if uuid_bytes(values if required else list(filter(None, values))) is None:
            return False
    seconds, nanos = zip(*map(_STAMP, map(operator.attrgetter("created_at"), records)), strict=True)
    route = zip(*map(_RECORD_NUMBERS, records), strict=True)
    tokens = zip(*map(_TOKEN_COUNTS, map(operator.attrgetter("usage"), records)), strict=True)
    numbers = dict(
        zip(("status_code", "latency_ms", "time_to_first_token_ms", *_TOKEN_FIELDS), (*route, *tokens), strict=True)
    )
    if not batch_within_bounds(numbers, seconds, nanos, latest_seconds):
        return False
    for name in _COST_FIELDS:
        texts = list(map(operator.attrgetter(name), records))
        if not all(parse_cost(text) is not None for text in set(texts) if text):
            return False
        if "" in texts and any(record.HasField(name) for record, text in zip(records, texts, strict=True) if not text):
            return False
    request_omitted, response_omitted = zip(*map(_OMITTED, records), strict=True)
    if any(request_omitted) or any(response_omitted):
        return not any(
            (record.request_body_omitted and item.request_body) or (record.response_body_omitted and item.response_body)
            for item, record in zip(items, records, strict=True)
        )
    return True


MAX_SCORE_NAME_CHARS = 128
MAX_SCORES_PER_UPDATE = 64
FEEDBACK_SCORE = "feedback"


def check_log_update(
    violations: Violations, path: str, update: log_record_pb2.LogUpdate, *, latest_updated_at: datetime | None = None
) -> None:
    """Adds a violation for each bad field of a score/feedback update, named ``<path>.<field>``."""
    _check_uuid(violations, path, "request_id", update.request_id, required=True)
    _check_uuid(violations, path, "organization_id", update.organization_id, required=True)
    if not update.scores and not update.HasField("feedback"):
        violations.add(path, "must carry at least one score or the feedback")
    if len(update.scores) > MAX_SCORES_PER_UPDATE:
        violations.add(f"{path}.scores", f"holds {len(update.scores)} scores, more than {MAX_SCORES_PER_UPDATE}")
    for name, value in update.scores.items():
        if not name or len(name) > MAX_SCORE_NAME_CHARS:
            violations.add(
                f"{path}.scores", f"names must have 1 to {MAX_SCORE_NAME_CHARS} characters, got {name[:64]!r}"
            )
        if name == FEEDBACK_SCORE and update.HasField("feedback"):
            violations.add(f"{path}.scores", f"{FEEDBACK_SCORE!r} is reserved for the feedback field")
        if not math.isfinite(value):
            violations.add(f"{path}.scores[{name[:64]}]", f"must be a finite number, got {value}")
    if update.HasField("updated_at"):
        stamp = update.updated_at
        latest = int((latest_updated_at or datetime(2100, 1, 1, tzinfo=UTC)).timestamp())
        if (
            not 0 <= stamp.nanos < NANOS_PER_SECOND
            or not int(EARLIEST_CREATED_AT.timestamp()) <= stamp.seconds <= latest
        ):
            violations.add(f"{path}.updated_at", "must lie between 2000-01-01 and now (plus the allowed clock skew)")
    elif latest_updated_at is None:
        violations.add(f"{path}.updated_at", "is required")


def validate_update_logs_request(
    request: ingest_service_pb2.UpdateLogsRequest, limits: BatchLimits, now: datetime
) -> None:
    """Raises :class:`~candela_runtime.errors.InvalidArgument` listing every problem of the updates."""
    violations = Violations()
    if not request.updates:
        violations.add("updates", "at least one update is required")
    elif len(request.updates) > limits.max_batch_records:
        violations.add(
            "updates", f"holds {len(request.updates)} updates, more than the limit of {limits.max_batch_records}"
        )
    for index, update in enumerate(request.updates):
        check_log_update(violations, f"updates[{index}]", update, latest_updated_at=now + limits.max_clock_skew)
    violations.raise_if_any("the log updates are invalid")


def check_log_message(violations: Violations, message: log_record_pb2.LogMessage) -> None:
    """Adds a violation for each bad field of a LogMessage read from Kafka (fields named ``record.x``)."""
    if message.HasField("update"):
        if message.HasField("record"):
            violations.add("record", "must be unset in an update message")
        check_log_update(violations, "update", message.update)
        return
    check_log_record(violations, "record", message.record)
    for name in ("request_body", "response_body"):
        if not message.HasField(name):
            continue
        ref: log_record_pb2.BodyRef = getattr(message, name)
        if not ref.object_key:
            violations.add(f"{name}.object_key", "is required")
        if ref.offset < 0 or ref.length < 0 or ref.frame_offset < 0 or ref.frame_length < 0:
            violations.add(
                name,
                "offset, length, frame_offset and frame_length must not be negative, got "
                f"{ref.offset}, {ref.length}, {ref.frame_offset} and {ref.frame_length}",
            )
