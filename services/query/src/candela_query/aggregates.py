"""Aggregates of the ``requests`` table: totals, latency and token quantiles, and score averages, per group
of requests.

Aggregates over a time span, the metrics and the score averages alike, skip FINAL when every day of the span
is proven free of copies (:class:`~candela_query.copy_free_proofs.CopyFreeProofs`) and nothing changed
during the read; otherwise (or without a span) they read with FINAL (:meth:`Aggregates._read`). Scores need
no FINAL: their newest values are kept with argMax (:data:`~candela_query.scores.LATEST_SCORES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela_query.copy_free_proofs import CopyFreeProofs
from candela_query.row_reads import decimal_text
from candela_query.scope import Scope, SqlRunner
from candela_query.scores import LATEST_SCORES

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


class Aggregates:
    """Metrics of the requests of one organization at a time, per group."""

    def __init__(self, runner: SqlRunner, scope: Scope, proofs: CopyFreeProofs | None) -> None:
        self._runner = runner
        self._scope = scope
        self._proofs = proofs

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
        rows are read without FINAL if the days it covers are proven free of copies (CopyFreeProofs.proof),
        and the proof still holds after the read. Otherwise (or without a span) with FINAL.
        """
        params["limit"] = limit
        rows = await self._read(
            organization_id,
            span,
            lambda table: self._metrics_sql(organization_id, where, params, group_by, order, label, table),
            params,
        )
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

    async def score_averages(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        group_by: list[str],
        limit: int,
        span: tuple[int, int] | None = None,
    ) -> dict[tuple[Any, ...], dict[str, tuple[float, int]]]:
        """(mean, count) of each score's newest value over the requests matching ``where`` that have it, by
        group of ``group_by`` SQL expressions then score name: one query joining the requests to the
        organization's newest scores. ``where`` and ``group_by`` name only columns of ``requests``.

        ``span`` as for :meth:`metrics`: the requests are read without FINAL when the days it covers are
        proven free of copies and still are after the read, else with FINAL, so a request stored twice
        is averaged once."""
        lookup = dict(params)
        lookup["score_limit"] = limit
        keys = [f"{expression} AS k{index}" for index, expression in enumerate(group_by)]
        names = [f"k{index}" for index in range(len(group_by))]
        join = f"ALL INNER JOIN ({LATEST_SCORES}) AS latest_scores USING request_id"

        def score_sql(table: str) -> str:
            return (
                f"SELECT {', '.join([*keys, 'score_name', 'avg(score_value)', 'count()'])} "
                f"{self._scope(organization_id, where, lookup, table, join=join)} "
                f"GROUP BY {', '.join([*names, 'score_name'])} LIMIT %(score_limit)s"
            )

        averages: dict[tuple[Any, ...], dict[str, tuple[float, int]]] = {}
        width = len(group_by)
        for row in await self._read(organization_id, span, score_sql, lookup):
            averages.setdefault(tuple(row[:width]), {})[str(row[width])] = (float(row[width + 1]), int(row[width + 2]))
        return averages

    async def _read(
        self,
        organization_id: str,
        span: tuple[int, int] | None,
        sql_reading: Callable[[str], str],
        params: dict[str, Any],
    ) -> list[tuple[Any, ...]]:
        """The rows of ``sql_reading(table)``, a query whose ``where`` keeps only requests created in
        ``span`` (when given): ``table`` is "request_versions" (no FINAL) when the days of ``span`` are proven
        free of copies (CopyFreeProofs.proof), and the proof still holds after the read; else "requests"
        (FINAL), also read again after a read without FINAL when the proof no longer holds."""
        proofs = self._proofs
        proof = await proofs.proof(organization_id, span) if proofs and span and self._scope.final else None
        if proofs is None or span is None or proof is None:
            return await self._runner.fetch(sql_reading("requests"), params)
        rows = await self._runner.fetch(sql_reading("request_versions"), params)
        if await proofs.unchanged(organization_id, span, proof):
            return rows
        # Logs arrived (maybe a redelivered copy) while the rows were read: read them again with FINAL.
        return await self._runner.fetch(sql_reading("requests"), params)

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
