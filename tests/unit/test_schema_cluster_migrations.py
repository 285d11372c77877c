"""The cluster form of the ClickHouse migrations (CANDELA_CLICKHOUSE_CLUSTER), for old and new servers.

The statements run for real on a 2x2 cluster of ClickHouse 18.16 in tests/integration/test_clickhouse_cluster.py;
here every shipped migration is rendered in its cluster form for both dialects, and modern ClickHouse (chDB)
parses each statement (chDB has no ZooKeeper or cluster to run them on).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from candela_schema import migrator
from candela_schema.cli import UsageError, settings_of
from candela_schema.migrator import (
    ClusterStatement,
    MigrationError,
    clickhouse_gates,
    cluster_statements,
    render_clickhouse,
)
from candela_schema.requests_table import MODERN_SERVER, OLDEST_SERVER

pytestmark = pytest.mark.unit


def _cluster_form(server_version: str) -> list[ClusterStatement]:
    gates = clickhouse_gates(server_version, "candela")
    return [
        form
        for migration in migrator.load(migrator.CLICKHOUSE)
        for statement in render_clickhouse(migration, gates)
        for form in cluster_statements(statement, "candela", "c1")
    ]


@pytest.mark.parametrize("server_version", [OLDEST_SERVER, MODERN_SERVER])
def test_every_table_is_replicated_per_shard_with_a_distributed_table_over_it(server_version: str) -> None:
    statements = _cluster_form(server_version)
    created = [s.sql for s in statements if s.sql.startswith(("CREATE TABLE", "CREATE MATERIALIZED VIEW"))]
    local_table = re.compile(r"^CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS candela\.(\w+)_local ON CLUSTER c1\b")
    distributed_table = re.compile(r"^CREATE TABLE IF NOT EXISTS candela\.(\w+) ON CLUSTER c1 AS candela\.\1_local\n")
    replicated = re.compile(
        r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/candela/(\w+)_local', '\{replica\}'"
    )
    local = {m[1] for sql in created if (m := local_table.match(sql))}
    distributed = {m[1] for sql in created if (m := distributed_table.match(sql))}
    tables = {"requests", "request_sessions", "request_times", "request_scores", "request_dedup_checks"}
    assert local == distributed == tables
    for sql in created:
        if local_table.match(sql):
            # Each shard's replicas share a ZooKeeper path ({shard} macro), each replica its own name.
            assert replicated.search(sql), sql
    # ON CLUSTER everywhere except the ALTERs of replicated tables, which run once per shard.
    for statement in statements:
        assert statement.per_shard == statement.sql.startswith("ALTER TABLE"), statement
        assert (" ON CLUSTER c1" in statement.sql) != statement.per_shard, statement


def test_every_version_of_a_request_and_its_scores_go_to_one_shard() -> None:
    distributed = re.compile(
        r"candela\.(\w+) ON CLUSTER c1 AS .*Distributed\(c1, candela, \w+_local, (.+)\)$", re.DOTALL
    )
    by_table = {m[1]: m[2] for s in _cluster_form(OLDEST_SERVER) if (m := distributed.search(s.sql))}
    # The key reads the request id alone: every stored version (and score) of a request has the same one.
    assert by_table["requests"] == by_table["request_scores"] == "sipHash64(toString(request_id))"
    assert by_table["request_dedup_checks"] == "sipHash64(toString(organization_id))"


def test_views_read_their_own_shards_rows_and_alters_remake_the_distributed_table() -> None:
    statements = [s.sql for s in _cluster_form(OLDEST_SERVER)]
    views = [sql for sql in statements if sql.startswith("CREATE MATERIALIZED VIEW")]
    assert views
    assert all("FROM candela.requests_local" in sql for sql in views)
    alter = next(index for index, sql in enumerate(statements) if "ADD COLUMN trace_id" in sql)
    assert statements[alter].startswith("ALTER TABLE candela.requests_local ADD COLUMN")
    assert statements[alter + 1] == "DROP TABLE IF EXISTS candela.requests ON CLUSTER c1"
    assert statements[alter + 2].startswith("CREATE TABLE IF NOT EXISTS candela.requests ON CLUSTER c1 AS")


def test_a_statement_without_a_cluster_form_is_refused() -> None:
    with pytest.raises(MigrationError, match="no cluster form"):
        cluster_statements("INSERT INTO requests SELECT 1", "candela", "c1")
    with pytest.raises(MigrationError, match="sharding key"):
        cluster_statements(
            "CREATE TABLE IF NOT EXISTS events (id UUID) ENGINE = ReplacingMergeTree(id) ORDER BY id", "candela", "c1"
        )


def test_modern_clickhouse_parses_every_cluster_statement(tmp_path: Path) -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session: Any = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        version = str(session.query("SELECT version()", "CSV")).strip().strip('"')
        for statement in _cluster_form(version):
            escaped = statement.sql.replace("\\", "\\\\").replace("'", "\\'")
            formatted = str(session.query(f"SELECT formatQuery('{escaped}')", "TSV")).strip()
            assert formatted, statement.sql
    finally:
        session.close()


def test_candela_migrate_reads_the_cluster_like_the_services() -> None:
    assert settings_of(["--only", "clickhouse"], {}).clickhouse_cluster == ""
    environ = {"CANDELA_CLICKHOUSE_CLUSTER": "analytics"}
    assert settings_of(["--only", "clickhouse"], environ).clickhouse_cluster == "analytics"
    assert settings_of(["--only", "clickhouse", "--clickhouse-cluster", "c2"], environ).clickhouse_cluster == "c2"
    with pytest.raises(UsageError, match="cluster name"):
        settings_of(["--only", "clickhouse", "--clickhouse-cluster", "no-dashes"], {})
