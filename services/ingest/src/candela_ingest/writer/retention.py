"""Retention (``organizations.retention_days``): a periodic sweep in each writer process.

For each organization with a retention, rows created before ``now - retention_days`` are deleted from
ClickHouse (``ALTER TABLE requests DELETE``, a mutation that 18.16 and modern servers both run in the
background), then, in one Postgres transaction, their ledger entries are marked not stored and moved
from ``stored_logs`` to ``expired_logs`` (so they free room under ``max_stored_logs``, and a replay of an
expired log does not bring its row back). The ClickHouse delete is issued first and by time, so a sweep
interrupted between the two steps is simply completed by the next one. Sweeps by several writers at once
are harmless: the Postgres update counts each request once.

Days past the ledger horizon (:mod:`candela_ingest.writer.ledger_horizon`) have no ledger rows any more: what
they still store is kept per organization and day in ``organization_stored_log_days``, and a day there
expires whole once the cutoff has passed its end. So that the counters match the rows ClickHouse keeps, a
cutoff that falls past the horizon is taken back to the start of its day for ClickHouse too (an
organization whose retention is longer than the horizon keeps its logs up to a day longer). The
ClickHouse delete uses the horizon as read before it, the Postgres step the horizon locked in its
transaction; if the pruner moved it in between (once a day), the Postgres step's cutoff is the earlier one,
``stored_logs`` stays above the rows kept for that day (the safe side of a limit) and the day expires whole
the next day.

Then, when the writer has S3 settings, the organization's body objects under
``bodies/<org>/<yyyy>/<mm>/<dd>/`` of days before the cutoff's day are deleted (a body's key date is the
day it was ingested, never before its request's day, so no live row loses its body). Last, a monthly
partition whose every organization has a retention that expired the whole month is dropped outright
(``DROP PARTITION``; cheaper than the mutation, which has already removed its rows).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import asyncpg

from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.errors import POSTGRES_FAILURES, StoreUnavailable
from candela_ingest.writer.ledger_horizon import HORIZON_FOR_SHARE_SQL, HORIZON_SQL, MAINTENANCE_LOCK_SQL, within_ledger
from candela_ingest.writer.postgres import classify_postgres_error

logger = logging.getLogger(__name__)

_RETENTIONS = "SELECT id, retention_days FROM organizations WHERE retention_days IS NOT NULL ORDER BY id"

# Ledger rows of the organization before the cutoff, and its rolled-up days (past the horizon) that end
# before it: the cutoff is then within the ledger, or the start of a day (see within_ledger).
_EXPIRE = """
WITH expired AS (
    UPDATE counted_requests SET stored = false
    WHERE organization_id = $1 AND created_at < $2 AND stored
    RETURNING 1
), expired_days AS (
    DELETE FROM organization_stored_log_days
    WHERE organization_id = $1 AND day < ($2 AT TIME ZONE 'UTC')::date
    RETURNING stored_logs
), total AS (
    SELECT (SELECT count(*) FROM expired) + (SELECT coalesce(sum(stored_logs), 0) FROM expired_days) AS expired_logs
), counters_update AS (
    INSERT INTO organization_log_counters AS counters
        (organization_id, stored_logs, expired_logs, last_retention_sweep_at)
    SELECT $1, 0, expired_logs, now() FROM total
    ON CONFLICT (organization_id) DO UPDATE SET
        stored_logs = greatest(counters.stored_logs - EXCLUDED.expired_logs, 0),
        expired_logs = counters.expired_logs + EXCLUDED.expired_logs,
        last_retention_sweep_at = now(),
        updated_at = now()
)
SELECT expired_logs FROM total
"""


class BodyDeleter(Protocol):
    """Deletes an organization's body objects of days before a cutoff (S3 in production)."""

    async def delete_days_before(self, organization_id: str, cutoff: date) -> int:
        """Deletes the objects under ``bodies/<org>/<yyyy>/<mm>/<dd>/`` for days < cutoff; returns how many."""


class RetentionSweeper:
    """Deletes each organization's logs older than its retention and keeps the counters exact."""

    def __init__(self, pool: asyncpg.Pool, rows: ClickHouseRowSink, bodies: BodyDeleter | None = None) -> None:
        self._pool = pool
        self._rows = rows
        self._bodies = bodies

    async def sweep(self, now: datetime) -> dict[uuid.UUID, int]:
        """One sweep; returns how many stored logs expired per organization."""
        try:
            retentions = [(row["id"], int(row["retention_days"])) for row in await self._pool.fetch(_RETENTIONS)]
        except POSTGRES_FAILURES as err:
            raise classify_postgres_error(err) from err
        expired: dict[uuid.UUID, int] = {}
        for organization_id, days in retentions:
            try:
                cutoff = within_ledger(now - timedelta(days=days), await self._pool.fetchval(HORIZON_SQL))
            except POSTGRES_FAILURES as err:
                raise classify_postgres_error(err) from err
            await self._rows.delete_older_than(organization_id, cutoff)
            try:
                count = await self._expire(organization_id, cutoff)
            except POSTGRES_FAILURES as err:
                raise StoreUnavailable(f"retention of {organization_id}: {classify_postgres_error(err)}") from err
            expired[organization_id] = count
            if count:
                logger.info("retention: %d logs of %s older than %s expired", count, organization_id, cutoff)
            if self._bodies is not None:
                deleted = await self._bodies.delete_days_before(str(organization_id), cutoff.date())
                if deleted:
                    logger.info("retention: deleted %d body objects of %s", deleted, organization_id)
        await self._drop_expired_partitions(dict(retentions), now)
        return expired

    async def _expire(self, organization_id: uuid.UUID, cutoff: datetime) -> int:
        """Moves the organization's stored logs before ``cutoff`` from stored_logs to expired_logs."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(MAINTENANCE_LOCK_SQL)
            locked_cutoff = within_ledger(cutoff, await connection.fetchval(HORIZON_FOR_SHARE_SQL))
            if locked_cutoff != cutoff:
                logger.info(
                    "retention of %s: the ledger horizon moved during the sweep; logs before %s expire with a "
                    "later sweep",
                    organization_id,
                    cutoff,
                )
            return int(await connection.fetchval(_EXPIRE, organization_id, locked_cutoff) or 0)

    async def _drop_expired_partitions(self, retention_days: dict[uuid.UUID, int], now: datetime) -> None:
        """Drops each monthly partition that every organization in it has expired as a whole."""
        for partition in await self._rows.partitions():
            year, month = divmod(int(partition), 100)
            month_end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            owners = await self._rows.organizations_in_partition(partition)
            if owners and all(
                owner in retention_days and month_end <= now - timedelta(days=retention_days[owner]) for owner in owners
            ):
                await self._rows.drop_partition(partition)
                logger.info(
                    "retention: dropped partition %s (expired for all its %d organizations)", partition, len(owners)
                )
