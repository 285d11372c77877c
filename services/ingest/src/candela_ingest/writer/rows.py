"""The mapping of a LogMessage to a row of the ClickHouse ``requests`` table.

Rows are plain tuples in :data:`REQUEST_COLUMNS` order, ready for a parameterised clickhouse-driver
insert. ``created_at`` is given as integer epoch seconds (no time-zone conversion can creep in), and the
cost is quantised to the column's 12 decimal places, exactly as the usage counters in Postgres round it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from operator import attrgetter, methodcaller
from typing import Any, Literal

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import logwire
from candela_ingest.wire.validation import (
    CANONICAL_UUID,
    COST_DECIMAL_PLACES,
    FEEDBACK_SCORE,
    LATEST_SECONDS,
    RECORD_BOUNDS,
    batch_within_bounds,
    parse_cost,
    uuid_bytes,
)

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
    # Added by migration 0004 (after `version` in the table, as every later column is; `version` stays last
    # here, where readers of a row expect it).
    "target_url",
    "cost_saved_usd",
    "cost_saved_known",
    "attempt_target_urls",
    "attempt_status_codes",
    "attempt_errors",
    "attempt_latencies_ms",
    "prompt_input_keys",
    "prompt_input_values",
    # Added by migration 0006: the zstd frame holding the body (0, 0 for a body stored uncompressed).
    "request_body_frame_offset",
    "request_body_frame_length",
    "response_body_frame_offset",
    "response_body_frame_length",
    # Added by migration 0007.
    "usage_clamped",
    "request_body_over_limit",
    "response_body_over_limit",
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


def _map_columns(maps: Sequence[Mapping[str, str]]) -> tuple[list[list[str]], list[list[str]]]:
    """The key and value array columns of one map field across a batch."""
    if not any(maps):
        return [[] for _ in maps], [[] for _ in maps]
    pairs = [_sorted_map(values) for values in maps]
    return [keys for keys, _ in pairs], [values for _, values in pairs]


_ATTEMPT = attrgetter("target_url", "status_code", "error", "latency_ms")


def _attempts_of(records: Sequence[log_record_pb2.LogRecord]) -> list[list[Any]]:
    """The four attempt array columns across a batch (target URLs, status codes, errors, latencies: one list
    per log in each, an element per attempt)."""
    attempts = [record.attempts for record in records]
    if not any(attempts):
        return [[[] for _ in records] for _ in range(4)]
    columns: list[list[Any]] = [[], [], [], []]
    urls, codes, errors, latencies = columns
    for tries in attempts:
        # Most logs have one attempt: its four fields in one C-level call, without a list comprehension per
        # field (which made the attempts a fifth of the writer's row building).
        if len(tries) == 1:
            url, code, error, latency = _ATTEMPT(tries[0])
            urls.append([url])
            codes.append([code])
            errors.append([error])
            latencies.append([latency])
        else:
            fields = list(zip(*map(_ATTEMPT, tries), strict=True)) or [(), (), (), ()]
            for column, values in zip(columns, fields, strict=True):
                column.append(list(values))
    return columns


@functools.lru_cache(maxsize=4096)
def _stored_cost(cost_usd: str) -> Decimal:
    """:func:`exact_cost`, or zero for a text that is no valid cost (such a message is never stored)."""
    return exact_cost(cost_usd) if cost_usd and parse_cost(cost_usd) is not None else _ZERO


def _costs(texts: Sequence[str]) -> tuple[list[Decimal], list[int]]:
    """A cost column and its "known" flags. An unset cost reads as "": a validated message never sets an
    empty one (it is no decimal), so the text alone tells whether the cost is known."""
    return list(map(_stored_cost, texts)), [int(bool(text)) for text in texts]


# Fields copied as they are from the record, each run read by one C-level attrgetter per log and
# transposed by zip: per-value Python work is what a batch of thousands of logs pays for.
# (A dotted path would fetch the sub-message again for every field: each fetch makes a new wrapper.)
_IDS = attrgetter("organization_id", "request_id")
_TIME = attrgetter("seconds", "nanos")
_ROUTE = attrgetter("api_key_id", "provider", "model", "response_model", "path", "status_code", "error")
_USAGE_NAMES = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_prompt_tokens",
    "audio_completion_tokens",
)
_USAGE = attrgetter(*_USAGE_NAMES)
_SESSION = attrgetter("user_id", "session_id", "session_path", "session_name")
_PROMPT = attrgetter("prompt_id", "prompt_version")
_FLAGS = attrgetter("streamed", "cache_hit", "request_body_omitted", "response_body_omitted")
_NOTED = attrgetter("usage_clamped", "request_body_over_limit", "response_body_over_limit")
_BODY = attrgetter("object_key", "offset", "length")
_BODY_FRAME = attrgetter("frame_offset", "frame_length")
_ZERO = Decimal(0)


def _transposed(getter: attrgetter[Any], items: Sequence[Any]) -> list[list[Any]]:
    """The columns of ``getter``'s fields across ``items`` (lists: the driver may convert values in place)."""
    return [list(column) for column in zip(*map(getter, items), strict=True)]


