"""Exactly-once usage counters and log limits in Postgres, in one transaction held open for the ClickHouse insert.

The transaction inserts the key of every request of the batch, (organization id, request id), into
``counted_requests`` (ON CONFLICT DO NOTHING RETURNING), then adds only the keys that came back, the ones
never counted before, to ``organization_usage_daily``. A redelivered or replayed message therefore never
counts twice, and a failed transaction leaves nothing behind to count twice on retry. Keys are pairs
because clients choose request ids: another organization's use of an id changes nothing here. A key counted
before with another creation time is a reuse of the id within the organization: the first log wins, the
reuse is neither counted nor stored (see :mod:`candela_ingest.writer.daily_usage`).

Limits (``organizations.max_stored_logs``): for each organization with a limit, its
``organization_log_counters`` row is locked and the newly counted requests are stored only while
``stored_logs`` stays within the limit (first counted, first stored; oldest first within a batch); the
others stay counted in usage but are marked
``stored = false`` and added to ``dropped_over_limit``. The ClickHouse insert of the batch's stored rows
runs inside the transaction, before it commits (the body of :meth:`PostgresUsageLedger.counting`): a row
ClickHouse rejects or cannot take rolls the counting back, so Postgres counts a request exactly when its
row (or its over-limit drop) is durable.
If the commit itself is lost after the insert, the retry inserts the same rows again (ReplacingMergeTree
collapses them) and counts them then.

The ledger is bounded (:mod:`candela_ingest.writer.ledger_horizon`): it holds the days since its horizon,
one partition per UTC day of creation, each keyed by (organization id, request id). A copy of a log has its
creation time, so it meets its first counting in the same partition. A reuse of the id on the same day
conflicts there too; on a neighbouring day it is found by a look at those two days' partitions (so a reuse
within 24 hours of the first log is always caught; one further apart is counted as a request of its own:
looking through every day of the horizon for every log would multiply the ledger's index reads by the
number of days).

A log created before the horizon (a late replay: ``replay parked`` of letters older than the horizon, a
window replayed from a topic kept longer) is *refused*: neither counted nor stored, with a metric
(``candela_writer_late_logs_total``) and a log line. Its ledger day is gone, so nothing here can say whether
it was counted, and every other choice risks counting it twice or breaking a limit:

- counting it would double count every late copy of a log that was counted (the common case: a replay);
- storing it uncounted would bring back a row retention deleted, or store a log its organization's
  ``max_stored_logs`` had dropped (the limit's ``stored_logs`` would no longer match the rows);
- asking ClickHouse does not settle it either: a log counted but not stored (over the limit, or expired)
  has no row there, exactly like one never counted.

A late log that was never counted (a letter parked for longer than the horizon) is therefore not counted:
the horizon is what an operator sets (``CANDELA_LEDGER_HORIZON_DAYS``) to be longer than any backlog they
will replay, and the metric and log line say when one was refused.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from candela_ingest.writer.daily_usage import (
    BatchRequests,
    DailyUsage,
    LedgerColumns,
    RequestKey,
    aggregate_usage,
    counted_oldest_first,
    ledger_columns,
)
from candela_ingest.writer.errors import POSTGRES_FAILURES, StoreRejected, StoreUnavailable
from candela_ingest.writer.ledger_horizon import HORIZON_FOR_SHARE_SQL, LedgerPartitions, day_start

# The batch goes in as three comma-joined texts and the newly counted keys come back as one: per batch of
# 20,000 logs, asyncpg's per-element array encoding and one returned row per request (uuid, uuid and
# timestamptz decoded into Python objects) cost the writer 11.7 us of CPU per log; this costs 1.1, and
# Postgres's own CPU is the same (canonical UUIDs and integers hold no comma nor space). unnest keeps the
# keys' sorted order, so concurrent writers lock ledger rows in one order. No conflict target: the arbiter is
# the key of the day's partition (a partitioned table has no key of its own without created_at in it).
_COUNT_REQUESTS = """
WITH counted AS (
    INSERT INTO counted_requests (request_id, organization_id, created_at)
    SELECT request_id, organization_id, timestamptz 'epoch' + created_at_us * interval '1 microsecond'
    FROM unnest(
        string_to_array($1, ',')::uuid[], string_to_array($2, ',')::uuid[], string_to_array($3, ',')::bigint[]
    ) AS t (request_id, organization_id, created_at_us)
    ON CONFLICT DO NOTHING
    RETURNING organization_id, request_id
)
SELECT coalesce(string_agg(organization_id::text || ' ' || request_id::text, ','), '') FROM counted
"""

_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"

_LIMITS = "SELECT id, max_stored_logs FROM organizations WHERE id = ANY($1::uuid[]) AND max_stored_logs IS NOT NULL"

_LOCK_COUNTERS = """
INSERT INTO organization_log_counters (organization_id)
SELECT * FROM unnest($1::uuid[]) ORDER BY 1
ON CONFLICT (organization_id) DO NOTHING
"""

_STORED_LOGS = """
SELECT organization_id, stored_logs FROM organization_log_counters
WHERE organization_id = ANY($1::uuid[]) ORDER BY organization_id FOR UPDATE
"""

# Every statement that looks keys up in the ledger is run once per UTC day of the keys, bounded to that day
# ($4, $5): Postgres then reads that day's partition alone (pruned when the statement starts), where a join
# over the whole partitioned table would plan, and may read, every day of the horizon for each batch.
_MARK_DROPPED = """
UPDATE counted_requests AS c SET stored = false
FROM unnest(
    string_to_array($1, ',')::uuid[], string_to_array($2, ',')::uuid[], string_to_array($3, ',')::bigint[]
) AS t (organization_id, request_id, created_at_us)
WHERE c.organization_id = t.organization_id AND c.request_id = t.request_id
    AND c.created_at = timestamptz 'epoch' + t.created_at_us * interval '1 microsecond'
    AND c.created_at >= $4 AND c.created_at < $5
