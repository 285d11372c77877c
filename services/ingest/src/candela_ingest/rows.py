"""The mapping of a LogMessage to a row of the ClickHouse ``requests`` table.

Rows are plain tuples in :data:`REQUEST_COLUMNS` order, ready for a parameterised clickhouse-driver
insert. ``created_at`` is given as integer epoch seconds (no time-zone conversion can creep in), and the
cost is quantised to the column's 12 decimal places, exactly as the usage counters in Postgres round it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from operator import attrgetter
from typing import Any

from candela.logs.v1 import log_record_pb2
from candela_ingest.validation import COST_DECIMAL_PLACES, FEEDBACK_SCORE

REQUESTS_TABLE = "requests"
REQUEST_COLUMNS: tuple[str, ...] = (
    "organization_id",
    "request_id",
    "created_at",
    "created_at_us",
    "api_key_id",
    "provider",
    "model",
    "response_model",
    "path",
    "status_code",
    "error",
    "streamed",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_prompt_tokens",
    "audio_completion_tokens",
    "cost_usd",
    "priced",
    "user_id",
    "session_id",
    "session_path",
    "session_name",
    "property_keys",
    "property_values",
    "prompt_id",
    "prompt_version",
    "cache_hit",
    "finish_reason",
    "request_body_omitted",
    "response_body_omitted",
    "request_body_key",
    "request_body_offset",
    "request_body_length",
    "response_body_key",
    "response_body_offset",
    "response_body_length",
    # Added by migration 0004 (after `version` in the table; `version` stays last here, where readers of a
    # row expect it).
    "target_url",
    "cost_saved_usd",
    "cost_saved_known",
    "attempt_target_urls",
    "attempt_status_codes",
    "attempt_errors",
    "attempt_latencies_ms",
    "prompt_input_keys",
    "prompt_input_values",
    "version",
)
NO_FIRST_TOKEN = -1
_COST_QUANTUM = Decimal(1).scaleb(-COST_DECIMAL_PLACES)

Row = tuple[Any, ...]


def insert_statement(table: str = REQUESTS_TABLE) -> str:
    """The parameterised INSERT (rows are sent separately; an inline VALUES string hangs 18.16)."""
    return f"INSERT INTO {table} ({', '.join(REQUEST_COLUMNS)}) VALUES"


@functools.lru_cache(maxsize=4096)
def exact_cost(cost_usd: str) -> Decimal:
    """A cost string as stored: a Decimal rounded half-even to 12 decimal places.

    Cached: a batch repeats few distinct costs (same model, same usage), and a Decimal is immutable.
    """
    return Decimal(cost_usd).quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def created_at_us(record: log_record_pb2.LogRecord) -> int:
    """The record's creation time in microseconds since the epoch."""
    return record.created_at.seconds * 1_000_000 + record.created_at.nanos // 1000


def _body(ref: log_record_pb2.BodyRef, present: bool) -> tuple[str, int, int]:
    return (ref.object_key, ref.offset, ref.length) if present else ("", 0, 0)


# Most logs carry no properties, prompt inputs or retried attempts: those columns are built only when there
# is something in them (the row is built for every log the writers store).


def _sorted_map(values: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """A map's keys in order and their values (two parallel arrays)."""
    if not values:
        return [], []
    keys = sorted(values)
    return keys, [values[key] for key in keys]


def _attempt_columns(
    attempts: Sequence[log_record_pb2.UpstreamAttempt],
) -> tuple[list[str], list[int], list[str], list[int]]:
    """The attempts' target URLs, status codes, errors and latencies (parallel arrays)."""
    if not attempts:
        return [], [], [], []
    return (
        [attempt.target_url for attempt in attempts],
        [attempt.status_code for attempt in attempts],
        [attempt.error for attempt in attempts],
        [attempt.latency_ms for attempt in attempts],
    )


# Runs of columns copied as they are from the record, each read by one C-level attrgetter call (one
# Python attribute access per column costs more, and this runs for every log the writers store).
# (A dotted path would fetch the sub-message again for every field: each fetch makes a new wrapper.)
_IDS = attrgetter("organization_id", "request_id")
_TIME = attrgetter("seconds", "nanos")
_ROUTE = attrgetter("api_key_id", "provider", "model", "response_model", "path", "status_code", "error")
_USAGE = attrgetter(
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_prompt_tokens",
    "audio_completion_tokens",
)
_SESSION = attrgetter("user_id", "session_id", "session_path", "session_name")
_PROMPT = attrgetter("prompt_id", "prompt_version")
_ZERO = Decimal(0)


def clickhouse_row(message: log_record_pb2.LogMessage, version: int) -> Row:
    """The ``requests`` row of a validated message; ``version`` (microseconds) makes the newest write win."""
    record = message.record
    seconds, nanos = _TIME(record.created_at)
    priced = record.HasField("cost_usd")
    property_keys, property_values = _sorted_map(record.properties)
    cost_saved = exact_cost(record.cost_saved_usd) if record.HasField("cost_saved_usd") else None
    prompt_input_keys, prompt_input_values = _sorted_map(record.prompt_inputs)
    return (
        *_IDS(record),
        seconds,
        seconds * 1_000_000 + nanos // 1000,  # as created_at_us()
        *_ROUTE(record),
        int(record.streamed),
        record.latency_ms,
        record.time_to_first_token_ms if record.HasField("time_to_first_token_ms") else NO_FIRST_TOKEN,
        *_USAGE(record.usage),
        exact_cost(record.cost_usd) if priced else _ZERO,
        int(priced),
        *_SESSION(record),
        property_keys,
        property_values,
        *_PROMPT(record),
        int(record.cache_hit),
        record.finish_reason,
        int(record.request_body_omitted),
        int(record.response_body_omitted),
        *_body(message.request_body, message.HasField("request_body")),
        *_body(message.response_body, message.HasField("response_body")),
        record.target_url,
        cost_saved if cost_saved is not None else _ZERO,
        int(cost_saved is not None),
        *_attempt_columns(record.attempts),
        prompt_input_keys,
        prompt_input_values,
        version,
    )


SCORES_TABLE = "request_scores"
SCORE_COLUMNS: tuple[str, ...] = ("organization_id", "request_id", "name", "value", "updated_at", "version")


def scores_insert_statement(table: str = SCORES_TABLE) -> str:
    """The parameterised INSERT of score rows."""
    return f"INSERT INTO {table} ({', '.join(SCORE_COLUMNS)}) VALUES"


def score_rows(update: log_record_pb2.LogUpdate) -> list[Row]:
    """One ``request_scores`` row per score of a validated update (feedback as the score "feedback").

    The version is the update's own time in microseconds, so the newest update of a score wins whatever
    order updates arrive in, and a redelivered one collapses into the same row.
    """
    version = update.updated_at.seconds * 1_000_000 + update.updated_at.nanos // 1000
    scores = dict(update.scores)
    if update.HasField("feedback"):
        scores[FEEDBACK_SCORE] = 1.0 if update.feedback else 0.0
    return [
        (update.organization_id, update.request_id, name, float(value), update.updated_at.seconds, version)
        for name, value in sorted(scores.items())
    ]
