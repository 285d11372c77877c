"""Which organizations exist: a cached Postgres lookup so ingest refuses logs of an unknown organization.

Ingest never waits on Postgres for long and never loses a log because of it: when Postgres cannot be
asked, the batch is accepted (the writers still count and limit it). Only an organization Postgres says
does not exist is refused. Known organizations are cached for ``ttl_s``, unknown ones for a short
``negative_ttl_s`` (an organization created a moment ago is accepted soon after).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable

import asyncpg

from candela_ingest.writer.errors import POSTGRES_FAILURES

logger = logging.getLogger(__name__)

_EXISTING = "SELECT id FROM organizations WHERE id = ANY($1::uuid[])"


class OrganizationDirectory:
    """Answers "which of these organizations do not exist?" from a TTL cache backed by Postgres."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}

    async def unknown(self, organization_ids: Iterable[str]) -> set[str]:
        """The ids (lower-case) Postgres says do not exist; empty when Postgres cannot be asked."""
        now = self._clock()
        wanted = {organization_id.lower() for organization_id in organization_ids}
        missing: set[str] = set()
        to_ask: list[str] = []
        for organization_id in wanted:
            cached = self._known.get(organization_id)
            if cached is not None and cached[1] > now:
                if not cached[0]:
                    missing.add(organization_id)
            else:
                to_ask.append(organization_id)
        if not to_ask:
            return missing
        try:
            rows = await self._pool.fetch(_EXISTING, [uuid.UUID(o) for o in to_ask], timeout=2)
        except POSTGRES_FAILURES as err:
            logger.warning("cannot check organizations in Postgres (%r); accepting the batch", err)
            return missing
        found = {str(row["id"]) for row in rows}
        for organization_id in to_ask:
            exists = organization_id in found
            self._known[organization_id] = (exists, now + (self._ttl_s if exists else self._negative_ttl_s))
            if not exists:
                missing.add(organization_id)
        if len(self._known) > 100_000:  # bounded: forget everything rather than grow without end
            self._known.clear()
        return missing
