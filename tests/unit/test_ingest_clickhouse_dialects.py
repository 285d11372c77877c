"""The ClickHouse migrations rendered for a modern server, run in-process on chDB (ClickHouse 26.x).

The same files run on the 18.16 server in the integration tests; here the writer's row goes into the
modern rendering, twice (a redelivery), and a FINAL read sees it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.rows import (
    REQUEST_COLUMNS,
    REQUESTS_TABLE,
    SCORE_COLUMNS,
    SCORES_TABLE,
    clickhouse_row,
    score_rows,
)
from candela_schema.migrator import CLICKHOUSE, clickhouse_gates, load, render_clickhouse

chdb_session = pytest.importorskip("chdb.session")
pytestmark = pytest.mark.unit


def _literal(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, Decimal):
        return f"toDecimal64('{value}', 12)"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, datetime | date):
        return f"'{value}'"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Any]:
    """A chDB session with the ClickHouse migrations applied as for a modern server."""
    sess = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        version = str(sess.query("SELECT version()", "CSV")).strip().strip('"')
        gates = clickhouse_gates(version, "candela")
        sess.query("CREATE DATABASE IF NOT EXISTS candela")
        sess.query("USE candela")  # as the migrator's client, which connects to the stack's database
        for migration in load(CLICKHOUSE):
            for statement in render_clickhouse(migration, gates):
                sess.query(statement)
        yield sess
    finally:
        sess.close()


def test_the_writers_row_lands_once_in_the_modern_schema(session: Any) -> None:
    record = log_record_pb2.LogRecord(
        request_id=str(uuid.uuid4()),
        organization_id=str(uuid.uuid4()),
        provider="openai",
        model="gpt-4o-mini",
        status_code=200,
        latency_ms=12,
        cost_usd="0.000123456789",
        properties={"env": "prod", "team": "o'brien"},
    )
    record.created_at.FromDatetime(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    message = log_record_pb2.LogMessage(record=record)
    for version in (1, 2):  # a redelivery, written again with a newer version
        row = clickhouse_row(message, version)
        values = ", ".join(_literal(value) for value in row)
        session.query(f"INSERT INTO candela.{REQUESTS_TABLE} ({', '.join(REQUEST_COLUMNS)}) VALUES ({values})")
    result = str(
        session.query(
            f"SELECT count(), any(cost_usd), any(property_values), any(version) FROM candela.{REQUESTS_TABLE} FINAL "
            f"WHERE organization_id = '{record.organization_id}'",
            "CSV",
        )
    ).strip()
    assert result == "1,0.000123456789,\"['prod','o\\'brien']\",2"
    update = log_record_pb2.LogUpdate(
        request_id=record.request_id, organization_id=record.organization_id, scores={"accuracy": 0.5}, feedback=True
    )
    update.updated_at.FromDatetime(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    for row in score_rows(update) * 2:
        values = ", ".join(_literal(value) for value in row)
        session.query(f"INSERT INTO candela.{SCORES_TABLE} ({', '.join(SCORE_COLUMNS)}) VALUES ({values})")
    scores = str(session.query(f"SELECT name, value FROM candela.{SCORES_TABLE} FINAL ORDER BY name", "CSV")).strip()
    assert scores.splitlines() == ['"accuracy",0.5', '"feedback",1']
    ddl = str(session.query(f"SHOW CREATE TABLE candela.{REQUESTS_TABLE}", "CSV"))
    assert "LowCardinality(String)" in ddl, "the version-gated extra is on for a modern server"