"""

_ADD_COUNTERS = """
INSERT INTO organization_log_counters AS counters (organization_id, stored_logs, dropped_over_limit, last_dropped_at)
SELECT organization_id, stored, dropped, CASE WHEN dropped > 0 THEN now() END
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS t (organization_id, stored, dropped)
ORDER BY organization_id
ON CONFLICT (organization_id) DO UPDATE SET
    stored_logs = counters.stored_logs + EXCLUDED.stored_logs,
    dropped_over_limit = counters.dropped_over_limit + EXCLUDED.dropped_over_limit,
    last_dropped_at = coalesce(EXCLUDED.last_dropped_at, counters.last_dropped_at),
    updated_at = now()
"""

# Of the keys counted before: those not stored (over the limit back then, or expired since), and those whose
# ledger entry has another creation time (this log reuses the id on the same day: the first log of it was
# counted). Joined on the creation time too: a key that conflicted in its day's partition but has no entry
# with its creation time there is such a reuse.
_COUNTED_BEFORE = """
SELECT
    coalesce(string_agg(t.organization_id::text || ' ' || t.request_id::text, ',') FILTER (WHERE NOT c.stored), ''),
    coalesce(string_agg(t.organization_id::text || ' ' || t.request_id::text, ',') FILTER (WHERE c.stored IS NULL), '')
FROM unnest(
    string_to_array($1, ',')::uuid[], string_to_array($2, ',')::uuid[], string_to_array($3, ',')::bigint[]
) AS t (organization_id, request_id, created_at_us)
LEFT JOIN counted_requests AS c ON c.organization_id = t.organization_id AND c.request_id = t.request_id
    AND c.created_at = timestamptz 'epoch' + t.created_at_us * interval '1 microsecond'
    AND c.created_at >= $4 AND c.created_at < $5
