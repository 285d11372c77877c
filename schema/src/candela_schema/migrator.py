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

ClickHouse cluster mode (`cluster=` a name from the servers' `<remote_servers>`, the services'
`CANDELA_CLICKHOUSE_CLUSTER`): the same files, each statement rewritten by `cluster_statements()` into
its replicated, `ON CLUSTER` form, so one set of migrations serves both modes and a single node's
statements (and checksums) stay exactly as they were.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.resources
import logging
import re
from collections.abc import Callable
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


def apply_clickhouse(
    host: str,
    port: int,
    database: str,
    *,
    user: str = "default",
    password: str = "",
    cluster: str = "",
    alt_hosts: str = "",
) -> list[str]:
    """Creates `database` if needed and applies its pending ClickHouse migrations; returns the names applied.

    With `cluster`, on every member of that cluster (`ON CLUSTER`, replicated tables plus Distributed
    ones: see `cluster_statements()`); `host` is any one member. `alt_hosts` (`host[:port],...`,
    CANDELA_CLICKHOUSE_ALT_HOSTS) names other members: the migrator connects to the first of them that
    answers when `host` does not (clickhouse-driver's own `alt_hosts`). It does not move to another member
    in the middle of a run: a DDL statement cut off there may or may not have run, so the run fails, as it
    does with one server, and the operator runs it again. Blocking (clickhouse-driver): call it from a thread
    when inside an event loop.
    """
    if not CLICKHOUSE_DATABASE_NAME.match(database):
        raise ValueError(f"invalid ClickHouse database name {database!r}")
    if cluster and not CLICKHOUSE_DATABASE_NAME.match(cluster):
        raise ValueError(f"invalid ClickHouse cluster name {cluster!r}")
    credentials = {"user": user, "password": password}
    bootstrap = Client(
        host=host, port=port, alt_hosts=alt_hosts or None, **credentials, connect_timeout=5, send_receive_timeout=300
    )
    try:
        server_version = str(bootstrap.execute("SELECT version()")[0][0])
        bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {database}{_on_cluster(cluster)}")
    finally:
        bootstrap.disconnect()

    def connect(member_host: str, member_port: int, member_alt_hosts: str | None = None) -> Client:
        return Client(
            host=member_host,
            port=member_port,
            alt_hosts=member_alt_hosts,
            database=database,
            **credentials,
            connect_timeout=5,
            send_receive_timeout=300,
        )

    client = connect(host, port, alt_hosts or None)
    try:
        return _apply_clickhouse(client, database, server_version, cluster, connect)
    finally:
        client.disconnect()


def _on_cluster(cluster: str) -> str:
    return f" ON CLUSTER {cluster}" if cluster else ""


def _apply_clickhouse(
    client: Any,
    database: str,
    server_version: str,
    cluster: str = "",
    connect: Callable[[str, int], Any] | None = None,
) -> list[str]:
    if cluster:
        # One record for the whole cluster: every member is a replica of it, so the migrator may connect
        # to any member next time and still sees what was applied.
        engine = f"ReplicatedMergeTree('/clickhouse/tables/all/{database}/schema_migrations', '{{replica}}')"
    else:
        engine = "MergeTree"
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations{_on_cluster(cluster)} "
        "(name String, checksum String, applied_at DateTime DEFAULT now()) "
        f"ENGINE = {engine} ORDER BY name"
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
        if cluster:
            statements = [
                form for statement in render_clickhouse(migration, gates)
                for form in cluster_statements(statement, database, cluster)
            ]  # fmt: skip
        else:
            statements = [ClusterStatement(statement) for statement in render_clickhouse(migration, gates)]
        for statement in statements:
            try:
                if statement.per_shard:
                    assert connect is not None, "per-shard statements come only with a cluster"
                    run_on_each_shard(client, connect, cluster, statement.sql)
                else:
                    client.execute(statement.sql)
            except ClickHouseError as error:
                raise MigrationError(
                    f"ClickHouse migration {migration.name} failed on statement:\n{statement.sql}\n{error}"
                ) from error
        client.execute("INSERT INTO schema_migrations (name, checksum) VALUES", [(migration.name, migration.checksum)])
        applied.append(migration.name)
        logger.info("applied ClickHouse migration %s", migration.name)
    return applied


