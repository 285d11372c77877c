"""The one way a read reaches a ClickHouse table: through the caller's organization, values bound by a driver.

Every query's FROM/WHERE comes from :class:`Scope`, the single place the caller's organization enters the
SQL, so no query can forget it. Values are bound by the driver, never formatted into the SQL text.

The SQL selects only portable values (strings, integers, arrays): ids and decimals through toString(),
so the same statements give the same Python values on ClickHouse 18.16 (clickhouse-driver) and on modern
ClickHouse (chDB); see :class:`SqlRunner`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol


class SqlRunner(Protocol):
    """Runs one SELECT with ``%(name)s`` parameters bound by a driver; rows as tuples of plain values."""

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``."""
        ...


@dataclass(frozen=True)
class Scope:
    """The FROM/WHERE of every query; ``final=False`` reads ``requests`` without FINAL (benchmarks only)."""

    final: bool = True

    def __call__(
        self,
        organization_id: str,
        where: str,
        params: dict[str, Any],
        table: str = "requests",
        prewhere: str = "",
        join: str = "",
    ) -> str:
        """``FROM requests FINAL [<join>] [PREWHERE <prewhere>] WHERE <organization> AND (<where>)``: the only
        way queries reach a table. ``prewhere`` narrows the rows before the other columns are read; ``join``
        (e.g. ``ALL INNER JOIN (<subquery>) USING request_id``) may use ``%(organization_id)s`` too."""
        params["organization_id"] = str(uuid.UUID(organization_id))
        source = {
            "requests": "requests FINAL" if self.final else "requests",
            # Every stored version of each row: callers keep the newest themselves (see RowReads._latest).
            "request_versions": "requests",
            # Every stored version on one member of a cluster, read directly (CopyFreeProofs' part counts).
            "local_request_versions": "requests_local",
            "request_sessions": "request_sessions",
            "request_times": "request_times",
            "request_dedup_checks": "request_dedup_checks",
            # Every stored value of each score: callers keep the newest with argMax (candela_query.scores).
            "request_scores": "request_scores",
        }[table]
        narrowed = f" PREWHERE {prewhere}" if prewhere else ""
        joined = f" {join}" if join else ""
        return f"FROM {source}{joined}{narrowed} WHERE organization_id = toUUID(%(organization_id)s) AND ({where})"
