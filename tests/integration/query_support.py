"""Helpers for the query tests: realistic request rows, and the same SQL run on ClickHouse 18.16 and chDB.

Rows are made the way the writers make them (a LogMessage through candela_ingest.writer.rows.clickhouse_row),
so the query service is tested against exactly what ingest stores.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_param

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.rows import (
    REQUEST_COLUMNS,
    SCORE_COLUMNS,
    SCORES_TABLE,
    Row,
    clickhouse_row,
    insert_statement,
)
from candela_schema.migrator import clickhouse_gates, load, render_clickhouse
from candela_stack.stack import Stack
from tests.factories import log_message, log_record

MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku"), ("openai", "o3-mini"))
FEATURES = ("onboarding", "search", "chat", "Summary_50%")
BASE_SECONDS = 1_767_225_600  # 2026-01-01T00:00:00Z


def make_record(rng: random.Random, organization_id: str, index: int) -> log_record_pb2.LogMessage:
    """One realistic logged request (spread over ~10 days), with properties, a session and bodies."""
    provider, model = rng.choice(MODELS)
    prompt, completion = rng.randint(5, 4000), rng.randint(0, 800)
    status = rng.choice((200,) * 12 + (400, 429, 500))
    streamed = rng.random() < 0.5
    record = log_record(
        request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        organization_id=organization_id,
        api_key_id=f"key-{rng.randint(1, 3)}",
        provider=provider,
        model=model,
        response_model=model + "-2025",
        path="/v1/chat/completions" if provider == "openai" else "/v1/messages",
        status_code=status,
        error="" if status < 400 else rng.choice(("rate limited", "Bad Request: context too long")),
        streamed=streamed,
        latency_ms=rng.randint(50, 20_000),
        usage=log_record_pb2.TokenUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
        user_id=rng.choice(("alice", "bob", "carol", "dave", "Élodie", "")),
        prompt_id=rng.choice(("", "welcome", "summarise")),
        cache_hit=rng.random() < 0.1,
        finish_reason=rng.choice(("stop", "length", "")),
        trace_id=rng.choice(("", "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")),
        request_body_omitted=rng.random() < 0.05,
    )
    record.created_at.FromMicroseconds(BASE_SECONDS * 1_000_000 + rng.randint(0, 10 * 86_400 * 1_000_000) + (index % 7))
    if record.prompt_id:
        record.prompt_version = str(rng.randint(1, 3))
    if streamed and status < 400:
        record.time_to_first_token_ms = rng.randint(0, record.latency_ms)
    if model != "o3-mini":
        record.cost_usd = str(Decimal(rng.randint(0, 5_000_000)).scaleb(-9))
    if rng.random() < 0.4:
        session = rng.randint(1, 12)
        record.session_id = f"session-{session}"
        record.session_name = f"Agent run {session}"
        record.session_path = rng.choice(("/", "/plan", "/plan/search", "/plan/search/fetch", "/answer", ""))
    # "Tenant" as a log sent straight to Ingest may spell it: names match in any case.
    for key in ("feature", "env", "Tenant"):
        if rng.random() < 0.6:
            record.properties[key] = {"feature": rng.choice(FEATURES), "env": rng.choice(("prod", "dev"))}.get(
                key, f"t-{rng.randint(1, 5)}"
            )
    message = log_message(record=record)
    message.response_body.object_key = f"bodies/{organization_id}/pack-{index // 100}"
    message.response_body.offset = index * 10
    message.response_body.length = 10
    return message


def make_rows(organization_ids: list[str], per_organization: int, seed: int = 7) -> list[Row]:
    """Rows for several organizations, plus a second, older-version copy of some (as a redelivery leaves)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for organization_id in organization_ids:
        for index in range(per_organization):
            message = make_record(rng, organization_id, index)
            rows.append(clickhouse_row(message, version=2))
            if index % 10 == 0:
                stale = log_record_pb2.LogMessage()
                stale.CopyFrom(message)
                stale.record.model = "stale-copy"
                rows.append(clickhouse_row(stale, version=1))
    return rows


def insert_rows(client: Client, rows: list[Row]) -> None:
    """Inserts rows into ClickHouse 18.16 (parameterised, as the writer does)."""
    client.execute(insert_statement(), rows)


