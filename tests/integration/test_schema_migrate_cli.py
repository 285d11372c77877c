"""``candela-migrate`` run as a command against a real Postgres and ClickHouse 18.16: it applies every
migration to fresh databases, a second run applies nothing, and failures exit 1 with one clear line."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from clickhouse_driver import Client

from candela_schema.migrator import CLICKHOUSE, POSTGRES, load
from candela_schema.requests_table import table_order
from candela_stack.postgres import create_database, drop_database, with_database
from candela_stack.stack import Component, Stack, StackConfig

pytestmark = pytest.mark.integration

COMMAND = Path(sys.executable).with_name("candela-migrate")
"""The console script as installed (schema/pyproject.toml), beside this interpreter."""


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ClickHouse 18.16 server (the stack migrates its own database; the tests use fresh ones)."""
    config = StackConfig.for_tests(tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE}))
    with Stack(config) as stack:
        yield stack


@pytest.fixture
def postgres_database(postgres_admin_dsn: str) -> Iterator[str]:
    """The DSN of an empty database of this test's own."""
    name = f"candela_migrate_{secrets.token_hex(6)}"
    create_database(postgres_admin_dsn, name)
    yield with_database(postgres_admin_dsn, name)
    drop_database(postgres_admin_dsn, name)


def _environment(stack: Stack, dsn: str, database: str) -> dict[str, str]:
    """What a deployment sets: the services' own variables (the password is never on the command line)."""
    return {
        "PATH": "/usr/bin:/bin",
        "CANDELA_POSTGRES_DSN": dsn,
        "CANDELA_CLICKHOUSE_HOST": stack.clickhouse_host,
        "CANDELA_CLICKHOUSE_PORT": str(stack.clickhouse_port),
        "CANDELA_CLICKHOUSE_DATABASE": database,
        "CANDELA_CLICKHOUSE_USER": stack.clickhouse_user,
        "CANDELA_CLICKHOUSE_PASSWORD": stack.clickhouse_password,
    }


def _migrate(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def _applied_in_postgres(dsn: str) -> list[str]:
    async def read() -> list[str]:
        connection = await asyncpg.connect(dsn)
        try:
            return [str(row[0]) for row in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        finally:
            await connection.close()

    return asyncio.run(read())


def _clickhouse(stack: Stack, database: str, sql: str) -> list[tuple[object, ...]]:
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    try:
        rows: list[tuple[object, ...]] = client.execute(sql)
        return rows
    finally:
        client.disconnect()


def test_it_applies_every_migration_once_and_a_second_run_applies_nothing(
    clickhouse: Stack, postgres_database: str
) -> None:
    database = f"migrate_{secrets.token_hex(6)}"
    environment = _environment(clickhouse, postgres_database, database)
    postgres_files = [migration.name for migration in load(POSTGRES)]
    clickhouse_files = [migration.name for migration in load(CLICKHOUSE)]
    try:
        first = _migrate(environment)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert lines[0] == f"Postgres: applied {len(postgres_files)} migration(s): {', '.join(postgres_files)}"
        where = f"ClickHouse {clickhouse.clickhouse_host}:{clickhouse.clickhouse_port}/{database}"
        assert lines[1] == f"{where}: applied {len(clickhouse_files)} migration(s): {', '.join(clickhouse_files)}"
        assert _applied_in_postgres(postgres_database) == postgres_files
        described = [(str(row[0]), str(row[1])) for row in _clickhouse(clickhouse, database, "DESCRIBE TABLE requests")]
        version = str(_clickhouse(clickhouse, database, "SELECT version()")[0][0])
        assert described == [(column.name, column.type_on(version)) for column in table_order()]

        again = _migrate(environment)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [
            "Postgres: applied 0 migration(s), up to date",
            f"{where}: applied 0 migration(s), up to date",
        ]
        assert _applied_in_postgres(postgres_database) == postgres_files
        recorded = _clickhouse(clickhouse, database, "SELECT name FROM schema_migrations ORDER BY name")
        assert [str(row[0]) for row in recorded] == clickhouse_files, "each file recorded once"
    finally:
        _clickhouse(clickhouse, "default", f"DROP DATABASE IF EXISTS {database}")


def test_arguments_override_the_environment_and_only_picks_one_store(clickhouse: Stack) -> None:
    database = f"migrate_{secrets.token_hex(6)}"
    environment = _environment(clickhouse, "", "not_this_one")
    try:
        result = _migrate(environment, "--only", "clickhouse", "--clickhouse-database", database)
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.splitlines()
        assert line.startswith(f"ClickHouse {clickhouse.clickhouse_host}:{clickhouse.clickhouse_port}/{database}: ")
    finally:
        _clickhouse(clickhouse, "default", f"DROP DATABASE IF EXISTS {database}")


def test_a_store_it_cannot_use_exits_1_with_one_line_saying_why(clickhouse: Stack, postgres_admin_dsn: str) -> None:
    environment = _environment(clickhouse, "", f"migrate_{secrets.token_hex(6)}")
    wrong_password = _migrate(environment | {"CANDELA_CLICKHOUSE_PASSWORD": "not-the-password"}, "--only", "clickhouse")
    assert wrong_password.returncode == 1
    assert wrong_password.stderr.startswith("candela-migrate: ClickHouse failed: Code: 193"), wrong_password.stderr
    assert "Wrong password" in wrong_password.stderr
    assert len(wrong_password.stderr.splitlines()) == 1

    missing = with_database(postgres_admin_dsn, f"candela_absent_{secrets.token_hex(6)}")
    no_database = _migrate(environment, "--only", "postgres", "--postgres-dsn", missing)
    assert no_database.returncode == 1
    assert no_database.stderr.startswith("candela-migrate: Postgres failed: database"), no_database.stderr
    assert "does not exist" in no_database.stderr


def test_nowhere_to_migrate_is_a_usage_error(clickhouse: Stack) -> None:
    result = _migrate(_environment(clickhouse, "", "candela"))
    assert result.returncode == 2
    assert result.stderr == (
        "candela-migrate: error: no Postgres DSN: pass --postgres-dsn or set CANDELA_POSTGRES_DSN "
        "(or --only clickhouse)\n"
    )
    assert result.stdout == ""
