"""Row reads of the ``requests`` table: pages, a request, a session, and the rows behind them.

A log delivered twice shows once (ClickHouse merges the copies only eventually), without FINAL: pages and
point reads read every stored version of the few rows they return and keep the newest; a page's filter is
evaluated on that newest version (``RowReads._newest_matching``). FINAL costs 4-7x on 18.16 (measured on
10M rows, bench/query).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from google.protobuf import timestamp_pb2

from candela.logs.v1 import log_record_pb2
from candela_query.cursor import Position
from candela_query.scope import Scope, SqlRunner

_COLUMNS = (
    "toString(request_id)",
    "toString(organization_id)",
    "api_key_id",
    "created_at_us",
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
    "toString(cost_usd)",
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
    # Added by migration 0004.
    "target_url",
    "toString(cost_saved_usd)",
    "cost_saved_known",
    "attempt_target_urls",
    "attempt_status_codes",
    "attempt_errors",
    "attempt_latencies_ms",
    "prompt_input_keys",
    "prompt_input_values",
    # Added by migration 0006.
    "request_body_frame_offset",
    "request_body_frame_length",
    "response_body_frame_offset",
    "response_body_frame_length",
    # Added by migration 0007.
    "usage_clamped",
    "request_body_over_limit",
    "response_body_over_limit",
    # Added by migration 0008.
    "trace_id",
)


SORT_COLUMNS = {
    "created_at": "created_at_us",
    "latency_ms": "latency_ms",
    "time_to_first_token_ms": "time_to_first_token_ms",
    "total_tokens": "total_tokens",
    "cost_usd": "cost_usd",
}
"""Sortable fields and their columns. Ties are broken by the request id as text: UUID columns sort in an
internal order that is not the text order, so text keeps cursors and both dialects in agreement."""


@dataclass(frozen=True)
class BodyLocation:
    """Where a body lives in S3 (see BodyRef in candela/logs/v1/log_record.proto).

    When ``frame_length`` is set, the body is bytes [offset, offset + length) of the zstd frame at
    [frame_offset, frame_offset + frame_length) of the object, once decompressed; otherwise (a body stored
    before bodies were compressed) it is bytes [offset, offset + length) of the object itself.
    """

    object_key: str
    offset: int
    length: int
    frame_offset: int = 0
    frame_length: int = 0

    @property
    def stored_start(self) -> int:
        """Where the bytes to read begin in the object: the frame's, or the body's own when it has none."""
        return self.frame_offset if self.frame_length else self.offset

    @property
    def stored_length(self) -> int:
        """How many bytes of the object to read: the whole frame, or the body itself."""
        return self.frame_length or self.length


@dataclass(frozen=True)
class StoredRequest:
    """One logged request: its record, where its bodies are, and its raw sort keys."""

    record: log_record_pb2.LogRecord
    request_body: BodyLocation | None
    response_body: BodyLocation | None
    sort_keys: dict[str, int | str] = field(default_factory=dict)


def decimal_text(value: Decimal) -> str:
    """An exact decimal in plain notation without trailing zeros ("0.0004425", never "4.425E-4")."""
    text = format(value.normalize(), "f")
    return text if text not in ("-0", "") else "0"


def timestamp(microseconds: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from microseconds since the epoch."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(microseconds)
    return stamp


def _body(values: dict[str, Any], body: str) -> BodyLocation | None:
    """The location of ``body`` (``request_body`` or ``response_body``) in a row's values; None when unset."""
    key = values[f"{body}_key"]
    if not key:
        return None
    return BodyLocation(
        key,
        int(values[f"{body}_offset"]),
        int(values[f"{body}_length"]),
        int(values[f"{body}_frame_offset"]),
        int(values[f"{body}_frame_length"]),
    )


def _attempts(values: dict[str, Any]) -> list[log_record_pb2.UpstreamAttempt]:
    """The upstream attempts, stored as parallel arrays (one element per try, in order)."""
    return [
        log_record_pb2.UpstreamAttempt(target_url=target, status_code=status, error=error, latency_ms=latency)
        for target, status, error, latency in zip(
            values["attempt_target_urls"],
            values["attempt_status_codes"],
            values["attempt_errors"],
            values["attempt_latencies_ms"],
            strict=True,
        )
    ]


