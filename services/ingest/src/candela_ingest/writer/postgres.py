"""Exactly-once usage counters in Postgres: the counted-requests ledger and the daily totals, one transaction.

The transaction inserts every request id of the batch into ``counted_requests`` (ON CONFLICT DO NOTHING
RETURNING), then adds only the ids that came back, the ones never counted before, to
``organization_usage_daily``. A redelivered or replayed message therefore never counts twice, and a
failed transaction leaves nothing behind to count twice on retry.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from candela.logs.v1 import log_record_pb2
from candela_ingest.usage import aggregate_usage, counted_request, unique_by_request_id
from candela_ingest.writer.errors import StoreRejected, StoreUnavailable

_COUNT_REQUESTS = """
INSERT INTO counted_requests (request_id, organization_id, created_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""

_ADD_USAGE = """
INSERT INTO organization_usage_daily AS daily
    (organization_id, day, request_count, prompt_tokens, completion_tokens, cost_usd, unpriced_count)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::numeric[], $7::bigint[])
ON CONFLICT (organization_id, day) DO UPDATE SET
    request_count = daily.request_count + EXCLUDED.request_count,
    prompt_tokens = daily.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = daily.completion_tokens + EXCLUDED.completion_tokens,
    cost_usd = daily.cost_usd + EXCLUDED.cost_usd,
    unpriced_count = daily.unpriced_count + EXCLUDED.unpriced_count
"""

# SQLSTATE classes that blame the data: 22 data exception, 23 integrity constraint violation. Anything
# else (connection, resources, missing tables, serialization conflicts) is the database's state.
_REJECTED_SQLSTATE_CLASSES = frozenset({"22", "23"})


def classify_postgres_error(error: BaseException) -> StoreRejected | StoreUnavailable:
    """Whether a failed transaction blamed the data (rejected) or the database (unavailable)."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    if isinstance(error, asyncpg.PostgresError) and sqlstate[:2] in _REJECTED_SQLSTATE_CLASSES:
        return StoreRejected(f"Postgres rejected the usage rows ({sqlstate}): {error}")
    return StoreUnavailable(f"Postgres failed: {error!r}")


class PostgresUsageLedger:
    """Counts each request once in the per-organization daily usage."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def count(self, records: Sequence[log_record_pb2.LogRecord]) -> int:
        """Counts the requests of ``records`` not counted before; returns how many that was."""
        unique = unique_by_request_id(records)
        if not unique:
            return 0
        # Sorted, so that concurrent writers take row locks in one order.
        ledger = sorted((counted_request(record) for record in unique.values()), key=lambda row: row.request_id)
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                returned = await connection.fetch(
                    _COUNT_REQUESTS,
                    [row.request_id for row in ledger],
                    [row.organization_id for row in ledger],
                    [row.created_at for row in ledger],
                )
                usage = aggregate_usage(unique[row["request_id"]] for row in returned)
                if usage:
                    await connection.execute(
                        _ADD_USAGE,
                        [day.organization_id for day in usage],
                        [day.day for day in usage],
                        [day.request_count for day in usage],
                        [day.prompt_tokens for day in usage],
                        [day.completion_tokens for day in usage],
                        [day.cost_usd for day in usage],
                        [day.unpriced_count for day in usage],
                    )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as err:
            raise classify_postgres_error(err) from err
        return len(returned)

    async def check(self) -> None:
        """Raises StoreUnavailable unless Postgres answers and the usage tables exist (readiness)."""
        try:
            await self._pool.fetchval("SELECT count(*) FROM counted_requests WHERE false")
            await self._pool.fetchval("SELECT count(*) FROM organization_usage_daily WHERE false")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as err:
            raise StoreUnavailable(f"Postgres is not ready: {err!r}") from err
