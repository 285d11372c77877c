"""The ClickHouse ``requests`` table, declared once: each column's name, type and source field.

One wide row per logged request (migration ``0001_requests.sql`` and the ALTERs after it). Every list of
the table's columns elsewhere is derived from :data:`REQUESTS_COLUMNS` or checked against it by a unit
test: the writer's insert (``candela_ingest.writer.rows``), the C wire decoder's output
(``candela_ingest.wire._logwire.COLUMNS``), the Native encoder's types, the query service's reads, and the
migrations themselves (applied to chDB for modern ClickHouse, to a real 18.16 server in the integration
tests). Adding a column means: a migration, an entry here, and whatever those tests then name.

The order is the writer's insert order: the table's own order, except that ``version`` comes last (the
table has it at the end of ``0001``, before the columns later ALTERs added). So the table's order is this
one sorted by ``added_by``, stably (:func:`table_order`).

A type is written as the server names it (``DESCRIBE TABLE``, ``system.columns``, an insert's sample
block), with the migrator's version gates as placeholders (``{low_cardinality_string}``), so
:meth:`Column.type_on` gives it for a server version exactly as the migrations render it.
"""

from __future__ import annotations

from dataclasses import dataclass

from candela_schema.migrator import clickhouse_gates

TABLE = "requests"

OLDEST_SERVER = "18.16.1"
"""The stack's ClickHouse server (the oldest dialect the migrations are written for)."""
MODERN_SERVER = "24.3.1"
"""A modern ClickHouse (chDB in the unit tests); only its major version matters to the gates."""

_LOW_CARDINALITY_STRING = "{low_cardinality_string}"
_COST = "Decimal(18, 12)"  # Decimal64(12) in the migrations: the name the server gives it


@dataclass(frozen=True)
class Column:
    """One column of the ``requests`` table."""

    name: str
    type: str
    """ClickHouse type as the server names it, with the migrator's gates as placeholders."""
    source: str
    """The ``candela.logs.v1.LogMessage`` field it comes from (``record.`` is the LogRecord), or the
    writer itself (``writer``)."""
    added_by: str
    """The migration file that adds the column."""
    derived: str = ""
    """How the value is made from the source, when it is not the field's value as it is."""

    def type_on(self, server_version: str) -> str:
        """The column's type on a server of ``server_version``, as the migrations render it there."""
        return self.type.format(**clickhouse_gates(server_version, "candela"))


def _columns(added_by: str, *entries: tuple[str, str, str] | tuple[str, str, str, str]) -> list[Column]:
    return [Column(entry[0], entry[1], entry[2], added_by, *entry[3:]) for entry in entries]


_INITIAL = "0001_requests.sql"
_ROUTING = "0004_request_routing_and_prompt_inputs.sql"
_FRAMES = "0006_request_body_frames.sql"
_KEPT = "0007_request_kept_with_changes.sql"
_TRACE = "0008_request_trace_id.sql"

