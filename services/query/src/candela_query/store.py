"""Reads of the ClickHouse ``requests`` table, always scoped to one organization.

Every query's FROM/WHERE comes from :meth:`RequestStore._scope`, the single place the caller's
organization enters the SQL, so no query can forget it. Values are bound by the driver, never formatted
into the SQL text. Rows are read with FINAL so a log delivered twice (before ClickHouse merges the
copies) shows once.

The SQL selects only portable values (strings, integers, arrays): ids and decimals through toString(),
so the same statements give the same Python values on ClickHouse 18.16 (clickhouse-driver) and on modern
ClickHouse (chDB); see :class:`SqlRunner`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf import timestamp_pb2

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela_query.cursor import Position

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
)

# Aggregates of a set of rows, in the order Metrics.from_row reads them. quantilesExact picks the
# element at floor(level * n) of the sorted values: exact and identical on both dialects.
_METRIC_COLUMNS = (
    "count()",
    "toString(sumIf(cost_usd, priced = 1))",
    "countIf(priced = 0)",
    "sum(prompt_tokens)",
    "sum(completion_tokens)",
    "sum(total_tokens)",
    "quantilesExact(0.5, 0.95, 0.99)(latency_ms)",
    "quantilesExactIf(0.5, 0.95, 0.99)(time_to_first_token_ms, time_to_first_token_ms >= 0)",
    "countIf(status_code >= 400 OR error != '')",
)
ERROR_CONDITION = "status_code >= 400 OR error != ''"

SORT_COLUMNS = {
    "created_at": "created_at_us",
    "latency_ms": "latency_ms",
    "time_to_first_token_ms": "time_to_first_token_ms",
    "total_tokens": "total_tokens",
    "cost_usd": "cost_usd",
}
"""Sortable fields and their columns. Ties are broken by the request id as text: UUID columns sort in an
internal order that is not the text order, so text keeps cursors and both dialects in agreement."""


class SqlRunner(Protocol):
    """Runs one SELECT with ``%(name)s`` parameters bound by a driver; rows as tuples of plain values."""

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``."""
        ...


@dataclass(frozen=True)
class BodyLocation:
    """Where a body lives in S3 (a byte range of a packed object)."""

    object_key: str
    offset: int
    length: int


