"""The mapping of a LogMessage to a row of the ClickHouse ``requests`` table.

The columns are those :mod:`candela_schema.requests_table` declares. A batch's rows are built as named
columns (:class:`RequestColumns`, one list per column), which the ledger reads and the insert sends; a single
row is a plain tuple in :data:`REQUEST_COLUMNS` order (:func:`clickhouse_row`). ``created_at`` is given as
integer epoch seconds (no time-zone conversion can creep in), and the cost is quantised to the column's 12
decimal places, exactly as the usage counters in Postgres round it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import compress
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
from candela_schema import requests_table

REQUESTS_TABLE = requests_table.TABLE
REQUEST_COLUMNS: tuple[str, ...] = requests_table.REQUESTS_COLUMN_NAMES
"""The ``requests`` columns in the writer's insert order (:mod:`candela_schema.requests_table`: the table's
order, with ``version`` last, where readers of a row expect it)."""
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
# Each run is named by the columns it fills, which are named as the fields are (but the body references').
_COPIED: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("organization_id", "request_id"), None),
    (("api_key_id", "provider", "model", "response_model", "path", "status_code", "error", "latency_ms"), None),
    (
        (
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "audio_prompt_tokens",
            "audio_completion_tokens",
        ),
        "usage",
    ),
    (("user_id", "session_id", "session_path", "session_name"), None),
    (("prompt_id", "prompt_version", "finish_reason", "target_url", "trace_id"), None),
)
"""(fields, the record's sub-message holding them or None): runs of columns copied as they are."""
_COPIED_GETTERS = tuple((names, attrgetter(*names), sub_message) for names, sub_message in _COPIED)
_TIME = attrgetter("seconds", "nanos")
_FLAG_NAMES = (
    "streamed",
    "cache_hit",
    "request_body_omitted",
    "response_body_omitted",
    "usage_clamped",
    "request_body_over_limit",
    "response_body_over_limit",
)
_FLAGS = attrgetter(*_FLAG_NAMES)
_BODY_PARTS = ("key", "offset", "length", "frame_offset", "frame_length")
_BODY = attrgetter("object_key", "offset", "length", "frame_offset", "frame_length")
_ZERO = Decimal(0)


def _transposed(getter: attrgetter[Any], items: Sequence[Any]) -> list[list[Any]]:
    """The columns of ``getter``'s fields across ``items`` (lists: the driver may convert values in place)."""
    return [list(column) for column in zip(*map(getter, items), strict=True)]


_CostField = Literal["cost_usd", "cost_saved_usd"]
_COLUMN_COUNT = len(REQUEST_COLUMNS)


class RequestColumns(Mapping[str, list[Any]]):
    """The ``requests`` rows of a batch as one list per column, by column name (in :data:`REQUEST_COLUMNS`
    order): what the writers build once per batch, count in Postgres and insert into ClickHouse.

    A mapping of every column name to its values; :attr:`count` is the number of rows. The lists are the
    batch's own (the driver may convert values in place): derive a new batch rather than editing one.
    """

    __slots__ = ("_by_name",)

    def __init__(self, by_name: Mapping[str, list[Any]]) -> None:
        """From each column's values, by name: every name of :data:`REQUEST_COLUMNS` and no other."""
        if len(by_name) != _COLUMN_COUNT:
            unknown = sorted(set(by_name) - set(REQUEST_COLUMNS))
            raise ValueError(
                f"not the requests columns: missing {sorted(set(REQUEST_COLUMNS) - set(by_name))}, unknown {unknown}"
            )
        self._by_name = {name: by_name[name] for name in REQUEST_COLUMNS}

    @classmethod
    def empty(cls) -> RequestColumns:
        """No rows."""
        return cls({name: [] for name in REQUEST_COLUMNS})

    def __getitem__(self, name: str) -> list[Any]:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return _COLUMN_COUNT

    def __repr__(self) -> str:
        return f"RequestColumns({self._by_name!r})"

    @property
    def count(self) -> int:
        """The number of rows."""
        return len(self._by_name["request_id"])

    def rows(self) -> list[Row]:
        """The rows, each a tuple in :data:`REQUEST_COLUMNS` order."""
        return list(zip(*self._by_name.values(), strict=True))

    def where(self, keep: Sequence[bool]) -> RequestColumns:
        """The rows whose ``keep`` is true."""
        return RequestColumns({name: list(compress(values, keep)) for name, values in self._by_name.items()})

    def sliced(self, start: int, stop: int | None = None) -> RequestColumns:
        """The rows from ``start`` to ``stop``."""
        return RequestColumns({name: values[start:stop] for name, values in self._by_name.items()})

    def taken(self, order: Sequence[int]) -> RequestColumns:
        """The rows at the positions of ``order``, in that order."""
        return RequestColumns({name: [values[index] for index in order] for name, values in self._by_name.items()})

    def followed_by(self, other: RequestColumns) -> RequestColumns:
        """These rows, then ``other``'s."""
        return RequestColumns({name: [*values, *other[name]] for name, values in self._by_name.items()})

    def replaced(self, name: str, values: list[Any]) -> RequestColumns:
        """The same rows with column ``name`` holding ``values`` instead."""
        if name not in self._by_name:
            raise KeyError(name)
        return RequestColumns({**self._by_name, name: values})


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
        return RequestColumns.empty(), []
    records = [message.record for message in messages]
    columns: dict[str, list[Any]] = {}
    for names, getter, sub_message in _COPIED_GETTERS:
        sources = records if sub_message is None else list(map(attrgetter(sub_message), records))
        columns.update(zip(names, _transposed(getter, sources), strict=True))
    seconds, nanos = _transposed(_TIME, list(map(attrgetter("created_at"), records)))
    columns["created_at"] = seconds
    columns["created_at_us"] = [  # created_at_us()
        second * 1_000_000 + nano // 1000 for second, nano in zip(seconds, nanos, strict=True)
    ]
    columns.update(
        zip(_FLAG_NAMES, (list(map(int, flags)) for flags in zip(*map(_FLAGS, records), strict=True)), strict=True)
    )
    cost_texts = list(map(attrgetter("cost_usd"), records))
    saved_texts = list(map(attrgetter("cost_saved_usd"), records))
    columns["cost_usd"], columns["priced"] = _costs(cost_texts)
    columns["cost_saved_usd"], columns["cost_saved_known"] = _costs(saved_texts)
    columns["property_keys"], columns["property_values"] = _map_columns([record.properties for record in records])
    columns["prompt_input_keys"], columns["prompt_input_values"] = _map_columns(
        [record.prompt_inputs for record in records]
    )
    first_token = list(map(attrgetter("time_to_first_token_ms"), records))
    columns["time_to_first_token_ms"] = [  # 0 is a time when set: only HasField tells it from unset
        value or (0 if record.HasField("time_to_first_token_ms") else NO_FIRST_TOKEN)
        for value, record in zip(first_token, records, strict=True)
    ]
    (
        columns["attempt_target_urls"],
        columns["attempt_status_codes"],
        columns["attempt_errors"],
        columns["attempt_latencies_ms"],
    ) = _attempts_of(records)
    for body in ("request_body", "response_body"):
        parts = _transposed(_BODY, [getattr(message, body) for message in messages])
        columns.update(zip([f"{body}_{part}" for part in _BODY_PARTS], parts, strict=True))
    columns["version"] = [version] * len(messages)
    batch = RequestColumns(columns)
    costs: dict[_CostField, list[str]] = {"cost_usd": cost_texts, "cost_saved_usd": saved_texts}
    suspects = _suspects(batch, nanos, first_token, costs, _set_but_empty(messages, records, batch, costs))
    return batch, suspects


_HAS_UPDATE = methodcaller("HasField", "update")
_HAS_FIELD = {
    name: methodcaller("HasField", name) for name in ("cost_usd", "cost_saved_usd", "request_body", "response_body")
}
_IS_UUID = CANONICAL_UUID.fullmatch
_NUMBER_COLUMNS = tuple(name for name, _, _ in RECORD_BOUNDS if name != "time_to_first_token_ms")
_BODY_POSITION_COLUMNS = tuple(
    f"{body}_{part}"
    for body in ("request_body", "response_body")
    for part in ("offset", "length", "frame_offset", "frame_length")
)
_BODY_KEY_COLUMNS: tuple[tuple[Literal["request_body", "response_body"], str], ...] = (
    ("request_body", "request_body_key"),
    ("response_body", "response_body_key"),
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
    count = columns.count
    suspects: set[int] = set()
    for name in ("request_id", "organization_id"):
        values = columns[name]
        if uuid_bytes(values) is None:
            suspects.update(index for index, value in enumerate(values) if not _IS_UUID(value))
    api_keys = columns["api_key_id"]
    if uuid_bytes(list(filter(None, api_keys))) is None:
        suspects.update(index for index, value in enumerate(api_keys) if value and not _IS_UUID(value))
    numbers = {name: columns[name] for name in _NUMBER_COLUMNS}
    numbers["time_to_first_token_ms"] = first_token  # as set: the column holds -1 when unset
    if not batch_within_bounds(numbers, columns["created_at"], nanos, LATEST_SECONDS) or not all(
        min(columns[name]) >= 0 for name in _BODY_POSITION_COLUMNS
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


WIRE_ONLY_COLUMNS = ("created_at_nanos", "time_to_first_token_ms_as_set", "cost_usd_text", "cost_saved_usd_text")
"""The wire decoder's columns that are no ``requests`` column: what the columns are checked and made from."""
MADE_FROM_WIRE_COLUMNS = ("cost_usd", "priced", "cost_saved_usd", "cost_saved_known", "version")
"""The ``requests`` columns made here rather than read by the wire decoder; it reads every other one."""
_WIRE_INDEX = {name: index for index, name in enumerate(logwire.COLUMNS)}
_WIRE_COLUMNS = tuple(
    (name, _WIRE_INDEX[name]) for name in REQUEST_COLUMNS if name not in MADE_FROM_WIRE_COLUMNS and name in _WIRE_INDEX
)
"""Each ``requests`` column the wire decoder reads, and where it is among the decoder's columns."""


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
    cost_texts, saved_texts = wire[_WIRE_INDEX["cost_usd_text"]], wire[_WIRE_INDEX["cost_saved_usd_text"]]
    columns = {name: wire[index] for name, index in _WIRE_COLUMNS}
    columns["cost_usd"], columns["priced"] = _costs(cost_texts)
    columns["cost_saved_usd"], columns["cost_saved_known"] = _costs(saved_texts)
    columns["version"] = [version] * count
    batch = RequestColumns(columns)
    if not count:
        return batch, [], fallback
    costs: dict[_CostField, list[str]] = {"cost_usd": cost_texts, "cost_saved_usd": saved_texts}
    nanos, first_token = wire[_WIRE_INDEX["created_at_nanos"]], wire[_WIRE_INDEX["time_to_first_token_ms_as_set"]]
    suspects = _suspects(batch, nanos, first_token, costs, set_but_empty)
    return batch, suspects, fallback


def clickhouse_row(message: log_record_pb2.LogMessage, version: int) -> Row:
    """The ``requests`` row of one validated message (see :func:`request_columns`)."""
    return request_columns([message], version).rows()[0]


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