REQUESTS_COLUMNS: tuple[Column, ...] = (
    *_columns(
        _INITIAL,
        ("organization_id", "UUID", "record.organization_id"),
        ("request_id", "UUID", "record.request_id"),
        ("created_at", "DateTime('UTC')", "record.created_at", "whole seconds since the epoch"),
        ("created_at_us", "UInt64", "record.created_at", "microseconds since the epoch (nanos // 1000)"),
        ("api_key_id", "String", "record.api_key_id"),
        ("provider", _LOW_CARDINALITY_STRING, "record.provider"),
        ("model", _LOW_CARDINALITY_STRING, "record.model"),
        ("response_model", _LOW_CARDINALITY_STRING, "record.response_model"),
        ("path", "String", "record.path"),
        ("status_code", "Int32", "record.status_code"),
        ("error", "String", "record.error"),
        ("streamed", "UInt8", "record.streamed", "1 or 0"),
        ("latency_ms", "UInt32", "record.latency_ms"),
        ("time_to_first_token_ms", "Int32", "record.time_to_first_token_ms", "-1 when unset"),
        ("prompt_tokens", "UInt32", "record.usage.prompt_tokens"),
        ("completion_tokens", "UInt32", "record.usage.completion_tokens"),
        ("total_tokens", "UInt32", "record.usage.total_tokens"),
        ("cache_read_tokens", "UInt32", "record.usage.cache_read_tokens"),
        ("cache_write_tokens", "UInt32", "record.usage.cache_write_tokens"),
        ("reasoning_tokens", "UInt32", "record.usage.reasoning_tokens"),
        ("audio_prompt_tokens", "UInt32", "record.usage.audio_prompt_tokens"),
        ("audio_completion_tokens", "UInt32", "record.usage.audio_completion_tokens"),
        ("cost_usd", _COST, "record.cost_usd", "the decimal text rounded half-even to 12 places; 0 when unset"),
        ("priced", "UInt8", "record.cost_usd", "1 when the cost is set, else 0"),
        ("user_id", "String", "record.user_id"),
        ("session_id", "String", "record.session_id"),
        ("session_path", "String", "record.session_path"),
        ("session_name", "String", "record.session_name"),
        ("property_keys", "Array(String)", "record.properties", "the map's keys, sorted"),
        ("property_values", "Array(String)", "record.properties", "the values in the order of property_keys"),
        ("prompt_id", "String", "record.prompt_id"),
        ("prompt_version", "String", "record.prompt_version"),
        ("cache_hit", "UInt8", "record.cache_hit", "1 or 0"),
        ("finish_reason", _LOW_CARDINALITY_STRING, "record.finish_reason"),
        ("request_body_omitted", "UInt8", "record.request_body_omitted", "1 or 0"),
        ("response_body_omitted", "UInt8", "record.response_body_omitted", "1 or 0"),
        ("request_body_key", "String", "request_body.object_key", "'' when unset"),
        ("request_body_offset", "UInt64", "request_body.offset"),
        ("request_body_length", "UInt64", "request_body.length"),
        ("response_body_key", "String", "response_body.object_key", "'' when unset"),
        ("response_body_offset", "UInt64", "response_body.offset"),
        ("response_body_length", "UInt64", "response_body.length"),
    ),
    *_columns(
        _ROUTING,
        ("target_url", "String", "record.target_url"),
        ("cost_saved_usd", _COST, "record.cost_saved_usd", "as cost_usd"),
        ("cost_saved_known", "UInt8", "record.cost_saved_usd", "1 when the saved cost is set, else 0"),
        ("attempt_target_urls", "Array(String)", "record.attempts.target_url", "one element per attempt"),
        ("attempt_status_codes", "Array(Int32)", "record.attempts.status_code", "one element per attempt"),
        ("attempt_errors", "Array(String)", "record.attempts.error", "one element per attempt"),
        ("attempt_latencies_ms", "Array(Int64)", "record.attempts.latency_ms", "one element per attempt"),
        ("prompt_input_keys", "Array(String)", "record.prompt_inputs", "the map's keys, sorted"),
        ("prompt_input_values", "Array(String)", "record.prompt_inputs", "the values in the order of the keys"),
    ),
    *_columns(
        _FRAMES,
        ("request_body_frame_offset", "UInt64", "request_body.frame_offset"),
        ("request_body_frame_length", "UInt64", "request_body.frame_length"),
        ("response_body_frame_offset", "UInt64", "response_body.frame_offset"),
        ("response_body_frame_length", "UInt64", "response_body.frame_length"),
    ),
    *_columns(
        _KEPT,
        ("usage_clamped", "UInt8", "record.usage_clamped", "1 or 0"),
        ("request_body_over_limit", "UInt8", "record.request_body_over_limit", "1 or 0"),
        ("response_body_over_limit", "UInt8", "record.response_body_over_limit", "1 or 0"),
    ),
    *_columns(_TRACE, ("trace_id", "String", "record.trace_id")),
    *_columns(
        _INITIAL,
        ("version", "UInt64", "writer", "microseconds when written: the newest write of a row wins"),
    ),
)
"""The columns of ``requests``, in the writer's insert order."""

REQUESTS_COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in REQUESTS_COLUMNS)


def table_order() -> list[Column]:
    """The columns in the table's own order (``DESCRIBE TABLE``): by the migration that adds them."""
    return sorted(REQUESTS_COLUMNS, key=lambda column: column.added_by)


def types_on(server_version: str) -> dict[str, str]:
    """Each column's name -> its type on a server of ``server_version``, in the writer's order."""
    return {column.name: column.type_on(server_version) for column in REQUESTS_COLUMNS}
