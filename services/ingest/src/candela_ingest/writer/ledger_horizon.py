"""The ledger horizon: how far back ``counted_requests`` remembers, and the pruning that holds it there.

``counted_requests`` (one row per counted log, the writers' idempotency record) is partitioned by the UTC
day of each log's creation (Postgres migration 0007). Each writer's maintenance task (every
``retention_interval_s``, before the retention sweep) moves the horizon to ``today - ledger_horizon_days``
and drops the partitions wholly before it: a catalog change per day, no DELETE, nothing for vacuum.

Why the horizon can be bounded: a copy of a log reaches a writer again only from the log topic (a
redelivery, or ``replay window``: both within the topic's retention), from the dead-letter topic (within its
retention), from the parked dead letters (``replay parked``: however long an operator waits) or from a proxy's
spool (logs ingest did not acknowledge in time, as old as that outage is long). The first three are bounded
by Kafka's retention (7 days in docs/capacity.md); the default horizon, 35 days, is five times that and
leaves a month for parked letters and spools.
A copy older than the horizon is a *late* log: the ledger can no longer say whether it was counted, so the
writers refuse it (see :mod:`candela_ingest.writer.postgres`).

Exactness of ``organization_log_counters.stored_logs`` after a day is dropped: before dropping a day, the
pruner adds how many of its logs were still stored, per organization, to ``organization_stored_log_days``;
retention expires those days instead of ledger rows (:mod:`candela_ingest.writer.retention`). Both take the
advisory lock :data:`MAINTENANCE_LOCK_SQL`, so a day is never both rolled up and expired row by row.

Concurrency with the writers: the horizon row is read FOR SHARE in every counting transaction and moved by
an UPDATE, so a batch is counted entirely against one horizon; a writer never inserts into a day at or
past being dropped. Partitions for new days are created on demand by the writers (and three days ahead by
the pruner) through the migration's ``candela_create_ledger_partitions()``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from candela_ingest.writer import metrics
from candela_ingest.writer.errors import POSTGRES_FAILURES, StoreUnavailable

logger = logging.getLogger(__name__)

DEFAULT_HORIZON_DAYS = 35
"""Five times the 7-day topic retention docs/capacity.md plans with, plus a month for parked letters."""

HORIZON_SQL = "SELECT oldest_day FROM counted_requests_horizon"
HORIZON_FOR_SHARE_SQL = HORIZON_SQL + " FOR SHARE"
MAINTENANCE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('candela_ledger_maintenance'))"
"""Taken by the pruner's roll-up-and-drop and by retention's Postgres step: never both on one day at once."""

CREATE_PARTITIONS_SQL = "SELECT candela_create_ledger_partitions($1::date[])"

# Only when it moves (once a day): the UPDATE waits for the counting transactions that hold the row FOR
# SHARE, and new ones wait behind it.
_MOVE_HORIZON = """
UPDATE counted_requests_horizon SET oldest_day = $1::date, updated_at = now()
WHERE oldest_day IS NULL OR oldest_day < $1::date
"""
_HORIZON_ROW = "SELECT oldest_day, legacy_until FROM counted_requests_horizon"

_PARTITIONS = """
SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'counted_requests'::regclass ORDER BY c.relname
"""

# The partition's name comes from the catalog and matches _DAILY or is the legacy one (never user input).
_ROLL_UP = """
WITH stored AS (
    SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS stored_logs
    FROM {partition} WHERE stored GROUP BY 1, 2
), added AS (
    INSERT INTO organization_stored_log_days AS days (organization_id, day, stored_logs)
    SELECT organization_id, day, stored_logs FROM stored ORDER BY 1, 2
    ON CONFLICT (organization_id, day) DO UPDATE SET stored_logs = days.stored_logs + EXCLUDED.stored_logs
)
SELECT coalesce(sum(stored_logs), 0) FROM stored
"""

_DAILY = re.compile(r"^counted_requests_p(\d{8})$")
_LEGACY = "counted_requests_legacy"
_DAYS_AHEAD = 3
# A day's partition holds a day of logs (1e9 rows at the capacity plan's load): its roll-up takes minutes,
# far past the pool's command timeout; the legacy partition (the ledger from before migration 0007, all of its
# history) takes as long as one scan of it, hours for tens of TB. The deadline only stops a hung scan.
_ROLL_UP_TIMEOUT_S = 48 * 3600.0
# The DROP waits this long for the writers' transactions at a time (they queue behind it meanwhile), and
# tries again a few times before giving up the roll-up that precedes it.
_DROP_LOCK_TIMEOUT = "5s"
_DROP_ATTEMPTS = 12
_DROP_RETRY_PAUSE_S = 5.0


def day_start(day: date) -> datetime:
    """Midnight UTC starting ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def within_ledger(cutoff: datetime, oldest_day: date | None) -> datetime:
    """The retention cutoff Postgres can account for exactly: ``cutoff`` itself while it lies within the
    ledger, else the start of its UTC day (days past the horizon are kept per whole day, not per log)."""
    if oldest_day is None or cutoff >= day_start(oldest_day):
        return cutoff
    return datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)


