"""Per-organization daily usage: what a batch of newly counted requests adds to the counters.

The writers count a request once, ever: its id goes into ``counted_requests`` and only the requests that
were not there before are aggregated here and added to ``organization_usage_daily``, in the same
transaction. A day is the UTC date of the request's ``created_at``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from candela.logs.v1 import log_record_pb2
from candela_ingest.rows import exact_cost


@dataclass(frozen=True)
class DailyUsage:
    """What to add to one organization's counters for one day."""

    organization_id: uuid.UUID
    day: date
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    unpriced_count: int


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def created_at(record: log_record_pb2.LogRecord) -> datetime:
    """The record's creation time, aware, in UTC (microsecond precision; epoch plus a delta is the
    cheapest exact construction, and this runs for every log the writers count)."""
    stamp = record.created_at
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


@dataclass(frozen=True)
class LedgerColumns:
    """A batch's ledger rows as the parallel arrays the counting statement unnests, sorted by request id."""

    request_ids: list[str]
    organization_ids: list[str]
    created_ats: list[datetime]


def unique_by_canonical_id(records: Iterable[log_record_pb2.LogRecord]) -> dict[str, log_record_pb2.LogRecord]:
    """Validated records keyed by their request id in canonical (lower-case) form; the later one of a pair.

    Strings, not parsed UUIDs: this runs for every log the writers store, and Postgres takes the text.
    """
    return {record.request_id.lower(): record for record in records}


def ledger_columns(unique: Mapping[str, log_record_pb2.LogRecord]) -> LedgerColumns:
    """The ledger rows of ``unique`` (from :func:`unique_by_canonical_id`), sorted by request id.

    Sorted so that concurrent writers take row locks in one order: canonical UUID strings (fixed-width,
    lower-case hex) sort exactly as the UUIDs do.
    """
    request_ids = sorted(unique)
    records = [unique[request_id] for request_id in request_ids]
    return LedgerColumns(
        request_ids=request_ids,
        organization_ids=[record.organization_id.lower() for record in records],
        created_ats=[created_at(record) for record in records],
    )


def aggregate_usage(records: Iterable[log_record_pb2.LogRecord]) -> list[DailyUsage]:
    """Sums ``records`` (each counted once, by the caller) per organization and UTC day.

    The result is sorted by (organization, day), so concurrent writers lock counter rows in one order
    and cannot deadlock each other.
    """
    totals: dict[tuple[uuid.UUID, date], list[int]] = {}
    costs: dict[tuple[uuid.UUID, date], Decimal] = {}
    # Parsed once per organization and day: this loop runs for every log the writers count.
    organizations: dict[str, uuid.UUID] = {}
    days: dict[int, date] = {}
    for record in records:
        organization_id = organizations.get(record.organization_id)
        if organization_id is None:
            organization_id = organizations[record.organization_id] = uuid.UUID(record.organization_id)
        day_number = record.created_at.seconds // 86_400
        day = days.get(day_number)
        if day is None:
            day = days[day_number] = date.fromordinal(_EPOCH_ORDINAL + day_number)
        key = (organization_id, day)
        counters = totals.setdefault(key, [0, 0, 0, 0])
        counters[0] += 1
        counters[1] += record.usage.prompt_tokens
        counters[2] += record.usage.completion_tokens
        if record.HasField("cost_usd"):
            costs[key] = costs.get(key, Decimal(0)) + exact_cost(record.cost_usd)
        else:
            counters[3] += 1
    return [
        DailyUsage(
            organization_id=organization_id,
            day=day,
            request_count=counters[0],
            prompt_tokens=counters[1],
            completion_tokens=counters[2],
            cost_usd=costs.get((organization_id, day), Decimal(0)),
            unpriced_count=counters[3],
        )
        for (organization_id, day), counters in sorted(totals.items())
    ]