def _to_stored(row: tuple[Any, ...]) -> StoredRequest:
    values = dict(zip(_COLUMNS, row, strict=True))
    usage = log_record_pb2.TokenUsage(
        prompt_tokens=values["prompt_tokens"],
        completion_tokens=values["completion_tokens"],
        total_tokens=values["total_tokens"],
        cache_read_tokens=values["cache_read_tokens"],
        cache_write_tokens=values["cache_write_tokens"],
        reasoning_tokens=values["reasoning_tokens"],
        audio_prompt_tokens=values["audio_prompt_tokens"],
        audio_completion_tokens=values["audio_completion_tokens"],
    )
    cost = Decimal(values["toString(cost_usd)"])
    record = log_record_pb2.LogRecord(
        request_id=values["toString(request_id)"],
        organization_id=values["toString(organization_id)"],
        api_key_id=values["api_key_id"],
        created_at=timestamp(int(values["created_at_us"])),
        provider=values["provider"],
        model=values["model"],
        response_model=values["response_model"],
        path=values["path"],
        status_code=values["status_code"],
        error=values["error"],
        streamed=bool(values["streamed"]),
        latency_ms=values["latency_ms"],
        usage=usage,
        user_id=values["user_id"],
        session_id=values["session_id"],
        session_path=values["session_path"],
        session_name=values["session_name"],
        properties=dict(zip(values["property_keys"], values["property_values"], strict=True)),
        prompt_id=values["prompt_id"],
        prompt_version=values["prompt_version"],
        cache_hit=bool(values["cache_hit"]),
        finish_reason=values["finish_reason"],
        request_body_omitted=bool(values["request_body_omitted"]),
        response_body_omitted=bool(values["response_body_omitted"]),
        target_url=values["target_url"],
        attempts=_attempts(values),
        prompt_inputs=dict(zip(values["prompt_input_keys"], values["prompt_input_values"], strict=True)),
        usage_clamped=bool(values["usage_clamped"]),
        request_body_over_limit=bool(values["request_body_over_limit"]),
        response_body_over_limit=bool(values["response_body_over_limit"]),
        trace_id=values["trace_id"],
    )
    if values["cost_saved_known"]:
        record.cost_saved_usd = decimal_text(Decimal(values["toString(cost_saved_usd)"]))
    if values["time_to_first_token_ms"] >= 0:
        record.time_to_first_token_ms = values["time_to_first_token_ms"]
    if values["priced"]:
        record.cost_usd = decimal_text(cost)
    sort_keys: dict[str, int | str] = {
        "created_at_us": int(values["created_at_us"]),
        "latency_ms": int(values["latency_ms"]),
        "time_to_first_token_ms": int(values["time_to_first_token_ms"]),
        "total_tokens": int(values["total_tokens"]),
        "cost_usd": decimal_text(cost),
    }
    return StoredRequest(
        record=record,
        request_body=_body(values, "request_body"),
        response_body=_body(values, "response_body"),
        sort_keys=sort_keys,
    )


SortKey = tuple[int | Decimal, str]
"""A row's place in a sorted page: (sort column value, request id as text), compared as the SQL orders."""


def _sort_value(value: Any) -> int | Decimal:
    """A sort column value as read (cost arrives as decimal text), comparable in Python."""
    return Decimal(value) if isinstance(value, str) else int(value)


def _position(row: StoredRequest, column: str) -> SortKey:
    return (_sort_value(row.sort_keys[column]), row.record.request_id)


def _key_of(position: Position) -> SortKey:
    return (_sort_value(position.sort_value), position.request_id)


def _cursor_value(value: int | Decimal) -> int | str:
    return decimal_text(value) if isinstance(value, Decimal) else value


def _beyond(key: SortKey, bound: SortKey, ascending: bool) -> bool:
    """Whether ``key`` comes strictly after ``bound`` in the page order."""
    return key > bound if ascending else key < bound


@dataclass(frozen=True)
class Page:
    """One page of requests and whether more follow."""

    rows: list[StoredRequest]
    has_more: bool