class LedgerPartitions:
    """Makes sure the daily partitions a batch needs exist, asking Postgres once per day per process."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    async def ensure(self, connection: asyncpg.Connection, days: Iterable[date]) -> None:
        """Creates the partitions of ``days`` that are missing (outside any transaction: the creation takes
        a lock on counted_requests that must not be held while counting)."""
        missing = sorted(set(days) - self._known)
        if missing:
            await connection.fetchval(CREATE_PARTITIONS_SQL, missing)
            # Days before the horizon are remembered too: their logs are refused, never inserted.
            self._known.update(missing)


@dataclass(frozen=True)
class PruneOutcome:
    """What one pruning did."""

    oldest_day: date
    """The first day the ledger still holds (logs created before it are refused)."""
    dropped: tuple[str, ...]
    """The partitions dropped."""
    rolled_up_logs: int
    """Stored logs of the dropped partitions, moved to organization_stored_log_days."""


class LedgerPruner:
    """Moves the ledger horizon to ``horizon_days`` before today and drops the days past it."""

    def __init__(self, pool: asyncpg.Pool, horizon_days: int = DEFAULT_HORIZON_DAYS) -> None:
        self._pool = pool
        self._horizon_days = horizon_days

    async def prune(self, now: datetime) -> PruneOutcome:
        """One pruning at ``now``. Idempotent; an interrupted one is completed by the next."""
        today = now.astimezone(UTC).date()
        try:
            async with self._pool.acquire() as connection:
                # 1. The horizon moves first, in a statement of its own: once it commits no writer inserts
                # into the days before it, so they can be rolled up and dropped without stopping the writers.
                # It never moves back (a writer configured with a longer horizon cannot resurrect a day).
                await connection.execute(_MOVE_HORIZON, today - timedelta(days=self._horizon_days))
                horizon = await connection.fetchrow(_HORIZON_ROW)
                oldest_day: date = horizon["oldest_day"]
                legacy_until: date | None = horizon["legacy_until"]
                ahead = [today + timedelta(days=days) for days in range(_DAYS_AHEAD)]
                await connection.fetchval(CREATE_PARTITIONS_SQL, ahead)
                # 2. Each partition wholly before the horizon: roll up what it still stores, drop it.
                dropped: list[str] = []
                rolled_up = 0
                for row in await connection.fetch(_PARTITIONS):
                    name = str(row["relname"])
                    if not _wholly_before(name, oldest_day, legacy_until):
                        continue
                    rolled_up += await self._drop(connection, name)
                    dropped.append(name)
        except POSTGRES_FAILURES as err:
            raise StoreUnavailable(f"ledger pruning failed: {err!r}") from err
        if dropped:
            metrics.LEDGER_PARTITIONS_DROPPED.inc(len(dropped))
            logger.info(
                "ledger: dropped %s (before the horizon %s; %d stored logs kept per day for retention)",
                ", ".join(dropped),
                oldest_day,
                rolled_up,
            )
        return PruneOutcome(oldest_day, tuple(dropped), rolled_up)

    async def _drop(self, connection: asyncpg.Connection, partition: str) -> int:
        """Rolls ``partition``'s stored logs up per organization and day, and drops it, in one transaction."""
        async with connection.transaction():
            await connection.execute(MAINTENANCE_LOCK_SQL)
            rolled_up = int(
                await connection.fetchval(_ROLL_UP.format(partition=partition), timeout=_ROLL_UP_TIMEOUT_S) or 0
            )
            # DROP locks counted_requests for a moment: its wait is bounded, so writers never queue behind it
            # for long; it is tried again (a savepoint each) so that a busy moment does not waste the roll-up.
            await connection.execute(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
            for attempt in range(1, _DROP_ATTEMPTS + 1):
                try:
                    async with connection.transaction():
                        await connection.execute(f"DROP TABLE {partition}")
                except asyncpg.LockNotAvailableError:
                    if attempt == _DROP_ATTEMPTS:
                        raise
                    logger.info("ledger: %s is busy, dropping it again in %.0fs", partition, _DROP_RETRY_PAUSE_S)
                    await asyncio.sleep(_DROP_RETRY_PAUSE_S)
                else:
                    break
        return rolled_up


def _wholly_before(partition: str, oldest_day: date, legacy_until: date | None) -> bool:
    if partition == _LEGACY:
        return legacy_until is not None and legacy_until <= oldest_day
    match = _DAILY.match(partition)
    return match is not None and datetime.strptime(match[1], "%Y%m%d").date() < oldest_day
