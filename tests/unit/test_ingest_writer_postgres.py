"""The usage ledger's handling of a Postgres connection that fails under it (no server: a fake pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from candela_ingest.writer.postgres import PostgresUsageLedger
from tests.unit.test_ingest_writer_batch import FakeDeadLetters, FakeRows, _log, _messages, _writer

pytestmark = pytest.mark.unit


class AnsweringConnection:
    """Answers the counting transaction's statements as an empty ledger would (every key new)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, statement: str, *args: Any) -> str:
        self.statements.append(statement)
        return "OK"

    async def fetch(self, statement: str, *args: Any) -> list[Any]:
        self.statements.append(statement)
        return []

    async def fetchrow(self, statement: str, *args: Any) -> tuple[str, str]:
        self.statements.append(statement)
        return "", ""

    async def fetchval(self, statement: str, *args: Any) -> Any:
        self.statements.append(statement)
        if "INSERT INTO counted_requests" in statement:
            # Every key of the batch is new: "<organization id> <request id>", comma-joined.
            return ",".join(
                f"{organization} {request}"
                for request, organization in zip(*(a.split(",") for a in args[:2]), strict=True)
            )
        return None


class PoolLosingItsFirstConnection:
    """A pool whose first connection fails as it is handed back, the way asyncpg fails when Postgres shuts
    down as a transaction commits: the connection is left mid-operation, and its reset raises."""

    def __init__(self) -> None:
        self.acquired = 0
        self.connection = AnsweringConnection()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[AnsweringConnection]:
        self.acquired += 1
        yield self.connection
        if self.acquired == 1:
            raise asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")


async def test_a_connection_asyncpg_lost_track_of_as_postgres_stopped_is_retried_like_an_outage() -> None:
    pool = PoolLosingItsFirstConnection()
    rows, dead = FakeRows(), FakeDeadLetters()
    health: list[bool] = []
    ledger = PostgresUsageLedger(pool)
    writer = _writer(rows, ledger, dead, health)  # type: ignore[arg-type]
    logs = [_log() for _ in range(3)]

    outcome = await writer.write(_messages(*(log.SerializeToString() for log in logs)), asyncio.Event())

    # The batch is written again (idempotently) once Postgres answers; it is not lost and ends nothing.
    assert (outcome.stored, outcome.dead_letters) == (3, 0)
    assert pool.acquired == 2
    assert health == [False, True], "reported as a store outage, then cleared"
    assert set(rows.rows) == {log.record.request_id for log in logs}