"""

# Of keys just counted: those their organization counted on the day $3..$4 (the day before or after theirs:
# a reuse across midnight; the partition's key caught the same day).
_COUNTED_ON_DAY = """
SELECT coalesce(string_agg(t.organization_id::text || ' ' || t.request_id::text, ','), '')
FROM unnest(string_to_array($1, ',')::uuid[], string_to_array($2, ',')::uuid[]) AS t (organization_id, request_id)
WHERE EXISTS (
    SELECT FROM counted_requests AS c
    WHERE c.organization_id = t.organization_id AND c.request_id = t.request_id
        AND c.created_at >= $3 AND c.created_at < $4
)
"""

# The entries of keys just counted that turned out to be reuses (taken back: the first log of the id wins).
_TAKE_BACK = """
DELETE FROM counted_requests AS c
USING unnest(
    string_to_array($1, ',')::uuid[], string_to_array($2, ',')::uuid[], string_to_array($3, ',')::bigint[]
) AS t (organization_id, request_id, created_at_us)
WHERE c.organization_id = t.organization_id AND c.request_id = t.request_id
    AND c.created_at = timestamptz 'epoch' + t.created_at_us * interval '1 microsecond'
    AND c.created_at >= $4 AND c.created_at < $5
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


def _keys(joined: str) -> list[RequestKey]:
    """The request keys in a comma-joined text of "<organization id> <request id>" (Postgres's uuid::text is
    the canonical form)."""
    return [(key[:36], key[37:]) for key in joined.split(",")] if joined else []


def _joined(keys: Sequence[RequestKey]) -> tuple[str, str]:
    """The organization ids and the request ids of ``keys``, each comma-joined (the statements' unnest)."""
    return ",".join(key[0] for key in keys), ",".join(key[1] for key in keys)


