"""How ClickHouse migrations are rendered for old and new servers, and which files ship."""

from __future__ import annotations

import pytest

from candela_schema import migrator
from candela_schema.migrator import Migration, MigrationError, clickhouse_gates, render_clickhouse

pytestmark = pytest.mark.unit


def test_low_cardinality_is_gated_on_the_server_version() -> None:
    assert clickhouse_gates("18.16.1", "candela")["low_cardinality_string"] == "String"
    assert clickhouse_gates("23.8.2.7", "candela")["low_cardinality_string"] == "LowCardinality(String)"
    assert clickhouse_gates("19.1.6", "db")["database"] == "db"


def test_a_file_is_split_into_statements_with_gates_filled_in() -> None:
    migration = Migration(
        name="0002_x.sql",
        sql=(
            "-- a comment that mentions {placeholders} freely;\n"
            "CREATE TABLE IF NOT EXISTS {database}.a (model {low_cardinality_string}) ENGINE = Log;\n"
            "\n"
            "CREATE TABLE IF NOT EXISTS b (x String DEFAULT '{{}}')\n"
            "ENGINE = Log\n"
            ";\n"
            "   -- trailing comment\n"
        ),
    )
    statements = render_clickhouse(migration, clickhouse_gates("18.16.1", "candela"))
    assert statements == [
        "CREATE TABLE IF NOT EXISTS candela.a (model String) ENGINE = Log",
        "CREATE TABLE IF NOT EXISTS b (x String DEFAULT '{}')\nENGINE = Log",
    ]


def test_an_unknown_placeholder_names_the_known_gates() -> None:
    migration = Migration(name="0003_typo.sql", sql="CREATE TABLE t (m {low_cardinality_strin}) ENGINE = Log")
    with pytest.raises(MigrationError, match=r"0003_typo\.sql.*low_cardinality_string"):
        render_clickhouse(migration, clickhouse_gates("18.16.1", "candela"))


@pytest.mark.parametrize("store", [migrator.POSTGRES, migrator.CLICKHOUSE])
def test_shipped_migrations_load_in_name_order(store: str) -> None:
    loaded = migrator.load(store)
    assert loaded, f"no {store} migrations ship with candela_stack"
    names = [migration.name for migration in loaded]
    assert names == sorted(names)
    assert all(name.endswith(".sql") for name in names)


def test_every_shipped_clickhouse_migration_renders_for_old_and_new_servers() -> None:
    for version in ("18.16.1", "24.3.1"):
        gates = clickhouse_gates(version, "candela")
        for migration in migrator.load(migrator.CLICKHOUSE):
            assert render_clickhouse(migration, gates)
