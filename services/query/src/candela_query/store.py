"""Reads of the ClickHouse ``requests`` table, always scoped to one organization.

Every query's FROM/WHERE comes from :meth:`RequestStore._scope`, the single place the caller's
organization enters the SQL, so no query can forget it. Values are bound by the driver, never formatted
into the SQL text. A log delivered twice shows once (ClickHouse merges the copies only eventually), without
FINAL where it can be avoided, since FINAL costs 4-7x on 18.16 (measured on 10M rows, bench/query):

- pages and point reads (a request, a session) read every stored version of the few rows they return
  and keep the newest; a page's filter is evaluated on that newest version (``_newest_matching``);
- aggregates over a time span skip FINAL when every day of the span is proven free of copies
  (``_copy_free_proof``, proofs in ``request_dedup_checks``) and nothing changed during the read;
  otherwise (or without a span) they read with FINAL. The days' fingerprints are summed from those of the
  table's immutable parts, kept in memory, so only parts not seen before are read for them.

The SQL selects only portable values (strings, integers, arrays): ids and decimals through toString(),
so the same statements give the same Python values on ClickHouse 18.16 (clickhouse-driver) and on modern
ClickHouse (chDB); see :class:`SqlRunner`.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
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

DAY_SECONDS = 86_400
CLOSED_DAY_DELAY_SECONDS = 3_600
"""A day that ended this long ago is closed: proofs that it holds no copies are recorded only for closed days
(a day still receiving logs changes its fingerprint with every insert, so its proofs would only pile up)."""

SORT_COLUMNS = {
    "created_at": "created_at_us",
    "latency_ms": "latency_ms",
    "time_to_first_token_ms": "time_to_first_token_ms",
    "total_tokens": "total_tokens",
    "cost_usd": "cost_usd",
}
"""Sortable fields and their columns. Ties are broken by the request id as text: UUID columns sort in an
internal order that is not the text order, so text keeps cursors and both dialects in agreement."""


_PARTS_SQL = (
    "SELECT groupArray(concat(name, ' ', toString(rows), ' ', toString(toUInt32(modification_time))))"
    " FROM system.parts WHERE database = currentDatabase() AND table = 'requests' AND active"
)
"""The active parts of the requests table, each as "<name> <rows> <modification time>": a part never changes,
but its name alone could come back with other rows in a table dropped and created again, which the
remembered part fingerprints must not take for the old part."""

REMEMBERED_ORGANIZATIONS = 256
"""Organizations whose part fingerprints and proven days are kept (the ones queried most recently)."""

Fingerprint = tuple[int, int]
"""(rows, sum of versions modulo 2**64) of a set of stored versions: any insert, merge or deletion changes it."""


@dataclass(frozen=True)
class PartFingerprints:
    """What one immutable part holds of one organization: the fingerprint of each day with rows there,
    among ``counted_days`` (the days it was read for)."""

    counted_days: range
    days: dict[int, Fingerprint]

    def merged(self, later: PartFingerprints) -> PartFingerprints:
        """Both countings of the part when their days meet (each is exact for its days), else the later."""
        earlier_days, later_days = self.counted_days, later.counted_days
        if max(earlier_days.start, later_days.start) > min(earlier_days.stop, later_days.stop):
            return later
        counted_days = range(min(earlier_days.start, later_days.start), max(earlier_days.stop, later_days.stop))
        return PartFingerprints(counted_days, {**self.days, **later.days})


@dataclass(frozen=True)
class RememberedOrganization:
    """What is known of one organization's rows: the fingerprints of active parts, and for each day the
    last fingerprint found free of copies (a lasting fact, like a row of request_dedup_checks)."""

    parts: dict[str, PartFingerprints] = field(default_factory=dict)
    proven_days: dict[int, Fingerprint] = field(default_factory=dict)


@dataclass(frozen=True)
class CopyFreeProof:
    """The days of a span proven free of copies: their total fingerprint, the active parts it was taken
    from, the part fingerprints read for it, and whether some days were checked after the parts were
    read (then only a recount confirms it)."""

    total: Fingerprint
    parts: frozenset[str]
    counted: dict[str, PartFingerprints]
    checked_later: bool = False


class SqlRunner(Protocol):
    """Runs one SELECT with ``%(name)s`` parameters bound by a driver; rows as tuples of plain values."""

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``."""
        ...


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


