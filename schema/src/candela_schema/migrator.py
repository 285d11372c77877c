"""Schema migrations for Postgres and ClickHouse: each `*.sql` file applied once, in name order.

Files live in `candela_schema/migrations/postgres/` and `candela_schema/migrations/clickhouse/` (package
data, found with importlib.resources). Each store records what it applied, with a checksum, in its own
`schema_migrations` table; a file changed after it was applied is an error (add a new file instead).

Postgres: each file runs as one transaction together with its record, under an advisory lock, so
concurrent migrators cannot apply a file twice.

ClickHouse: the database is created first; a file may hold several statements, each ending with `;` at
the end of a line, executed one by one (ClickHouse has no transactions, so write them idempotently,
e.g. `CREATE TABLE IF NOT EXISTS`). Before execution the text goes through `str.format(**gates)` with
the version-gated snippets of `clickhouse_gates()` (write literal braces as `{{` and `}}`); lines that
are wholly `--` comments are dropped first, so comments may mention `{placeholders}` freely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.resources
import logging
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

logger = logging.getLogger(__name__)

POSTGRES = "postgres"
CLICKHOUSE = "clickhouse"

# Arbitrary constant key for pg_advisory_xact_lock: serialises concurrent Postgres migrators.
_POSTGRES_LOCK_KEY = 0x43414E44454C41  # "CANDELA"
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
CLICKHOUSE_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""What a ClickHouse database name may be (it is written into statements, so no quoting is needed)."""


class MigrationError(RuntimeError):
    """A migration file failed, or one already applied has changed since."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    name: str
    """File name, e.g. `0001_initial.sql`; the order key and the record key."""
    sql: str
    """The file's text as shipped (before any formatting)."""

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, recorded when applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(store: str) -> list[Migration]:
    """The migrations of `store` (`postgres` or `clickhouse`) in name order; none if the folder is absent."""
    folder: Traversable = importlib.resources.files("candela_schema") / "migrations" / store
    if not folder.is_dir():
        return []
    files = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".sql")), key=lambda e: e.name)
    return [Migration(name=entry.name, sql=entry.read_text(encoding="utf-8")) for entry in files]


def apply_postgres(dsn: str) -> list[str]:
    """Applies the pending Postgres migrations to the database of `dsn`; returns the names applied."""
    # In a worker thread, so that callers already inside an event loop (an async fixture) can use it too.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="candela-migrate") as pool:
        return pool.submit(asyncio.run, _apply_postgres(dsn, load(POSTGRES))).result()


async def _apply_postgres(dsn: str, migrations: list[Migration]) -> list[str]:
    connection = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name text PRIMARY KEY,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        for migration in migrations:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _POSTGRES_LOCK_KEY)
                recorded = await connection.fetchval(
                    "SELECT checksum FROM schema_migrations WHERE name = $1", migration.name
                )
                if recorded is not None:
                    _check_unchanged(POSTGRES, migration, str(recorded))
                    continue
                try:
                    await connection.execute(migration.sql)
                except asyncpg.PostgresError as error:
                    raise MigrationError(f"Postgres migration {migration.name} failed: {error}") from error
                await connection.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.name)
            logger.info("applied Postgres migration %s", migration.name)
    finally:
        await connection.close()
    return applied


def clickhouse_gates(server_version: str, database: str) -> dict[str, str]:
    """The version-gated snippets ClickHouse migrations are formatted with.

    - `database`: the stack's ClickHouse database name.
    - `low_cardinality_string`: `LowCardinality(String)` on servers >= 19.0, `String` on 18.x (where
      the type is still experimental).
    """
    major = _major_version(server_version)
    return {
        "database": database,
        "low_cardinality_string": "LowCardinality(String)" if major >= 19 else "String",
    }


def render_clickhouse(migration: Migration, gates: dict[str, str]) -> list[str]:
    """The statements of a ClickHouse migration after dropping comment lines and filling in `gates`."""
    without_comments = "\n".join(line for line in migration.sql.splitlines() if not line.lstrip().startswith("--"))
    try:
        text = without_comments.format(**gates)
    except (KeyError, IndexError, ValueError) as error:
        raise MigrationError(
            f"ClickHouse migration {migration.name}: cannot fill in placeholders ({error!r}); "
            f"known gates: {', '.join(sorted(gates))}; write literal braces as {{{{ and }}}}"
        ) from error
    return [statement.strip() for statement in _STATEMENT_END.split(text) if statement.strip()]


def apply_clickhouse(host: str, port: int, database: str, *, user: str = "default", password: str = "") -> list[str]:
    """Creates `database` if needed and applies its pending ClickHouse migrations; returns the names applied.

    Blocking (clickhouse-driver): call it from a thread when inside an event loop.
    """
    if not CLICKHOUSE_DATABASE_NAME.match(database):
        raise ValueError(f"invalid ClickHouse database name {database!r}")
    credentials = {"user": user, "password": password}
    bootstrap = Client(host=host, port=port, **credentials, connect_timeout=5, send_receive_timeout=60)
    try:
        server_version = str(bootstrap.execute("SELECT version()")[0][0])
        bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    finally:
        bootstrap.disconnect()
    client = Client(host=host, port=port, database=database, **credentials, connect_timeout=5, send_receive_timeout=300)
    try:
        return _apply_clickhouse(client, database, server_version)
    finally:
        client.disconnect()


def _apply_clickhouse(client: Any, database: str, server_version: str) -> list[str]:
    client.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(name String, checksum String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY name"
    )
    recorded = {
        str(name): str(checksum) for name, checksum in client.execute("SELECT name, checksum FROM schema_migrations")
    }
    gates = clickhouse_gates(server_version, database)
    applied: list[str] = []
    for migration in load(CLICKHOUSE):
        if migration.name in recorded:
            _check_unchanged(CLICKHOUSE, migration, recorded[migration.name])
            continue
        for statement in render_clickhouse(migration, gates):
            try:
                client.execute(statement)
            except ClickHouseError as error:
                raise MigrationError(
                    f"ClickHouse migration {migration.name} failed on statement:\n{statement}\n{error}"
                ) from error
        client.execute("INSERT INTO schema_migrations (name, checksum) VALUES", [(migration.name, migration.checksum)])
        applied.append(migration.name)
        logger.info("applied ClickHouse migration %s", migration.name)
    return applied


def _check_unchanged(store: str, migration: Migration, recorded_checksum: str) -> None:
    if recorded_checksum != migration.checksum:
        raise MigrationError(
            f"{store} migration {migration.name} was changed after it was applied; add a new migration "
            "file instead (for a disposable dev stack, delete its data dir and database to start over)"
        )


def _major_version(server_version: str) -> int:
    match = re.match(r"(\d+)\.", server_version)
    if match is None:
        raise MigrationError(f"unrecognised ClickHouse version {server_version!r}")
    return int(match.group(1))
