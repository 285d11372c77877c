"""The organization's usage against its limits, from Postgres (exact counters kept by the writers).

Daily usage comes from ``organization_usage_daily``; the limits from ``organizations``. Counters are
every integer column of ``organization_usage_daily`` summed over all days, plus every integer column of
``organization_log_counters`` (the writers' stored / dropped-over-limit / expired log counts) when that
table exists. Both are found from the catalog, so a counter the writers add later shows up without a
change here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import asyncpg

_INTEGER_TYPES = ("bigint", "integer", "smallint")
_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True)
class DailyUsageRow:
    """One day of usage."""

    day: date
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    unpriced_count: int


@dataclass(frozen=True)
class OrganizationUsage:
    """Usage of one organization: recent days, its limits, and all-time counters."""

    days: list[DailyUsageRow]
    max_stored_logs: int | None
    retention_days: int | None
    oldest_day: date | None
    counters: dict[str, int]


class UsageReader:
    """Reads usage from Postgres through a small asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> UsageReader:
        """A reader with its own pool (closed by :meth:`close`)."""
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=10)
        return cls(pool)

    async def close(self) -> None:
        """Closes the pool."""
        await self._pool.close()

    async def usage(self, organization_id: str, days: int, today: date) -> OrganizationUsage | None:
        """Usage of the organization over the last ``days`` days up to ``today``; None if it does not exist."""
        org = uuid.UUID(organization_id)
        async with self._pool.acquire() as connection:
            limits = await connection.fetchrow(
                "SELECT max_stored_logs, retention_days FROM organizations WHERE id = $1", org
            )
            if limits is None:
                return None
            rows = await connection.fetch(
                "SELECT day, request_count, prompt_tokens, completion_tokens, cost_usd, unpriced_count"
                " FROM organization_usage_daily WHERE organization_id = $1 AND day > $2::date - $3::int"
                " AND day <= $2::date ORDER BY day",
                org,
                today,
                days,
            )
            columns = await connection.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'organization_usage_daily' AND data_type = ANY($1::text[])"
                " ORDER BY ordinal_position",
                list(_INTEGER_TYPES),
            )
            names = [row["column_name"] for row in columns if set(row["column_name"]) <= _IDENTIFIER_CHARS]
            log_counters = await self._log_counters(connection, org)
            sums = ", ".join(f"COALESCE(sum({name}), 0)::bigint AS {name}" for name in names)
            totals = await connection.fetchrow(
                f"SELECT min(day) AS oldest_day{', ' + sums if sums else ''}"
                " FROM organization_usage_daily WHERE organization_id = $1",
                org,
            )
        assert totals is not None
        return OrganizationUsage(
            days=[
                DailyUsageRow(
                    day=row["day"],
                    request_count=row["request_count"],
                    prompt_tokens=row["prompt_tokens"],
                    completion_tokens=row["completion_tokens"],
                    cost_usd=row["cost_usd"],
                    unpriced_count=row["unpriced_count"],
                )
                for row in rows
            ],
            max_stored_logs=limits["max_stored_logs"],
            retention_days=limits["retention_days"],
            oldest_day=totals["oldest_day"],
            counters={**{name: int(totals[name]) for name in names}, **log_counters},
        )

    @staticmethod
    async def _log_counters(connection: asyncpg.Connection, org: uuid.UUID) -> dict[str, int]:
        """The integer columns of organization_log_counters for ``org`` (empty when the table is absent)."""
        columns = await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = 'organization_log_counters' AND data_type = ANY($1::text[])"
            " ORDER BY ordinal_position",
            list(_INTEGER_TYPES),
        )
        names = [row["column_name"] for row in columns if set(row["column_name"]) <= _IDENTIFIER_CHARS]
        if not names:
            return {}
        row = await connection.fetchrow(
            f"SELECT {', '.join(names)} FROM organization_log_counters WHERE organization_id = $1", org
        )
        return {name: int(row[name]) if row is not None else 0 for name in names}