@dataclass(frozen=True)
class StoredRequest:
    """One logged request: its record, where its bodies are, and its raw sort keys."""

    record: log_record_pb2.LogRecord
    request_body: BodyLocation | None
    response_body: BodyLocation | None
    sort_keys: dict[str, int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    """Totals of a set of requests."""

    request_count: int
    cost_usd: Decimal
    unpriced_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: tuple[float, float, float]
    ttft_ms: tuple[float, float, float]
    error_count: int

    @classmethod
    def from_row(cls, values: tuple[Any, ...]) -> Metrics:
        """From the values of the metric columns."""
        count, cost, unpriced, prompt, completion, total, latency, ttft, errors = values
        return cls(
            request_count=int(count),
            cost_usd=Decimal(cost),
            unpriced_count=int(unpriced),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            total_tokens=int(total),
            latency_ms=_triple(latency),
            ttft_ms=_triple(ttft),
            error_count=int(errors),
        )

    @classmethod
    def of_records(cls, records: list[log_record_pb2.LogRecord]) -> Metrics:
        """Computed in Python (same definitions as the SQL) for rows already fetched."""
        latencies = sorted(record.latency_ms for record in records)
        ttfts = sorted(r.time_to_first_token_ms for r in records if r.HasField("time_to_first_token_ms"))
        return cls(
            request_count=len(records),
            cost_usd=sum((Decimal(r.cost_usd) for r in records if r.HasField("cost_usd")), Decimal(0)),
            unpriced_count=sum(1 for r in records if not r.HasField("cost_usd")),
            prompt_tokens=sum(r.usage.prompt_tokens for r in records),
            completion_tokens=sum(r.usage.completion_tokens for r in records),
            total_tokens=sum(r.usage.total_tokens for r in records),
            latency_ms=exact_quantiles(latencies),
            ttft_ms=exact_quantiles(ttfts),
            error_count=sum(1 for r in records if r.status_code >= 400 or r.error),
        )

    def to_proto(self) -> pb.RequestMetrics:
        """As the API message."""
        return pb.RequestMetrics(
            request_count=self.request_count,
            cost_usd=decimal_text(self.cost_usd),
            unpriced_count=self.unpriced_count,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            latency_p50_ms=self.latency_ms[0],
            latency_p95_ms=self.latency_ms[1],
            latency_p99_ms=self.latency_ms[2],
            ttft_p50_ms=self.ttft_ms[0],
            ttft_p95_ms=self.ttft_ms[1],
            ttft_p99_ms=self.ttft_ms[2],
            error_count=self.error_count,
            error_rate=self.error_count / self.request_count if self.request_count else 0.0,
        )


def exact_quantiles(sorted_values: list[int]) -> tuple[float, float, float]:
    """p50 / p95 / p99 as ClickHouse's quantileExact picks them: element floor(level * n); 0 when empty."""
    if not sorted_values:
        return (0.0, 0.0, 0.0)
    size = len(sorted_values)
    return tuple(float(sorted_values[min(int(level * size), size - 1)]) for level in (0.5, 0.95, 0.99))  # type: ignore[return-value]


def _triple(values: Any) -> tuple[float, float, float]:
    first, second, third = (float(value) for value in values)
    return (first, second, third)


@dataclass(frozen=True)
class MetricsRow:
    """Metrics of one group, with its key values."""

    keys: tuple[Any, ...]
    metrics: Metrics
    first_at_us: int = 0
    last_at_us: int = 0
    label: str = ""


def decimal_text(value: Decimal) -> str:
    """An exact decimal in plain notation without trailing zeros ("0.0004425", never "4.425E-4")."""
    text = format(value.normalize(), "f")
    return text if text not in ("-0", "") else "0"


def timestamp(microseconds: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from microseconds since the epoch."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(microseconds)
    return stamp


def _body(key: str, offset: int, length: int) -> BodyLocation | None:
    return BodyLocation(key, int(offset), int(length)) if key else None


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
    )
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
        request_body=_body(values["request_body_key"], values["request_body_offset"], values["request_body_length"]),
        response_body=_body(
            values["response_body_key"], values["response_body_offset"], values["response_body_length"]
        ),
        sort_keys=sort_keys,
    )


@dataclass(frozen=True)
class Page:
    """One page of requests and whether more follow."""

    rows: list[StoredRequest]
    has_more: bool