_CostField = Literal["cost_usd", "cost_saved_usd"]
RequestColumns = list[list[Any]]
"""The ``requests`` rows of a batch as one list per column, in :data:`REQUEST_COLUMNS` order."""


def request_columns(messages: Sequence[log_record_pb2.LogMessage], version: int) -> RequestColumns:
    """The ``requests`` columns of validated messages; ``version`` (microseconds) makes the newest write win."""
    return checked_request_columns(messages, version)[0]


def checked_request_columns(
    messages: Sequence[log_record_pb2.LogMessage], version: int
) -> tuple[RequestColumns, list[int]]:
    """The ``requests`` columns of ``messages`` and the positions of the messages that may be invalid.

    Built column by column rather than row by row: the batch is inserted columnar, and a column read
    across the batch with a C-level getter costs a fraction of the same values gathered per row. The
    columns are then checked as they are (see :func:`_suspects`), so each field of a log is read once per
    batch, whatever checks and stores it. An unset body reference reads as the empty reference, which is
    exactly its ("", 0, 0) sentinel (frame 0, 0). Suspects' rows hold what their fields read as; they are
    never stored.
    """
    if not messages:
        return [[] for _ in REQUEST_COLUMNS], []
    records = [message.record for message in messages]
    seconds, nanos = _transposed(_TIME, list(map(attrgetter("created_at"), records)))
    streamed, cache_hit, request_omitted, response_omitted = (
        list(map(int, flags)) for flags in zip(*map(_FLAGS, records), strict=True)
    )
    cost_texts = list(map(attrgetter("cost_usd"), records))
    saved_texts = list(map(attrgetter("cost_saved_usd"), records))
    cost, priced = _costs(cost_texts)
    cost_saved, cost_saved_known = _costs(saved_texts)
    property_keys, property_values = _map_columns([record.properties for record in records])
    input_keys, input_values = _map_columns([record.prompt_inputs for record in records])
    first_token = list(map(attrgetter("time_to_first_token_ms"), records))
    request_bodies = [message.request_body for message in messages]
    response_bodies = [message.response_body for message in messages]
    columns = [
        *_transposed(_IDS, records),
        seconds,
        [second * 1_000_000 + nano // 1000 for second, nano in zip(seconds, nanos, strict=True)],  # created_at_us()
        *_transposed(_ROUTE, records),
        streamed,
        [record.latency_ms for record in records],
        [  # 0 is a time when set: only HasField tells it from unset
            value or (0 if record.HasField("time_to_first_token_ms") else NO_FIRST_TOKEN)
            for value, record in zip(first_token, records, strict=True)
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
        *_transposed(_BODY, request_bodies),
        *_transposed(_BODY, response_bodies),
        [record.target_url for record in records],
        cost_saved,
        cost_saved_known,
        *_attempts_of(records),
        input_keys,
        input_values,
        *_transposed(_BODY_FRAME, request_bodies),
        *_transposed(_BODY_FRAME, response_bodies),
        *(list(map(int, flags)) for flags in zip(*map(_NOTED, records), strict=True)),
        [version] * len(messages),
    ]
    costs: dict[_CostField, list[str]] = {"cost_usd": cost_texts, "cost_saved_usd": saved_texts}
    suspects = _suspects(columns, nanos, first_token, costs, _set_but_empty(messages, records, columns, costs))
    return columns, suspects


_HAS_UPDATE = methodcaller("HasField", "update")
_HAS_FIELD = {
    name: methodcaller("HasField", name) for name in ("cost_usd", "cost_saved_usd", "request_body", "response_body")
}
_IS_UUID = CANONICAL_UUID.fullmatch
_REQUIRED_UUID_COLUMNS = tuple(REQUEST_COLUMNS.index(name) for name in ("request_id", "organization_id"))
_API_KEY_COLUMN = REQUEST_COLUMNS.index("api_key_id")
_SECONDS_COLUMN = REQUEST_COLUMNS.index("created_at")
_NUMBER_COLUMNS = tuple(
    (name, REQUEST_COLUMNS.index(name)) for name, _, _ in RECORD_BOUNDS if name != "time_to_first_token_ms"
)
_BODY_POSITION_COLUMNS = tuple(
    REQUEST_COLUMNS.index(f"{body}_{part}")
    for body in ("request_body", "response_body")
    for part in ("offset", "length", "frame_offset", "frame_length")
)
_BODY_KEY_COLUMNS: tuple[tuple[Literal["request_body", "response_body"], int], ...] = (
    ("request_body", REQUEST_COLUMNS.index("request_body_key")),
    ("response_body", REQUEST_COLUMNS.index("response_body_key")),
)


def _suspects(
    columns: RequestColumns,
    nanos: list[int],
    first_token: list[int],
    cost_texts: dict[_CostField, list[str]],
    set_but_empty: Iterable[int],
) -> list[int]:
    """The positions of the messages that may fail :func:`~candela_ingest.wire.validation.check_log_message`.

    A superset, so the exact, per-message check runs only for these. Each check runs over a whole column
    in C (``min``/``max``, one :func:`~candela_ingest.wire.validation.uuid_bytes` per id column); a column out
    of bounds makes every message a suspect, and the exact check then names the bad ones. Unset fields
    read as their defaults, which either pass the exact check too (zeros) or fail here (an empty id,
    created_at at the epoch). What the columns cannot tell (an update; a cost or body key set to "", which
    reads as unset) comes from ``set_but_empty``.
    """
    count = len(columns[0])
    suspects: set[int] = set()
    for column in _REQUIRED_UUID_COLUMNS:
        values = columns[column]
        if uuid_bytes(values) is None:
            suspects.update(index for index, value in enumerate(values) if not _IS_UUID(value))
    api_keys = columns[_API_KEY_COLUMN]
    if uuid_bytes(list(filter(None, api_keys))) is None:
        suspects.update(index for index, value in enumerate(api_keys) if value and not _IS_UUID(value))
    numbers = {name: columns[index] for name, index in _NUMBER_COLUMNS}
    numbers["time_to_first_token_ms"] = first_token  # as set: the column holds -1 when unset
    if not batch_within_bounds(numbers, columns[_SECONDS_COLUMN], nanos, LATEST_SECONDS) or not all(
        min(columns[index]) >= 0 for index in _BODY_POSITION_COLUMNS
    ):
        return list(range(count))
    for texts in cost_texts.values():
        bad = {text for text in set(texts) if text and parse_cost(text) is None}
        if bad:
            suspects.update(index for index, text in enumerate(texts) if text in bad)
    suspects.update(set_but_empty)
    return sorted(suspects)


def _set_but_empty(
    messages: Sequence[log_record_pb2.LogMessage],
    records: Sequence[log_record_pb2.LogRecord],
    columns: RequestColumns,
    cost_texts: dict[_CostField, list[str]],
) -> set[int]:
    """The parsed messages that are updates, or whose cost or body key is set to "" (see :func:`_suspects`).

    Counting the fields set (one pass in C) against the values that are not empty tells whether any empty
    one was set at all; only then is each message asked.
    """
    count = len(messages)
    found: set[int] = set()
    if any(map(_HAS_UPDATE, messages)):
        found.update(index for index, message in enumerate(messages) if message.HasField("update"))
    for field, texts in cost_texts.items():
        if "" in texts and sum(map(_HAS_FIELD[field], records)) > count - texts.count(""):
            found.update(index for index, text in enumerate(texts) if not text and records[index].HasField(field))
    for body, column in _BODY_KEY_COLUMNS:
        keys = columns[column]
        if not all(keys) and sum(map(_HAS_FIELD[body], messages)) > count - keys.count(""):
            found.update(index for index, key in enumerate(keys) if not key and messages[index].HasField(body))
    return found


_WIRE_INDEX = {name: index for index, name in enumerate(logwire.COLUMNS)}
_WIRE_NANOS = _WIRE_INDEX["created_at_nanos"]
_WIRE_FIRST_TOKEN = _WIRE_INDEX["time_to_first_token_ms_as_set"]
_WIRE_COSTS = _WIRE_INDEX["cost_usd_text"], _WIRE_INDEX["cost_saved_usd_text"]
_WIRE_COLUMNS = tuple(_WIRE_INDEX.get(name) for name in REQUEST_COLUMNS)
"""Where each ``requests`` column is among the wire decoder's (None: made here, from them)."""


def wire_request_columns(values: list[bytes], version: int) -> tuple[RequestColumns, list[int], list[int]]:
    """:func:`checked_request_columns` of serialized LogMessages, read by the C wire decoder
    (``candela_ingest.wire._logwire``; its pure-Python twin under ``CANDELA_NO_EXTENSIONS=1``, see
    ``candela_ingest.wire.logwire``) with no protobuf message made.

    Returns the columns of the messages it decoded (in the order of ``values``), the suspects among
    them, and the positions in ``values`` of the messages it left to the protobuf runtime (updates,
    text that is not UTF-8, fields it does not know, encodings it does not take on). Every value of a
    decoded message is what :func:`checked_request_columns` reads from the parsed message; the tests
    compare the two.
    """
    wire, set_but_empty, fallback = logwire.columns(values)
    count = len(wire[0])
    cost_texts, saved_texts = (wire[index] for index in _WIRE_COSTS)
    cost, priced = _costs(cost_texts)
    cost_saved, cost_saved_known = _costs(saved_texts)
    made: dict[str, list[Any]] = {
        "cost_usd": cost,
        "priced": priced,
        "cost_saved_usd": cost_saved,
        "cost_saved_known": cost_saved_known,
        "version": [version] * count,
    }
    columns: RequestColumns = [
        made[name] if index is None else wire[index] for name, index in zip(REQUEST_COLUMNS, _WIRE_COLUMNS, strict=True)
    ]
    if not count:
        return columns, [], fallback
    costs: dict[_CostField, list[str]] = {"cost_usd": cost_texts, "cost_saved_usd": saved_texts}
    suspects = _suspects(columns, wire[_WIRE_NANOS], wire[_WIRE_FIRST_TOKEN], costs, set_but_empty)
    return columns, suspects, fallback


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
