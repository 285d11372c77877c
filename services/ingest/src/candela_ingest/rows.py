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


# Most logs carry no properties, prompt inputs or retried attempts: those columns are built only when there
# is something in them (the columns are built for every log the writers store).


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


def _map_columns(maps: Sequence[Mapping[str, str]]) -> tuple[list[list[str]], list[list[str]]]:
    """The key and value array columns of one map field across a batch."""
    if not any(maps):
        return [[] for _ in maps], [[] for _ in maps]
    pairs = [_sorted_map(values) for values in maps]
    return [keys for keys, _ in pairs], [values for _, values in pairs]


def _attempts_of(records: Sequence[log_record_pb2.LogRecord]) -> list[list[Any]]:
    """The four attempt array columns across a batch."""
    attempts = [record.attempts for record in records]
    if not any(attempts):
        return [[[] for _ in records] for _ in range(4)]
    return [list(column) for column in zip(*map(_attempt_columns, attempts), strict=True)]


def _costs(records: Sequence[log_record_pb2.LogRecord], field: str) -> tuple[list[Decimal], list[int]]:
    """A cost column and its "known" flags. An unset cost reads as "": a validated message never sets an
    empty one (it is no decimal), so the text alone tells whether the cost is known."""
    texts = list(map(attrgetter(field), records))
    return [exact_cost(text) if text else _ZERO for text in texts], [int(bool(text)) for text in texts]


# Fields copied as they are from the record, each run read by one C-level attrgetter per log and
# transposed by zip: per-value Python work is what a batch of thousands of logs pays for.
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
_FLAGS = attrgetter("streamed", "cache_hit", "request_body_omitted", "response_body_omitted")
_BODY = attrgetter("object_key", "offset", "length")
_ZERO = Decimal(0)


def _transposed(getter: attrgetter[Any], items: Sequence[Any]) -> list[list[Any]]:
    """The columns of ``getter``'s fields across ``items`` (lists: the driver may convert values in place)."""
    return [list(column) for column in zip(*map(getter, items), strict=True)]


RequestColumns = list[list[Any]]
"""The ``requests`` rows of a batch as one list per column, in :data:`REQUEST_COLUMNS` order."""


def request_columns(messages: Sequence[log_record_pb2.LogMessage], version: int) -> RequestColumns:
    """The ``requests`` columns of validated messages; ``version`` (microseconds) makes the newest write win.

    Built column by column rather than row by row: the batch is inserted columnar, and a column read
    across the batch with a C-level getter costs a fraction of the same values gathered per row.
    An unset body reference reads as the empty reference, which is exactly its ("", 0, 0) sentinel.
    """
    if not messages:
        return [[] for _ in REQUEST_COLUMNS]
    records = [message.record for message in messages]
    seconds, nanos = _transposed(_TIME, list(map(attrgetter("created_at"), records)))
    streamed, cache_hit, request_omitted, response_omitted = (
        list(map(int, flags)) for flags in zip(*map(_FLAGS, records), strict=True)
    )
    cost, priced = _costs(records, "cost_usd")
    cost_saved, cost_saved_known = _costs(records, "cost_saved_usd")
    property_keys, property_values = _map_columns([record.properties for record in records])
    input_keys, input_values = _map_columns([record.prompt_inputs for record in records])
    return [
        *_transposed(_IDS, records),
        seconds,
        [second * 1_000_000 + nano // 1000 for second, nano in zip(seconds, nanos, strict=True)],  # created_at_us()
        *_transposed(_ROUTE, records),
        streamed,
        [record.latency_ms for record in records],
        [
            record.time_to_first_token_ms if record.HasField("time_to_first_token_ms") else NO_FIRST_TOKEN
            for record in records
        ],
        *_transposed(_USAGE, [record.usage for record in records]),
        cost,
        priced,
        *_transposed(_SESSION, records),
        property_keys,
        property_values,
        *_transposed(_PROMPT, records),
        cache_hit,
        [record.finish_reason for record in records],
        request_omitted,
        response_omitted,
        *_transposed(_BODY, [message.request_body for message in messages]),
        *_transposed(_BODY, [message.response_body for message in messages]),
        [record.target_url for record in records],
        cost_saved,
        cost_saved_known,
        *_attempts_of(records),
        input_keys,
        input_values,
        [version] * len(messages),
    ]


def clickhouse_row(message: log_record_pb2.LogMessage, version: int) -> Row:
    """The ``requests`` row of one validated message (see :func:`request_columns`)."""
    return tuple(column[0] for column in request_columns([message], version))


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