class RequestStore:
    """Queries over logged requests for one organization at a time.

    ``final=False`` drops the duplicate handling of aggregates (no FINAL, no proofs): only for benchmarks
    pricing it. ``clock`` (epoch seconds) decides which days are closed enough to record proofs of. The
    store remembers the day fingerprints of the table's parts and the proven days of the organizations
    queried last (REMEMBERED_ORGANIZATIONS): share one store per process.
    """

    def __init__(self, runner: SqlRunner, final: bool = True, clock: Callable[[], float] = time.time) -> None:
        self._runner = runner
        self._final = " FINAL" if final else ""
        self._clock = clock
        self._remembered: OrderedDict[str, RememberedOrganization] = OrderedDict()

    def _scope(
        self, organization_id: str, where: str, params: dict[str, Any], table: str = "requests", prewhere: str = ""
    ) -> str:
        """``FROM requests FINAL [PREWHERE <prewhere>] WHERE <organization> AND (<where>)``: the only way
        queries reach a table. ``prewhere`` narrows the rows before the other columns are read."""
        params["organization_id"] = str(uuid.UUID(organization_id))
        source = {
            "requests": f"requests{self._final}",
            # Every stored version of each row: callers keep the newest themselves (see _latest).
            "request_versions": "requests",
            "request_sessions": "request_sessions",
            "request_times": "request_times",
            "request_dedup_checks": "request_dedup_checks",
        }[table]
        narrowed = f" PREWHERE {prewhere}" if prewhere else ""
        return f"FROM {source}{narrowed} WHERE organization_id = toUUID(%(organization_id)s) AND ({where})"

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

    async def metrics(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        group_by: list[str],
        limit: int,
        order: str = "keys",
        label: str = "",
        span: tuple[int, int] | None = None,
    ) -> list[MetricsRow]:
        """Metrics per group of ``group_by`` SQL expressions, with the first / last request time of each.

        ``order``: "keys" (ascending), "count" (most requests first) or "last" (latest request first).
        ``label`` is an extra aggregate expression returned per group (e.g. a session's name).
        ``span``: [start, end) in microseconds when ``where`` keeps only rows created in it; then the
        rows are read without FINAL if the days it covers are proven free of copies (_copy_free_proof),
        and the proof still holds after the read. Otherwise (or without a span) with FINAL.
        """
        params["limit"] = limit
        proof = await self._copy_free_proof(organization_id, span) if span and self._final else None
        table = "request_versions" if proof is not None else "requests"
        sql = self._metrics_sql(organization_id, where, params, group_by, order, label, table)
        rows = await self._runner.fetch(sql, params)
        if proof is not None and span is not None and not await self._unchanged(organization_id, span, proof):
            # Logs arrived (maybe a redelivered copy) while the rows were read: read them again with FINAL.
            sql = self._metrics_sql(organization_id, where, params, group_by, order, label, "requests")
            rows = await self._runner.fetch(sql, params)
        result = []
        for row in rows:
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

    def _metrics_sql(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        group_by: list[str],
        order: str,
        label: str,
        table: str,
    ) -> str:
        """The SQL of :meth:`metrics` reading ``table`` (requests with or without FINAL).

        Ranked groups ("count", "last") are first ranked by a subquery reading only the key and ranking
        columns, so the costly aggregates (exact quantiles keep every value) run over the rows of the
        ``limit`` kept groups only (top 100 users of 2,000: 108 ms instead of 141 ms on 10M rows).
        """
        keys = [f"{expression} AS k{index}" for index, expression in enumerate(group_by)]
        columns = [*keys, "min(created_at_us)", "max(created_at_us)", label or "''", *_METRIC_COLUMNS]
        if not group_by:
            return f"SELECT {', '.join(columns)} {self._scope(organization_id, where, params, table)} LIMIT %(limit)s"
        names = ", ".join(f"k{index}" for index in range(len(group_by)))
        ranking = {
            "keys": names,
            "count": f"count() DESC, {names}",
            "last": f"max(created_at_us) DESC, {names}",
        }[order]
        if order != "keys":
            ranked = (
                f"SELECT {', '.join(keys)} {self._scope(organization_id, where, params, table)}"
                f" GROUP BY {names} ORDER BY {ranking} LIMIT %(limit)s"
            )
            where = f"({where}) AND ({', '.join(group_by)}) IN ({ranked})"
        return (
            f"SELECT {', '.join(columns)} {self._scope(organization_id, where, params, table)}"
            f" GROUP BY {names} ORDER BY {ranking} LIMIT %(limit)s"
        )

    @staticmethod
    def _day_range(span: tuple[int, int], params: dict[str, Any]) -> str:
        """The condition on created_at for the whole UTC days that ``span`` touches."""
        first_day = span[0] // 1_000_000 // DAY_SECONDS
        last_day = max(span[1] - 1, span[0]) // 1_000_000 // DAY_SECONDS
        params["first_day"], params["last_day"] = max(first_day, 0), max(last_day, 0)
        params["days_start"] = params["first_day"] * DAY_SECONDS
        params["days_end"] = min((params["last_day"] + 1) * DAY_SECONDS, 2**32 - 1)
        return "created_at >= toDateTime(%(days_start)s) AND created_at < toDateTime(%(days_end)s)"

    async def _unchanged(self, organization_id: str, span: tuple[int, int], proof: CopyFreeProof) -> bool:
        """Whether the days of ``span`` still have the fingerprint of ``proof``. When the table's active parts
        are still those it was taken from (immutable; every insert, merge or mutation makes a new one, and a
        part that left never comes back), nothing changed at all and the rows need not be counted again.

        The part fingerprints read for ``proof`` are remembered for the parts still active: those were
        active throughout, so their reading saw all their rows."""
        active = await self._active_parts()
        self._remember(organization_id, proof.counted, active)
        if active == proof.parts and not proof.checked_later:
            return True
        params: dict[str, Any] = {}
        scope = self._scope(organization_id, self._day_range(span, params), params, "request_versions")
        count, version_sum = (await self._runner.fetch(f"SELECT count(), sum(version) {scope}", params))[0]
        return (int(count), int(version_sum)) == proof.total

    async def _active_parts(self) -> frozenset[str]:
        """The active parts of the requests table (see _PARTS_SQL)."""
        return frozenset(str(part) for part in (await self._runner.fetch(_PARTS_SQL, {}))[0][0])

    def _remember(self, organization_id: str, counted: dict[str, PartFingerprints], active: frozenset[str]) -> None:
        """Keeps the fingerprints of the ``active`` parts, adding those just ``counted`` (the others left)."""
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        kept = {part: fingerprints for part, fingerprints in remembered.parts.items() if part in active}
        for part, fingerprints in counted.items():
            if part in active:
                kept[part] = kept[part].merged(fingerprints) if part in kept else fingerprints
        self._keep(organization_id, RememberedOrganization(kept, remembered.proven_days))

    def _remember_proven(self, organization_id: str, proven_days: dict[int, Fingerprint]) -> None:
        """Keeps the fingerprints just found free of copies."""
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        self._keep(organization_id, RememberedOrganization(remembered.parts, {**remembered.proven_days, **proven_days}))

    def _keep(self, organization_id: str, remembered: RememberedOrganization) -> None:
        self._remembered.pop(organization_id, None)
        self._remembered[organization_id] = remembered
        while len(self._remembered) > REMEMBERED_ORGANIZATIONS:
            self._remembered.popitem(last=False)

    async def _copy_free_proof(self, organization_id: str, span: tuple[int, int]) -> CopyFreeProof | None:
        """The fingerprint of the days of ``span`` when none of them holds two copies of a request, else
        None (then only FINAL reads them exactly).

        A day's fingerprint is the sum of those of the active parts, each read once per part and day (a
        part never changes) and remembered. A day is free of copies when a proof (remembered, or recorded
        in request_dedup_checks) has its current fingerprint, or when checking it now finds as many
        distinct (created_at_us, request_id) as rows: copies share both, whereas created_at_us alone
        collides between distinct requests on busy days (a day of 1M requests holds a few same-microsecond
        pairs), which would send such days to FINAL for good. Proofs of closed days are recorded, so each
        day is checked about once.
        """
        params: dict[str, Any] = {}
        self._day_range(span, params)  # the span's whole days: first_day, last_day
        span_days = range(params["first_day"], params["last_day"] + 1)
        # Read before any row is: _unchanged compares them with the parts after the read.
        parts = await self._active_parts()
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        counted_before = {part: remembered.parts[part].counted_days for part in parts if part in remembered.parts}
        uncounted = {
            part: missing
            for part in parts
            if (missing := [day for day in span_days if day not in counted_before.get(part, range(0))])
        }
        counted: dict[str, PartFingerprints] = {}
        if uncounted:
            # One read of the uncounted parts over the days some of them lack (a sliding span: its new days).
            first_day, last_day = (
                min(days[0] for days in uncounted.values()),
                max(days[-1] for days in uncounted.values()),
            )
            counted = await self._count_parts(organization_id, sorted(uncounted), range(first_day, last_day + 1))
        current = {part: remembered.parts[part] for part in parts if part in remembered.parts}
        for part, part_fingerprints in counted.items():
            current[part] = current[part].merged(part_fingerprints) if part in current else part_fingerprints
        fingerprints: dict[int, Fingerprint] = {}
        for part_fingerprints in current.values():
            for day, (count, version_sum) in part_fingerprints.days.items():
                if day in span_days:
                    rows_before, sum_before = fingerprints.get(day, (0, 0))
                    fingerprints[day] = (rows_before + count, (sum_before + version_sum) % 2**64)
        unproven = sorted(
            day for day, fingerprint in fingerprints.items() if remembered.proven_days.get(day) != fingerprint
        )
        checked_later = False
        if unproven:
            recorded = await self._recorded_proofs(organization_id, unproven)
            proven = {day: fingerprints[day] for day in unproven if (day, *fingerprints[day]) in recorded}
            unproven = [day for day in unproven if day not in proven]
            if unproven:
                checked = await self._check_days(organization_id, unproven)
                if any(distinct != count for count, _, distinct in checked.values()):
                    return None
                checked_fingerprints = {day: (count, version_sum) for day, (count, version_sum, _) in checked.items()}
                fingerprints.update(checked_fingerprints)
                proven.update(checked_fingerprints)
                # Read after the parts: whether they changed meanwhile is unknown.
                checked_later = True
            self._remember_proven(organization_id, proven)
        total = sum(count for count, _ in fingerprints.values()), sum(s for _, s in fingerprints.values()) % 2**64
        return CopyFreeProof(total, parts, counted, checked_later)

    async def _recorded_proofs(self, organization_id: str, days: list[int]) -> set[tuple[int, int, int]]:
        """The (day, rows, sum of versions) of ``days`` recorded free of copies in request_dedup_checks."""
        params: dict[str, Any] = {"proof_days": tuple(days)}
        scope = self._scope(organization_id, "day IN %(proof_days)s", params, "request_dedup_checks")
        rows = await self._runner.fetch(f"SELECT day, row_count, version_sum {scope}", params)
        return {(int(day), int(count), int(version_sum)) for day, count, version_sum in rows}

    async def _count_parts(self, organization_id: str, parts: list[str], days: range) -> dict[str, PartFingerprints]:
        """The fingerprints of the organization's rows in each of ``parts`` on each of ``days``: the server
        reads only those parts (pruned by their names) and only those days (by the primary key)."""
        by_name = {part.split(" ")[0]: part for part in parts}
        params: dict[str, Any] = {
            "counted_parts": tuple(sorted(by_name)),
            "count_start": days[0] * DAY_SECONDS,
            "count_end": min((days[-1] + 1) * DAY_SECONDS, 2**32 - 1),
        }
        condition = (
            "created_at >= toDateTime(%(count_start)s) AND created_at < toDateTime(%(count_end)s)"
            " AND _part IN %(counted_parts)s"
        )
        sql = (
            "SELECT _part, toUInt32(intDiv(toUInt32(created_at), 86400)) AS day, toUInt64(count()),"
            f" toUInt64(sum(version)) {self._scope(organization_id, condition, params, 'request_versions')}"
            " GROUP BY _part, day"
        )
        found: dict[str, dict[int, Fingerprint]] = {part: {} for part in parts}
        for name, day, count, version_sum in await self._runner.fetch(sql, params):
            found[by_name[str(name)]][int(day)] = (int(count), int(version_sum))
        return {part: PartFingerprints(days, day_fingerprints) for part, day_fingerprints in found.items()}

    async def _check_days(self, organization_id: str, days: list[int]) -> dict[int, tuple[int, int, int]]:
        """(rows, sum of versions, distinct identities) of each of ``days``; proofs of the closed ones that
        hold no copies are recorded."""
        params: dict[str, Any] = {
            "check_days": tuple(days),
            "check_start": days[0] * DAY_SECONDS,
            "check_end": min((days[-1] + 1) * DAY_SECONDS, 2**32 - 1),
        }
        condition = (
            "created_at >= toDateTime(%(check_start)s) AND created_at < toDateTime(%(check_end)s)"
            " AND intDiv(toUInt32(created_at), 86400) IN %(check_days)s"
        )
        sql = (
            "SELECT toUInt32(intDiv(toUInt32(created_at), 86400)) AS day, count(), sum(version),"
            " uniqExact(created_at_us, request_id) "
            f"{self._scope(organization_id, condition, params, 'request_versions')} GROUP BY day"
        )
        checked = {
            int(day): (int(count), int(total), int(distinct))
            for day, count, total, distinct in await self._runner.fetch(sql, params)
        }
        closed_before = int(self._clock()) - CLOSED_DAY_DELAY_SECONDS
        proofs = [
            (day, count, total)
            for day, (count, total, distinct) in checked.items()
            if count == distinct and (day + 1) * DAY_SECONDS <= closed_before
        ]
        if proofs:
            record = {"organization_id": str(uuid.UUID(organization_id)), "proofs": proofs}
            await self._runner.fetch(
                "INSERT INTO request_dedup_checks (organization_id, day, row_count, version_sum, checked_at)"
                " SELECT toUUID(%(organization_id)s), toUInt32(tupleElement(proof, 1)),"
                " toUInt64(tupleElement(proof, 2)), toUInt64(tupleElement(proof, 3)), now()"
                " FROM (SELECT arrayJoin(%(proofs)s) AS proof)",
                record,
            )
        return checked
