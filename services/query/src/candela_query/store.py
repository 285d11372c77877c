"""The request store: reads of the ClickHouse ``requests`` table, always scoped to one organization.

:class:`RequestStore` is what the servicer holds; the work is done in three rooms, each with its own notes:

- :mod:`candela_query.row_reads`: pages and point reads (a request, a session), each row its newest version;
- :mod:`candela_query.aggregates`: metrics and score averages per group of requests;
- :mod:`candela_query.copy_free_proofs`: the remembered proofs that days hold no copies, which let
  aggregates over a span (metrics and score averages) skip FINAL.

All three reach tables only through :class:`~candela_query.scope.Scope`, the single place the caller's
organization enters the SQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from candela_query.aggregates import Aggregates, MetricsRow
from candela_query.clickhouse import ClusterMember
from candela_query.copy_free_proofs import CopyFreeProofs, Site
from candela_query.cursor import Position
from candela_query.row_reads import Page, RowReads, StoredRequest
from candela_query.scope import Scope, SqlRunner
from candela_query.scores import ScoreReads


class RequestStore:
    """Queries over logged requests for one organization at a time.

    ``final=False`` drops the duplicate handling of aggregates (no FINAL, no proofs): only for benchmarks
    pricing it. ``clock`` (epoch seconds) decides which days are closed enough to record proofs of. The
    store remembers the day fingerprints of the table's parts and the proven days of the organizations
    queried last (REMEMBERED_ORGANIZATIONS): share one store per process. ``copy_free_proofs=False``
    reads every aggregate with FINAL. In cluster mode (``runner`` reads the Distributed tables), the
    proofs need ``cluster_members``, every member of the cluster read directly: the rows are in the
    members' parts, and each replica of a shard must be proven (see candela_query.copy_free_proofs).
    """

    def __init__(
        self,
        runner: SqlRunner,
        final: bool = True,
        clock: Callable[[], float] = time.time,
        *,
        copy_free_proofs: bool = True,
        cluster_members: list[ClusterMember] | None = None,
    ) -> None:
        scope = Scope(final)
        self._reads = RowReads(runner, scope)
        sites = (
            [Site(member.address, member.shard, member.reader, "requests_local") for member in cluster_members]
            if cluster_members is not None
            else None
        )
        proofs = CopyFreeProofs(runner, scope, clock, sites) if copy_free_proofs else None
        self._aggregates = Aggregates(runner, scope, proofs)
        self._scores = ScoreReads(runner, scope)

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
        """Up to ``limit`` rows matching ``where``, sorted, strictly after ``after`` (:meth:`RowReads.page`)."""
        return await self._reads.page(organization_id, where, params, sort_field, ascending, after, limit)

    async def get(self, organization_id: str, request_id: uuid.UUID) -> StoredRequest | None:
        """One request of the organization, or None (:meth:`RowReads.get`)."""
        return await self._reads.get(organization_id, request_id)

    async def rows(self, organization_id: str, where: str, params: dict[str, Any], limit: int) -> list[StoredRequest]:
        """Every row matching ``where`` (at most ``limit``), oldest first (:meth:`RowReads.rows`)."""
        return await self._reads.rows(organization_id, where, params, limit)

    async def session_requests(self, organization_id: str, session_id: str, limit: int) -> list[StoredRequest]:
        """A session's requests, oldest first (:meth:`RowReads.session_requests`)."""
        return await self._reads.session_requests(organization_id, session_id, limit)

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
        """Metrics per group of ``group_by`` SQL expressions (:meth:`Aggregates.metrics`)."""
        return await self._aggregates.metrics(organization_id, where, params, group_by, limit, order, label, span)

    async def scores(self, organization_id: str, request_ids: list[str]) -> dict[str, dict[str, float]]:
        """The newest scores of ``request_ids`` by request id and name (:meth:`ScoreReads.of_requests`)."""
        return await self._scores.of_requests(organization_id, request_ids)

    async def score_averages(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        group_by: list[str],
        limit: int,
        span: tuple[int, int] | None = None,
    ) -> dict[tuple[Any, ...], dict[str, tuple[float, int]]]:
        """Mean and count of each score per group (:meth:`Aggregates.score_averages`)."""
        return await self._aggregates.score_averages(organization_id, where, params, group_by, limit, span)
