"""Per-organization daily usage: what a batch of newly counted requests adds to the counters.

The writers count a request once: its key, (organization id, request id), goes into ``counted_requests`` and
only the requests that were not there before are aggregated here and added to ``organization_usage_daily``, in
the same transaction. A day is the UTC date of the request's ``created_at``. The ledger remembers the days
since its horizon; a log created before it is never counted (:mod:`candela_ingest.writer.postgres`).

Request ids are chosen by clients (``Candela-Request-Id``), so two organizations may use the same one: every
idempotency key is therefore the pair, never the id alone. Within one organization the first log of an id
wins: a later log with that id but another creation time is a reuse, neither counted nor stored (copies of
one log, from redeliveries and retries, share its creation time and stay idempotent).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from candela_ingest.writer.rows import RequestColumns


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


RequestKey = tuple[str, str]
"""(organization id, request id), both canonical (lower-case): what identifies a request everywhere."""


@dataclass(frozen=True)
class BatchRequests:
    """A batch's rows (:func:`~candela_ingest.writer.rows.request_columns`) and where each request's row is.

    The ledger reads the same columns the ClickHouse insert sends, so each field of a log is read from
    its message once per batch, not once per store.
    """

    columns: RequestColumns
    positions: dict[RequestKey, int]
    """Each request's key -> the position of its row: among copies of the first log of the key in the
    batch (same creation time), the last, as ClickHouse keeps the last of rows with equal versions."""
    reused: tuple[int, ...] = ()
    """Positions of rows that reuse a key of an earlier row of the batch with another creation time: never
    stored nor counted (the first log of a request id wins)."""

    @classmethod
    def of(cls, columns: RequestColumns) -> BatchRequests:
        """The batch of ``columns``, whose organization and request ids are validated UUIDs (any case)."""
        keys = list(zip(map(str.lower, columns["organization_id"]), map(str.lower, columns["request_id"]), strict=True))
        positions = dict(zip(keys, range(len(keys)), strict=True))
        if len(positions) == len(keys):
            return cls(columns, positions)  # the common case: no key twice in the batch
        created = columns["created_at_us"]
        first_created: dict[RequestKey, int] = {}
        reused: list[int] = []
        for index, key in enumerate(keys):
            if first_created.setdefault(key, created[index]) == created[index]:
                positions[key] = index
            else:
                reused.append(index)
        return cls(columns, positions, tuple(reused))

    def without(self, keys: frozenset[RequestKey]) -> RequestColumns:
        """The columns without the rows of ``keys`` nor the reused rows: the rows to store."""
        if not keys and not self.reused:
            return self.columns
        organizations, requests = self.columns["organization_id"], self.columns["request_id"]
        keep = [
            (organization.lower(), request_id.lower()) not in keys
            for organization, request_id in zip(organizations, requests, strict=True)
        ]
        for index in self.reused:
            keep[index] = False
        return self.columns.where(keep)


@dataclass(frozen=True)
class LedgerColumns:
    """A batch's ledger rows as the parallel arrays the counting statement unnests, sorted by key."""

    request_ids: list[str]
    organization_ids: list[str]
    created_at_us: list[int]
    """Microseconds since the epoch (Postgres makes the timestamps: exact, and no datetime per log here)."""

    def created_since(self, since_us: int) -> tuple[LedgerColumns, list[RequestKey]]:
        """(the rows created at or after ``since_us``, the keys of the others), in the same order."""
        if not self.created_at_us or min(self.created_at_us) >= since_us:
            return self, []
        kept = LedgerColumns([], [], [])
        before: list[RequestKey] = []
        for request_id, organization_id, created in zip(
            self.request_ids, self.organization_ids, self.created_at_us, strict=True
        ):
            if created >= since_us:
                kept.request_ids.append(request_id)
                kept.organization_ids.append(organization_id)
                kept.created_at_us.append(created)
            else:
                before.append((organization_id, request_id))
        return kept, before

    def request_keys(self) -> list[RequestKey]:
        """The rows' keys, in order."""
        return list(zip(self.organization_ids, self.request_ids, strict=True))

    def created_at_of(self) -> dict[RequestKey, int]:
        """Each row's creation time (microseconds since the epoch) by its key."""
        return dict(zip(self.request_keys(), self.created_at_us, strict=True))

    def days(self) -> set[date]:
        """The UTC days the rows were created on (the ledger's partitions they go to)."""
        days = {created // _DAY_US for created in self.created_at_us}
        return {date.fromordinal(_EPOCH_ORDINAL + day) for day in days}


def ledger_columns(batch: BatchRequests) -> LedgerColumns:
    """The ledger rows of ``batch``, one per request, sorted by (organization id, request id).

    Sorted so that concurrent writers take row locks in one order (the ledger's primary key order):
    canonical UUID strings (fixed-width, lower-case hex) sort exactly as the UUIDs do.
    """
    keys = sorted(batch.positions)
    created = batch.columns["created_at_us"]
    return LedgerColumns(
        request_ids=[request_id for _, request_id in keys],
        organization_ids=[organization_id for organization_id, _ in keys],
        created_at_us=[created[batch.positions[key]] for key in keys],
    )


def counted_oldest_first(
    batch: BatchRequests, keys: Iterable[RequestKey], organizations: frozenset[uuid.UUID]
) -> dict[uuid.UUID, list[RequestKey]]:
    """The requests ``keys`` of ``batch`` that belong to ``organizations``, per organization, oldest first
    (by creation time, then id): the order in which an organization's room under its log limit is given
    out."""
    created = batch.columns["created_at_us"]
    wanted = {str(organization): organization for organization in organizations}
    by_organization: dict[uuid.UUID, list[tuple[int, RequestKey]]] = {}
    for key in keys:
        organization = wanted.get(key[0])
        if organization is not None:
            by_organization.setdefault(organization, []).append((created[batch.positions[key]], key))
    return {organization: [key for _, key in sorted(requests)] for organization, requests in by_organization.items()}


def aggregate_usage(batch: BatchRequests, keys: Iterable[RequestKey]) -> list[DailyUsage]:
    """Sums the requests ``keys`` of ``batch`` (each counted once, by the caller) per organization and UTC
    day.

    The result is sorted by (organization, day), so concurrent writers lock counter rows in one order
    and cannot deadlock each other.
    """
    columns = batch.columns
    created = columns["created_at_us"]
    prompt, completion = columns["prompt_tokens"], columns["completion_tokens"]
    costs, priced = columns["cost_usd"], columns["priced"]
    totals: dict[tuple[str, int], list[int]] = {}
    cost_totals: dict[tuple[str, int], Decimal] = {}
    for request in keys:
        index = batch.positions[request]
        key = (request[0], created[index] // _DAY_US)
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