LOCAL_SUFFIX = "_local"
"""In cluster mode each table of the migrations is `<name>_local` on every member (replicated within its
shard) and `<name>` is a Distributed table over them, so readers and writers keep using the same names."""

SHARDING_KEYS: dict[str, str] = {
    # Every version of a request, and its scores, on one shard: FINAL and argMax per shard are then the
    # whole answer (ReplacingMergeTree only merges copies within a shard), and a request joins its scores
    # on the shard itself (the query service reads with distributed_product_mode = 'local').
    "requests": "sipHash64(toString(request_id))",
    "request_scores": "sipHash64(toString(request_id))",
    # A proof covers one organization's day; it is read back whole through the Distributed table.
    "request_dedup_checks": "sipHash64(toString(organization_id))",
}
"""The sharding key of each table written through its Distributed table (materialized views are filled on
the shard of the row that feeds them, so they need none)."""

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<name>\w+) (?P<columns>\(.*\))\s*ENGINE = (?P<engine>\w*MergeTree)"
    r"\((?P<args>[^)]*)\)(?P<rest>.*)$",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<name>\w+)\s+ENGINE = (?P<engine>\w*MergeTree)"
    r"\((?P<args>[^)]*)\)(?P<rest>.*)$",
    re.DOTALL,
)
_ALTER_TABLE = re.compile(r"^ALTER TABLE (?P<name>\w+)\s+(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class ClusterStatement:
    """One statement of a migration as the migrator runs it."""

    sql: str
    per_shard: bool = False
    """Run on one replica of each shard (replication brings it to the others) instead of as it is."""


def run_on_each_shard(
    client: Any, connect: Callable[[str, int], Any], cluster: str, sql: str, params: dict[str, Any] | None = None
) -> None:
    """Runs `sql` once per shard of `cluster`, on the first replica of the shard that answers; replication
    brings an ALTER (a column, a mutation) to the shard's other replicas.

    `client` is connected to any member (it names the members: system.clusters); `connect(host, port)`
    opens a client to one member with the caller's credentials. `ALTER ... ON CLUSTER` of a replicated
    table would have every replica try, and 18.16 then leaves the statement waiting for good on the
    replica that finds the change already made (measured with 2x2: added columns, DELETE mutations).
    """
    members = client.execute(
        "SELECT shard_num, host_name, port FROM system.clusters WHERE cluster = %(c)s ORDER BY shard_num, replica_num",
        {"c": cluster},
    )
    if not members:
        raise MigrationError(f"the server knows no cluster {cluster!r} (see its <remote_servers>)")
    for shard in sorted({int(row[0]) for row in members}):
        failures = []
        for _, host, port in (row for row in members if int(row[0]) == shard):
            replica = connect(str(host), int(port))
            try:
                replica.execute(sql, params)
                break
            except (OSError, EOFError, ClickHouseError) as error:
                if isinstance(error, ClickHouseError) and getattr(error, "code", None) not in _REPLICA_DOWN_CODES:
                    raise
                failures.append(f"{host}:{port}: {error}")
            finally:
                replica.disconnect()
        else:
            raise MigrationError(f"no replica of shard {shard} of {cluster} answered: {'; '.join(failures)}")


_REPLICA_DOWN_CODES = frozenset({209, 210, 242})  # SOCKET_TIMEOUT, NETWORK_ERROR, TABLE_IS_READ_ONLY


def cluster_statements(statement: str, database: str, cluster: str) -> list[ClusterStatement]:
    """A single-node migration statement in its cluster form (one or two statements, run in order).

    - `CREATE TABLE t (...) ENGINE = XMergeTree(args) ...` -> `t_local` on every member as
      `ReplicatedXMergeTree('/clickhouse/tables/{shard}/<database>/t_local', '{replica}', args)` (the
      `{shard}` and `{replica}` macros of each member's config), then `t` as
      `Distributed(<cluster>, <database>, t_local, <SHARDING_KEYS[t]>)`.
    - `CREATE MATERIALIZED VIEW v ENGINE = XMergeTree(..) ... FROM t ...` -> `v_local` replicated the same
      way, fed by `t_local` (each shard indexes its own rows), then `v` as a Distributed table over it.
    - `ALTER TABLE t ...` -> the same ALTER on `t_local` on one replica of each shard, then `t` made again
      over it.
    Names are written with their database: an `ON CLUSTER` statement runs on each member in that
    member's default database otherwise. Any other statement is a MigrationError: a new kind of
    statement needs its cluster form here (a unit test renders every shipped migration both ways).
    """
    on_cluster = f" ON CLUSTER {cluster}"
    if match := _CREATE_TABLE.match(statement):
        name = match["name"]
        if name not in SHARDING_KEYS:
            raise MigrationError(f"table {name} has no sharding key for cluster mode (add it to SHARDING_KEYS)")
        local = _replicated(database, name, match["engine"], match["args"])
        return [
            ClusterStatement(
                f"CREATE TABLE IF NOT EXISTS {database}.{name}{LOCAL_SUFFIX}{on_cluster} {match['columns']}\n"
                f"ENGINE = {local}{match['rest']}"
            ),
            _distributed(database, cluster, name, SHARDING_KEYS[name]),
        ]
    if match := _CREATE_VIEW.match(statement):
        name = match["name"]
        local = _replicated(database, name, match["engine"], match["args"])
        rest = re.sub(r"\bFROM (\w+)\b", rf"FROM {database}.\1{LOCAL_SUFFIX}", match["rest"])
        return [
            ClusterStatement(
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{name}{LOCAL_SUFFIX}{on_cluster}\n"
                f"ENGINE = {local}{rest}"
            ),
            _distributed(database, cluster, name, ""),
        ]
    if match := _ALTER_TABLE.match(statement):
        name, rest = match["name"], match["rest"]
        if name not in SHARDING_KEYS:
            raise MigrationError(f"table {name} has no sharding key for cluster mode (add it to SHARDING_KEYS)")
        # The replicated table is altered once per shard, on one replica: replication alters the others.
        # (ALTER ... ON CLUSTER makes every replica try, and on 18.16 the second one fails on the column
        # the first one's change already added, leaving the statement waiting for it for good.)
        # ClickHouse refuses an ALTER ON CLUSTER of a table that is not replicated (the Distributed one) in
        # a replicated cluster, so that table is made again over the altered one: it holds no rows (the
        # writers insert synchronously), so dropping it loses nothing, and the pair is safe to rerun.
        return [
            ClusterStatement(f"ALTER TABLE {database}.{name}{LOCAL_SUFFIX} {rest}", per_shard=True),
            ClusterStatement(f"DROP TABLE IF EXISTS {database}.{name}{on_cluster}"),
            _distributed(database, cluster, name, SHARDING_KEYS[name]),
        ]
    raise MigrationError(f"no cluster form for the statement:\n{statement}")


def _replicated(database: str, name: str, engine: str, args: str) -> str:
    path = f"'/clickhouse/tables/{{shard}}/{database}/{name}{LOCAL_SUFFIX}', '{{replica}}'"
    return f"Replicated{engine}({path}{', ' + args.strip() if args.strip() else ''})"


def _distributed(database: str, cluster: str, name: str, sharding_key: str) -> ClusterStatement:
    key = f", {sharding_key}" if sharding_key else ""
    return ClusterStatement(
        f"CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} AS {database}.{name}{LOCAL_SUFFIX}\n"
        f"ENGINE = Distributed({cluster}, {database}, {name}{LOCAL_SUFFIX}{key})"
    )


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
