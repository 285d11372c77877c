"""Per-organization daily usage: what a batch of newly counted requests adds to the counters.

The writers count a request once, ever: its id goes into ``counted_requests`` and only the requests that
were not there before are aggregated here and added to ``organization_usage_daily``, in the same
transaction. A day is the UTC date of the request's ``created_at``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from itertools import compress

from candela_ingest.rows import REQUEST_COLUMNS, RequestColumns


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


_ZERO = Decimal(0)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400 * 1_000_000
_ORGANIZATION = REQUEST_COLUMNS.index("organization_id")
_REQUEST = REQUEST_COLUMNS.index("request_id")
_CREATED_AT_US = REQUEST_COLUMNS.index("created_at_us")
_PROMPT_TOKENS = REQUEST_COLUMNS.index("prompt_tokens")
_COMPLETION_TOKENS = REQUEST_COLUMNS.index("completion_tokens")
_COST = REQUEST_COLUMNS.index("cost_usd")
_PRICED = REQUEST_COLUMNS.index("priced")


@dataclass(frozen=True)
class BatchRequests:
    """A batch's rows (:func:`~candela_ingest.rows.request_columns`) and where each request's row is.

    The ledger reads the same columns the ClickHouse insert sends, so each field of a log is read from
    its message once per batch, not once per store.
    """

    columns: RequestColumns
    positions: dict[str, int]
    """Request id in canonical (lower-case) form -> the position of its row; the later row of a pair."""

    @classmethod
    def of(cls, columns: RequestColumns) -> BatchRequests:
        """The batch of ``columns``, whose request ids are validated UUIDs (any case)."""
        return cls(columns, {request_id.lower(): index for index, request_id in enumerate(columns[_REQUEST])})

    def without(self, request_ids: frozenset[str]) -> RequestColumns:
        """The columns without the rows of ``request_ids`` (canonical ids)."""
        if not request_ids:
            return self.columns
        keep = [request_id.lower() not in request_ids for request_id in self.columns[_REQUEST]]
        return [list(compress(column, keep)) for column in self.columns]


@dataclass(frozen=True)
class LedgerColumns:
    """A batch's ledger rows as the parallel arrays the counting statement unnests, sorted by request id."""

    request_ids: list[str]
    organization_ids: list[str]
    created_at_us: list[int]
    """Microseconds since the epoch (Postgres makes the timestamps: exact, and no datetime per log here)."""


def ledger_columns(batch: BatchRequests) -> LedgerColumns:
    """The ledger rows of ``batch``, one per request, sorted by request id.

    Sorted so that concurrent writers take row locks in one order: canonical UUID strings (fixed-width,
    lower-case hex) sort exactly as the UUIDs do.
    """
    request_ids = sorted(batch.positions)
    positions = [batch.positions[request_id] for request_id in request_ids]
    organizations = batch.columns[_ORGANIZATION]
    created = batch.columns[_CREATED_AT_US]
    return LedgerColumns(
        request_ids=request_ids,
        organization_ids=[organizations[index].lower() for index in positions],
        created_at_us=[created[index] for index in positions],
    )


def counted_oldest_first(
    batch: BatchRequests, request_ids: Iterable[str], organizations: frozenset[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    """The requests ``request_ids`` of ``batch`` that belong to ``organizations``, per organization, oldest
    first (by creation time, then id): the order in which an organization's room under its log limit is
    given out."""
    organization_column, created = batch.columns[_ORGANIZATION], batch.columns[_CREATED_AT_US]
    wanted = {str(organization): organization for organization in organizations}
    by_organization: dict[uuid.UUID, list[tuple[int, str]]] = {}
    for request_id in request_ids:
        index = batch.positions[request_id]
        organization = wanted.get(organization_column[index].lower())
        if organization is not None:
            by_organization.setdefault(organization, []).append((created[index], request_id))
    return {
        organization: [request_id for _, request_id in sorted(requests)]
        for organization, requests in by_organization.items()
    }


def aggregate_usage(batch: BatchRequests, request_ids: Iterable[str]) -> list[DailyUsage]:
    """Sums the requests ``request_ids`` of ``batch`` (each counted once, by the caller) per organization
    and UTC day.

    The result is sorted by (organization, day), so concurrent writers lock counter rows in one order
    and cannot deadlock each other.
    """
    columns = batch.columns
    organizations, created = columns[_ORGANIZATION], columns[_CREATED_AT_US]
    prompt, completion = columns[_PROMPT_TOKENS], columns[_COMPLETION_TOKENS]
    costs, priced = columns[_COST], columns[_PRICED]
    totals: dict[tuple[str, int], list[int]] = {}
    cost_totals: dict[tuple[str, int], Decimal] = {}
    for request_id in request_ids:
        index = batch.positions[request_id]
        key = (organizations[index].lower(), created[index] // _DAY_US)
        counters = totals.get(key)
        if counters is None:
            counters = totals[key] = [0, 0, 0, 0]
            cost_totals[key] = _ZERO
        counters[0] += 1
        counters[1] += prompt[index]
        counters[2] += completion[index]
        if priced[index]:
            cost_totals[key] += costs[index]
        else:
            counters[3] += 1
    return [
        DailyUsage(
            organization_id=uuid.UUID(organization_id),
            day=date.fromordinal(_EPOCH_ORDINAL + day),
            request_count=counters[0],
            prompt_tokens=counters[1],
            completion_tokens=counters[2],
            cost_usd=cost_totals[organization_id, day],
            unpriced_count=counters[3],
        )
        for (organization_id, day), counters in sorted(totals.items())
    ]