class RequestStore:
    """Queries over logged requests for one organization at a time."""

    def __init__(self, runner: SqlRunner, final: bool = True) -> None:
        self._runner = runner
        self._final = " FINAL" if final else ""

    def _scope(self, organization_id: str, where: str, params: dict[str, Any], table: str = "requests") -> str:
        """``FROM requests FINAL WHERE <organization> AND (<where>)``: the only way queries reach a table."""
        params["organization_id"] = str(uuid.UUID(organization_id))
        source = {
            "requests": f"requests{self._final}",
            # Every stored version of each row: callers keep the newest themselves (see _latest).
            "request_versions": "requests",
            "request_sessions": "request_sessions",
            "request_times": "request_times",
        }[table]
        return f"FROM {source} WHERE organization_id = toUUID(%(organization_id)s) AND ({where})"

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
        """Up to ``limit`` rows matching ``where``, sorted, strictly after ``after``."""
        column = SORT_COLUMNS[sort_field]
        direction = "ASC" if ascending else "DESC"
        beyond = ">" if ascending else "<"
        conditions = [f"({where})"]
        if after is not None:
            if column == "cost_usd":
                value = "toDecimal64(%(after_value)s, 12)"
                params["after_value"] = str(after.sort_value)
            else:
                value = "%(after_value)s"
                params["after_value"] = int(after.sort_value)
            params["after_id"] = after.request_id
            conditions.append(
                f"({column} {beyond} {value} OR ({column} = {value} AND toString(request_id) {beyond} %(after_id)s))"
            )
            if column == "created_at_us":
                # Coarse bound on the ordering key so granules past the cursor are skipped.
                params["after_seconds"] = int(after.sort_value) // 1_000_000
                conditions.append(f"created_at {beyond}= toDateTime(%(after_seconds)s)")
        params["limit"] = limit + 1
        # Two steps: FINAL over many rows is cheap only when few columns are read, so first find the
        # page's keys (id and time) reading just the filter and sort columns, then read the full rows of
        # those ids alone, pruned to their exact creation seconds through the primary key.
        keys_sql = (
            f"SELECT toString(request_id), toUInt32(created_at) "
            f"{self._scope(organization_id, ' AND '.join(conditions), params)} "
            f"ORDER BY {column} {direction}, toString(request_id) {direction} LIMIT %(limit)s"
        )
        keys = await self._runner.fetch(keys_sql, params)
        if not keys:
            return Page(rows=[], has_more=False)
        ids = [str(key[0]) for key in keys[:limit]]
        rows_params: dict[str, Any] = {
            "ids": tuple(ids),
            "seconds": tuple(sorted({int(key[1]) for key in keys[:limit]})),
        }
        latest = await self._latest(
            organization_id, "created_at IN %(seconds)s AND toString(request_id) IN %(ids)s", rows_params
        )
        found = {row.record.request_id: row for row in latest}
        return Page(rows=[found[request_id] for request_id in ids if request_id in found], has_more=len(keys) > limit)

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
        """One request of the organization, or None (the request id index narrows the time range)."""
        params: dict[str, Any] = {"request_id": str(request_id)}
        condition = "request_id = toUUID(%(request_id)s)"
        condition += await self._time_range(organization_id, "request_times", condition, params)
        rows = await self._latest(organization_id, condition, params)
        return rows[0] if rows else None

    async def _latest(self, organization_id: str, where: str, params: dict[str, Any]) -> list[StoredRequest]:
        """The newest version of each row matching ``where``, which must select whole requests by identity
        (ids, a session): exactly what FINAL shows, but without FINAL's single-threaded merge of every
        column of the granules read, which dominates point lookups on 18.16."""
        scope = self._scope(organization_id, where, params, table="request_versions")
        newest: dict[tuple[int, str], tuple[int, tuple[Any, ...]]] = {}
        for row in await self._runner.fetch(f"SELECT {', '.join(_COLUMNS)}, version {scope}", params):
            key = (int(row[3]), str(row[0]))  # (created_at_us, request id): the row's identity
            version = int(row[-1])
            if key not in newest or version > newest[key][0]:
                newest[key] = (version, row[:-1])
        return [_to_stored(row) for _, row in newest.values()]

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
        where = f"request_id IN (SELECT request_id {members}){time_range}"
        rows = await self._latest(organization_id, where, params)
        current = [row for row in rows if row.record.session_id == session_id]
        current.sort(key=lambda row: (row.sort_keys["created_at_us"], row.record.request_id))
        return current[:limit]

    async def metrics(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        group_by: list[str],
        limit: int,
        order: str = "keys",
        label: str = "",
    ) -> list[MetricsRow]:
        """Metrics per group of ``group_by`` SQL expressions, with the first / last request time of each.

        ``order``: "keys" (ascending), "count" (most requests first) or "last" (latest request first).
        ``label`` is an extra aggregate expression returned per group (e.g. a session's name).
        """
        keys = [f"{expression} AS k{index}" for index, expression in enumerate(group_by)]
        columns = [*keys, "min(created_at_us)", "max(created_at_us)", label or "''", *_METRIC_COLUMNS]
        params["limit"] = limit
        sql = f"SELECT {', '.join(columns)} {self._scope(organization_id, where, params)}"
        if group_by:
            names = ", ".join(f"k{index}" for index in range(len(group_by)))
            order = {
                "keys": names,
                "count": f"count() DESC, {names}",
                "last": f"max(created_at_us) DESC, {names}",
            }[order]
            sql += f" GROUP BY {names} ORDER BY {order}"
        sql += " LIMIT %(limit)s"
        result = []
        for row in await self._runner.fetch(sql, params):
            width = len(group_by)
            metrics = Metrics.from_row(row[width + 3 :])
            if metrics.request_count == 0:
                continue
            result.append(
                MetricsRow(
                    keys=tuple(row[:width]),
                    metrics=metrics,
                    first_at_us=int(row[width]),
                    last_at_us=int(row[width + 1]),
                    label=str(row[width + 2]),
                )
            )
        return result