class DriverRunner:
    """The service's own reader (clickhouse-driver) on a single connection, for tests."""

    def __init__(self, host: str, port: int, database: str, *, user: str = "default", password: str = "") -> None:
        self.client = Client(
            host=host,
            port=port,
            database=database,
            user=user,
            password=password,
            connect_timeout=5,
            send_receive_timeout=60,
        )

    @classmethod
    def of(cls, stack: Stack) -> DriverRunner:
        """A runner on ``stack``'s ClickHouse database, as its services connect."""
        return cls(
            stack.clickhouse_host,
            stack.clickhouse_port,
            stack.clickhouse_database,
            user=stack.clickhouse_user,
            password=stack.clickhouse_password,
        )

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Runs ``sql`` off the event loop."""
        rows: list[tuple[Any, ...]] = await asyncio.to_thread(self.client.execute, sql, params)
        return rows

    def close(self) -> None:
        """Disconnects."""
        self.client.disconnect()


class ChdbRunner:
    """Modern ClickHouse in-process (chDB), with the schema of the shipped migrations.

    Parameters are substituted with clickhouse-driver's own escaping, i.e. exactly what the driver sends
    to a server, so both dialects receive the same statement text.
    """

    def __init__(self, data_dir: Path) -> None:
        from chdb import session

        # chdb ships no type hints.
        session_class: Any = session.Session
        self._session: Any = session_class(str(data_dir))
        version = self._query("SELECT version()")[0][0]
        self._session.query("CREATE DATABASE IF NOT EXISTS candela")
        self._session.query("USE candela")
        gates = clickhouse_gates(str(version), "candela")
        for migration in load("clickhouse"):
            for statement in render_clickhouse(migration, gates):
                self._session.query(statement)

    def _query(self, sql: str) -> list[list[Any]]:
        result = self._session.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONCompact")
        text = result.bytes()
        if not text:
            return []
        data: list[list[Any]] = json.loads(text)["data"]
        return data

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Runs ``sql`` with ``params`` substituted as the driver would."""
        escaped = {key: escape_param(value, None) for key, value in params.items()}
        return [tuple(row) for row in self._query(sql % escaped)]

    def insert(self, rows: list[Row]) -> None:
        """Inserts rows (literal values escaped by the driver's escaping)."""
        for start in range(0, len(rows), 2000):
            values = ", ".join(
                "(" + ", ".join(str(_literal(value)) for value in row) + ")" for row in rows[start : start + 2000]
            )
            self._session.query(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES {values}")

    def insert_scores(self, rows: list[Row]) -> None:
        """Inserts ``request_scores`` rows (as candela_ingest.writer.rows.score_rows makes them)."""
        values = ", ".join("(" + ", ".join(str(_literal(value)) for value in row) + ")" for row in rows)
        self._session.query(f"INSERT INTO {SCORES_TABLE} ({', '.join(SCORE_COLUMNS)}) VALUES {values}")

    def command(self, sql: str) -> None:
        """Runs a statement that returns nothing (``SYSTEM STOP MERGES requests``)."""
        self._session.query(sql)

    def close(self) -> None:
        """Ends the session."""
        self._session.close()


def store_rows(runner: DriverRunner | ChdbRunner, rows: list[Row]) -> None:
    """Inserts ``requests`` rows on either engine."""
    if isinstance(runner, DriverRunner):
        insert_rows(runner.client, rows)
    else:
        runner.insert(rows)


class RecordingRunner:
    """A runner that keeps the statements it ran."""

    def __init__(self, inner: DriverRunner | ChdbRunner) -> None:
        self.inner = inner
        self.statements: list[str] = []

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.statements.append(sql)
        return await self.inner.fetch(sql, params)


class InsertsDuringReads:
    """A runner that stores ``copies`` just before the first aggregate read without FINAL (a statement
    holding ``marker``), as a writer's redelivery landing while a dashboard query runs."""

    def __init__(self, inner: DriverRunner | ChdbRunner, copies: list[Row], marker: str) -> None:
        self.inner = inner
        self.copies = copies
        self.marker = marker

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if self.copies and self.marker in sql and "FINAL" not in sql:
            # In a worker thread, as the store's own calls run: the driver's insert blocks.
            await asyncio.to_thread(store_rows, self.inner, self.copies)
            self.copies = []
        return await self.inner.fetch(sql, params)


def _literal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    return escape_param(value, None)


@contextmanager
def chdb_runner(data_dir: Path) -> Iterator[ChdbRunner]:
    """A chDB session in ``data_dir`` with the schema; closed on exit."""
    runner = ChdbRunner(data_dir)
    try:
        yield runner
    finally:
        runner.close()