_DAY_US = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _by_day(keys: Iterable[RequestKey], created_at_us: Mapping[RequestKey, int]) -> dict[int, list[RequestKey]]:
    """``keys`` per UTC day (days since the epoch) of their creation, each day's keys in their given order."""
    days: dict[int, list[RequestKey]] = {}
    for key in keys:
        days.setdefault(created_at_us[key] // _DAY_US, []).append(key)
    return days


def _day_bounds(day: int) -> tuple[datetime, datetime]:
    """The start of UTC day ``day`` (days since the epoch) and of the next."""
    start = _EPOCH + timedelta(days=day)
    return start, start + timedelta(days=1)


async def _per_day(
    connection: asyncpg.Connection,
    statement: str,
    keys: Sequence[RequestKey],
    created_at_us: Mapping[RequestKey, int],
) -> list[RequestKey]:
    """Runs ``statement`` (keys and creation times as $1..$3, the day's bounds as $4, $5) once per day of
    ``keys``; returns the keys the runs return (a comma-joined text each), if any."""
    found: list[RequestKey] = []
    for day, day_keys in sorted(_by_day(keys, created_at_us).items()):
        created = ",".join(str(created_at_us[key]) for key in day_keys)
        result = await connection.fetchval(statement, *_joined(day_keys), created, *_day_bounds(day))
        if isinstance(result, str):
            found.extend(_keys(result))
    return found


@dataclass(frozen=True)
class LedgerOutcome:
    """What one counting transaction did."""

    newly_counted: int
    """Requests counted in usage for the first time."""
    not_stored: frozenset[RequestKey]
    """Keys of the batch whose rows are not stored (over the limit, now or when first counted, or reused)."""
    reused: int = 0
    """Logs neither counted nor stored because their organization logged their request id before, with
    another creation time (the first log wins)."""
    late: frozenset[RequestKey] = frozenset()
    """Keys of the batch neither counted nor stored because their logs were created before the ledger
    horizon (also in ``not_stored``)."""


class PostgresUsageLedger:
    """Counts each request once in the per-organization usage and log counters, enforcing max_stored_logs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._partitions = LedgerPartitions()

    @asynccontextmanager
    async def counting(self, batch: BatchRequests) -> AsyncIterator[LedgerOutcome]:
        """Counts the requests of ``batch`` not counted before, in a transaction that stays open for the
        body of the ``async with`` (the ClickHouse insert of the rows to store) and commits when it ends
        without an error; an error in it rolls the counting back. Yields the outcome (``not_stored``: the
        keys whose rows must not be stored)."""
        if not batch.positions:
            yield LedgerOutcome(0, frozenset())
            return
        ledger = ledger_columns(batch)
        try:
            async with self._pool.acquire() as connection:
                await self._partitions.ensure(connection, ledger.days())
                async with connection.transaction():
                    # The lookups below are prepared statements: after five runs Postgres may switch to a plan
                    # made without the day's bounds and the batch's size, and for the partitioned ledger that plan
                    # scanned the whole day once per key (measured: 30 s of CPU for a batch of 20,000 copies,
                    # 0.1 s planned with the values). Each run is planned with its values (~1 ms) instead.
                    await connection.execute(_CUSTOM_PLANS)
                    # The horizon stays where it is until this transaction ends (the pruner moves it with an
                    # UPDATE): no partition this batch needs is dropped while it is being counted.
                    oldest_day = await connection.fetchval(HORIZON_FOR_SHARE_SQL)
                    late: list[RequestKey] = []
                    if oldest_day is not None:
                        since_us = int(day_start(oldest_day).timestamp()) * 1_000_000
                        ledger, late = ledger.created_since(since_us)
                    newly: list[RequestKey] = []
                    reused: list[RequestKey] = []
                    if ledger.request_ids:
                        newly, reused = await self._count(connection, ledger)
                    usage = aggregate_usage(batch, newly)
                    dropped = await self._apply_limits(connection, batch, newly, usage)
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
                    # Requests counted before (a redelivery or replay) keep the storage decision made back then;
                    # a reuse of a counted request id is not stored (the first log wins); a late log is not
                    # stored either (see the module's docstring).
                    not_stored = set(dropped)
                    not_stored.update(reused, late)
                    if len(newly) + len(reused) < len(ledger.request_ids):
                        earlier, reused_same_day = await self._counted_before(
                            connection, ledger, frozenset(newly), frozenset(reused)
                        )
                        not_stored.update(earlier, reused_same_day)
                        reused.extend(reused_same_day)
                    # The caller's insert runs here: a store error raised in it rolls the whole transaction back.
                    yield LedgerOutcome(
                        len(newly), frozenset(not_stored), len(reused) + len(batch.reused), frozenset(late)
                    )
        except POSTGRES_FAILURES as err:
            raise classify_postgres_error(err) from err

    async def _count(
        self, connection: asyncpg.Connection, ledger: LedgerColumns
    ) -> tuple[list[RequestKey], list[RequestKey]]:
        """Enters the keys of ``ledger`` not counted before; returns (the newly counted ones, those of them
        taken back as reuses of an id counted on the day before or after)."""
        created_at_us = ",".join(map(str, ledger.created_at_us))
        newly = _keys(
            await connection.fetchval(
                _COUNT_REQUESTS, ",".join(ledger.request_ids), ",".join(ledger.organization_ids), created_at_us
            )
        )
        if not newly:
            return [], []
        created = ledger.created_at_of()
        reused: list[RequestKey] = []
        for day, day_keys in sorted(_by_day(newly, created).items()):
            for neighbour in (day - 1, day + 1):
                found = await connection.fetchval(_COUNTED_ON_DAY, *_joined(day_keys), *_day_bounds(neighbour))
                reused.extend(_keys(found))
        if reused:
            taken_back = frozenset(reused)
            reused = sorted(taken_back)
            await _per_day(connection, _TAKE_BACK, reused, created)
            newly = [key for key in newly if key not in taken_back]
        return newly, reused

    async def _counted_before(
        self,
        connection: asyncpg.Connection,
        ledger: LedgerColumns,
        newly: frozenset[RequestKey],
        reused: frozenset[RequestKey],
    ) -> tuple[list[RequestKey], list[RequestKey]]:
        """Of the batch's keys counted before (neither in ``newly`` nor already found ``reused``): (those not
        stored, those counted with another creation time on the same day)."""
        earlier = [key for key in ledger.request_keys() if key not in newly and key not in reused]
        created = ledger.created_at_of()
        not_stored: list[RequestKey] = []
        reused_same_day: list[RequestKey] = []
        for day, day_keys in sorted(_by_day(earlier, created).items()):
            day_not_stored, day_reused = await connection.fetchrow(
                _COUNTED_BEFORE,
                *_joined(day_keys),
                ",".join(str(created[key]) for key in day_keys),
                *_day_bounds(day),
            )
            not_stored.extend(_keys(day_not_stored))
            reused_same_day.extend(_keys(day_reused))
        return not_stored, reused_same_day

    async def _apply_limits(
        self,
        connection: asyncpg.Connection,
        batch: BatchRequests,
        counted: Sequence[RequestKey],
        usage: Sequence[DailyUsage],
    ) -> list[RequestKey]:
        """Marks the newly ``counted`` requests beyond their organization's limit as not stored (returned);
        updates the counters. ``usage`` is what ``counted`` adds per organization and day."""
        if not counted:
            return []
        counted_by_organization: Counter[uuid.UUID] = Counter()
        for day in usage:
            counted_by_organization[day.organization_id] += day.request_count
        organizations = sorted(counted_by_organization)
        limits = {row["id"]: int(row["max_stored_logs"]) for row in await connection.fetch(_LIMITS, organizations)}
        dropped_ids: list[RequestKey] = []
        dropped_by_organization: dict[uuid.UUID, int] = {}
        if limits:
            limited = sorted(limits)
            await connection.execute(_LOCK_COUNTERS, limited)
            stored_now = {
                row["organization_id"]: int(row["stored_logs"]) for row in await connection.fetch(_STORED_LOGS, limited)
            }
            for organization_id, newest_last in counted_oldest_first(batch, counted, frozenset(limited)).items():
                room = max(limits[organization_id] - stored_now.get(organization_id, 0), 0)
                # The oldest requests get the room left; the newest are the ones dropped.
                over = newest_last[room:]
                dropped_ids.extend(over)
                dropped_by_organization[organization_id] = len(over)
        if dropped_ids:
            created = batch.columns["created_at_us"]
            await _per_day(
                connection, _MARK_DROPPED, dropped_ids, {key: created[batch.positions[key]] for key in dropped_ids}
            )
        dropped = [dropped_by_organization.get(o, 0) for o in organizations]
        stored = [counted_by_organization[o] - d for o, d in zip(organizations, dropped, strict=True)]
        await connection.execute(_ADD_COUNTERS, organizations, stored, dropped)
        return dropped_ids

    async def check(self) -> None:
        """Raises StoreUnavailable unless Postgres answers and the writers' tables exist (readiness)."""
        try:
            await self._pool.fetchval("SELECT count(*) FROM counted_requests WHERE NOT stored AND false")
            await self._pool.fetchval("SELECT count(*) FROM organization_usage_daily WHERE false")
            await self._pool.fetchval("SELECT count(*) FROM organization_log_counters WHERE false")
            await self._pool.fetchval("SELECT count(*) FROM parked_dead_letters WHERE false")
            await self._pool.fetchval("SELECT count(*) FROM organization_stored_log_days WHERE false")
            await self._pool.fetchval("SELECT count(*) FROM counted_requests_horizon WHERE false")
        except POSTGRES_FAILURES as err:
            raise StoreUnavailable(f"Postgres is not ready: {err!r}") from err