class RowReads:
    """Reads of whole rows (the newest version of each) for one organization at a time."""

    def __init__(self, runner: SqlRunner, scope: Scope) -> None:
        self._runner = runner
        self._scope = scope

    async def page(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        sort_field: str,
        ascending: bool,
        after: Position | None,
        limit: int,
    ) -> Page:
        """Up to ``limit`` rows matching ``where``, sorted, strictly after ``after``.

        Without FINAL, which costs 4-7x on 18.16 (see ``_candidates``): the candidates come from every
        stored version, then the newest version of each decides, so the page is exactly what FINAL shows.
        Usually one round; another follows only when stale copies took candidate places.
        """
        column = SORT_COLUMNS[sort_field]
        accepted: dict[str, StoredRequest] = {}
        position = after
        while len(accepted) <= limit:
            candidates = await self._candidates(organization_id, where, params, column, ascending, position, limit + 1)
            if not candidates:
                break
            boundary = candidates[-1][1]
            for row in await self._newest_matching(organization_id, where, params, candidates):
                key = _position(row, column)
                in_window = (after is None or _beyond(key, _key_of(after), ascending)) and not _beyond(
                    key, boundary, ascending
                )
                if in_window and row.record.request_id not in accepted:
                    accepted[row.record.request_id] = row
            if len(candidates) <= limit:
                break
            position = Position(_cursor_value(boundary[0]), boundary[1])
        rows = sorted(accepted.values(), key=lambda row: _position(row, column), reverse=not ascending)
        return Page(rows=rows[:limit], has_more=len(rows) > limit)

    async def _candidates(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        column: str,
        ascending: bool,
        after: Position | None,
        count: int,
    ) -> list[tuple[int, tuple[int | Decimal, str]]]:
        """The first ``count`` stored versions matching ``where`` after ``after``, as (creation second,
        (sort value, request id)): only the filter and sort columns are read, and no FINAL, whose merge of
        every version dominated the page on 18.16 (measured: 135 ms with FINAL, 18 ms without)."""
        direction = "ASC" if ascending else "DESC"
        beyond = ">" if ascending else "<"
        lookup = dict(params)
        conditions = [f"({where})"]
        if after is not None:
            if column == "cost_usd":
                value = "toDecimal64(%(after_value)s, 12)"
                lookup["after_value"] = str(after.sort_value)
            else:
                value = "%(after_value)s"
                lookup["after_value"] = int(after.sort_value)
            lookup["after_id"] = after.request_id
            conditions.append(
                f"({column} {beyond} {value} OR ({column} = {value} AND toString(request_id) {beyond} %(after_id)s))"
            )
            if column == "created_at_us":
                # Coarse bound on the ordering key so granules past the cursor are skipped.
                lookup["after_seconds"] = int(after.sort_value) // 1_000_000
                conditions.append(f"created_at {beyond}= toDateTime(%(after_seconds)s)")
        lookup["limit"] = count
        sort_value = "toString(cost_usd)" if column == "cost_usd" else column
        sql = (
            f"SELECT toUInt32(created_at), {sort_value}, toString(request_id) "
            f"{self._scope(organization_id, ' AND '.join(conditions), lookup, 'request_versions')} "
            f"ORDER BY {column} {direction}, toString(request_id) {direction} LIMIT %(limit)s"
        )
        return [
            (int(second), (_sort_value(value), str(request_id)))
            for second, value, request_id in await self._runner.fetch(sql, lookup)
        ]

    async def _newest_matching(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        candidates: list[tuple[int, tuple[int | Decimal, str]]],
    ) -> list[StoredRequest]:
        """The candidates whose newest version matches ``where`` (that version). Every version of each is
        read with ``where`` evaluated as a column, pruned to their creation seconds by the primary key."""
        lookup = dict(params)
        lookup["candidate_ids"] = tuple(sorted({key[1] for _, key in candidates}))
        lookup["candidate_seconds"] = tuple(sorted({second for second, _ in candidates}))
        identity = "toString(request_id) IN %(candidate_ids)s"
        seconds = "created_at IN %(candidate_seconds)s"
        return [
            row for row, matches in await self._versions(organization_id, identity, lookup, where, seconds) if matches
        ]

    async def _time_range(self, organization_id: str, table: str, condition: str, params: dict[str, Any]) -> str:
        """A bound on created_at from an index table (``request_times`` / ``request_sessions``), or ""
        when the index has no entry (then the caller's condition alone decides, scanning more)."""
        lookup = dict(params)
        scope = self._scope(organization_id, condition, lookup, table=table)
        sql = f"SELECT toUInt32(min(created_at)), toUInt32(max(created_at)), count() {scope}"
        first, last, found = (await self._runner.fetch(sql, lookup))[0]
        if not int(found):
            return ""
        params["first_seconds"] = int(first)
        params["last_seconds"] = int(last)
        return " AND created_at >= toDateTime(%(first_seconds)s) AND created_at <= toDateTime(%(last_seconds)s)"

    async def get(self, organization_id: str, request_id: uuid.UUID) -> StoredRequest | None:
        """One request of the organization, or None. The request id index gives its creation second as a
        subquery, which the server runs first and then uses on the primary key: one round trip (measured
        22 ms against 25 ms for a separate lookup on 10M rows). An id absent from the index is looked for
        in the whole organization."""
        params: dict[str, Any] = {"request_id": str(request_id)}
        identity = "request_id = toUUID(%(request_id)s)"
        index = self._scope(organization_id, identity, params, table="request_times")
        indexed = f"created_at IN (SELECT created_at {index})"
        rows = await self._latest(organization_id, identity, params, indexed) or await self._latest(
            organization_id, identity, params
        )
        return rows[0] if rows else None

    async def _latest(
        self, organization_id: str, identity: str, params: dict[str, Any], where: str = "1"
    ) -> list[StoredRequest]:
        """The newest version of each row matching ``identity`` and ``where``; ``identity`` must select
        whole requests by their ids: exactly what FINAL shows, but without FINAL's single-threaded merge of
        every column of the granules read, which dominates point lookups on 18.16."""
        return [row for row, _ in await self._versions(organization_id, identity, params, "1", where)]

    async def _versions(
        self, organization_id: str, identity: str, params: dict[str, Any], flag: str, where: str = "1"
    ) -> list[tuple[StoredRequest, bool]]:
        """The newest version of each row matching ``identity`` (request ids) and ``where``, with the value
        of the SQL condition ``flag`` on that version.

        ``identity`` is a PREWHERE: the server reads the request id column first and the ~50 other
        columns only of the granules holding a wanted row, instead of every granule the primary key
        could not exclude (measured on 2M rows, 18.16: a request 25 -> 14 ms, a session 29 -> 21 ms).
        ClickHouse does not move key columns to PREWHERE by itself, hence the explicit one."""
        scope = self._scope(organization_id, where, params, table="request_versions", prewhere=identity)
        newest: dict[tuple[int, str], tuple[int, tuple[Any, ...]]] = {}
        for row in await self._runner.fetch(f"SELECT {', '.join(_COLUMNS)}, version, ({flag}) {scope}", params):
            key = (int(row[3]), str(row[0]))  # (created_at_us, request id): the row's identity
            version = int(row[-2])
            if key not in newest or version > newest[key][0]:
                newest[key] = (version, row)
        return [(_to_stored(row[:-2]), bool(int(row[-1]))) for _, row in newest.values()]

    async def rows(self, organization_id: str, where: str, params: dict[str, Any], limit: int) -> list[StoredRequest]:
        """Every row matching ``where`` (at most ``limit``), oldest first (read with FINAL)."""
        params["limit"] = limit
        sql = (
            f"SELECT {', '.join(_COLUMNS)} {self._scope(organization_id, where, params)} "
            "ORDER BY created_at_us, toString(request_id) LIMIT %(limit)s"
        )
        return [_to_stored(row) for row in await self._runner.fetch(sql, params)]

    async def session_requests(self, organization_id: str, session_id: str, limit: int) -> list[StoredRequest]:
        """A session's requests, oldest first: the session index gives their time range, so only that
        range of the requests table is read (a session missing from the index is found by a full scan)."""
        params: dict[str, Any] = {"session_id": session_id}
        time_range = await self._time_range(organization_id, "request_sessions", "session_id = %(session_id)s", params)
        # Every version of every request that was ever in the session; the newest version decides
        # whether it still is (exactly FINAL's answer).
        members = self._scope(organization_id, "session_id = %(session_id)s" + time_range, params, "request_versions")
        identity = f"request_id IN (SELECT request_id {members})"
        rows = await self._latest(organization_id, identity, params, "1" + time_range)
        current = [row for row in rows if row.record.session_id == session_id]
        current.sort(key=lambda row: (row.sort_keys["created_at_us"], row.record.request_id))
        return current[:limit]
