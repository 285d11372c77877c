"""PostgreSQL for the stack: the machine's server (started if it is down) and one database per stack.

The server itself is the machine's and is never stopped by the stack; only the stack's database is
created here and, for test stacks, dropped again.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import asyncpg

from candela_stack.probes import run_sync
from candela_stack.processes import Reporter

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_DSN_ENV = "CANDELA_POSTGRES_ADMIN_DSN"
POSTGRES_CONFIG_ROOT = Path("/etc/postgresql")

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailableError(RuntimeError):
    """The Postgres server cannot be reached, even after trying to start the machine's cluster."""


def with_database(dsn: str, database: str) -> str:
    """`dsn` with its database (the URL path) replaced by `database`."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def check_database_name(database: str) -> str:
    """Returns `database` if it is a plain lower-case identifier (it is interpolated into DDL)."""
    if not _DATABASE_NAME.match(database):
        raise ValueError(f"invalid database name {database!r}: use lower-case letters, digits and _")
    return database


def is_reachable(admin_dsn: str) -> bool:
    """True if a connection to `admin_dsn` succeeds and answers a query."""
    return run_sync(_is_reachable(admin_dsn))


def ensure_server(admin_dsn: str, report: Reporter | None = None, timeout: float = 30.0) -> None:
    """Makes sure the server behind `admin_dsn` answers, starting the machine's cluster if it is down."""
    if is_reachable(admin_dsn):
        return
    versions = sorted(p.name for p in POSTGRES_CONFIG_ROOT.glob("*") if p.is_dir())
    if not versions:
        raise PostgresUnavailableError(
            f"Postgres is not reachable at {_redact(admin_dsn)} and no local cluster exists under "
            f"{POSTGRES_CONFIG_ROOT}; set {ADMIN_DSN_ENV} to a reachable server"
        )
    version = versions[-1]
    if report is not None:
        report(f"  Postgres is down: starting the machine's cluster {version}/main")
    completed = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_reachable(admin_dsn):
            return
        time.sleep(0.2)
    raise PostgresUnavailableError(
        f"Postgres is not reachable at {_redact(admin_dsn)}; `pg_ctlcluster {version} main start` "
        f"exited {completed.returncode}: {(completed.stdout + completed.stderr).strip()}"
    )


def create_database(admin_dsn: str, database: str) -> bool:
    """Creates `database` if it does not exist; True if it was created."""
    return run_sync(_create_database(admin_dsn, check_database_name(database)))


def drop_database(admin_dsn: str, database: str) -> None:
    """Drops `database` if it exists, disconnecting its sessions first."""
    run_sync(_drop_database(admin_dsn, check_database_name(database)))


async def _is_reachable(admin_dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(admin_dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close()
    return True


async def _create_database(admin_dsn: str, database: str) -> bool:
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if exists:
            return False
        try:
            await connection.execute(f'CREATE DATABASE "{database}"')
        except asyncpg.DuplicateDatabaseError:
            return False  # created concurrently by another launcher: fine
        return True
    finally:
        await connection.close()


async def _drop_database(admin_dsn: str, database: str) -> None:
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()


def _redact(dsn: str) -> str:
    """`dsn` without its password."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- a private cluster (StackConfig(own_postgres=True)) --------------------------------------------------

POSTGRES_BIN_ROOT = Path("/usr/lib/postgresql")
POSTGRES_OS_USER = "postgres"


def server_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `postgres`."""
    candidates = sorted(
        (path for path in POSTGRES_BIN_ROOT.glob("*/bin") if (path / "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresUnavailableError(f"no PostgreSQL server binaries under {POSTGRES_BIN_ROOT}")
    return candidates[-1]


def _as_server_user(argv: list[str]) -> list[str]:
    """`argv` run as the `postgres` OS user when we are root (Postgres refuses to run as root), else as is.

    `setpriv` execs the command, so the PID the stack starts is the server's own.
    """
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={POSTGRES_OS_USER}", f"--regid={POSTGRES_OS_USER}", "--init-groups", *argv]


def init_cluster(report: Reporter | None = None) -> Path:
    """A new, empty cluster (trust auth, superuser `postgres`) in a fresh private temp dir; returns it.

    The dir lives in the system temp folder rather than the stack's data dir because the server user
    must be able to traverse every parent directory (pytest's tmp dirs are private to their owner).
    """
    root = Path(tempfile.mkdtemp(prefix="candela-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        server_user = pwd.getpwnam(POSTGRES_OS_USER)
        for path in (root, data):
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    argv = [str(server_bin_dir() / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
    completed = subprocess.run(
        _as_server_user(argv), capture_output=True, text=True, check=False, timeout=120, cwd=root
    )
    if completed.returncode != 0:
        raise PostgresUnavailableError(f"initdb failed ({completed.returncode}): {completed.stderr.strip()}")
    if report is not None:
        report(f"  private Postgres cluster initialised in {root}")
    return root


def cluster_server_argv(root: Path, port: int) -> list[str]:
    """The `postgres` server of a cluster made by :func:`init_cluster`, on 127.0.0.1:`port` only."""
    argv = [
        str(server_bin_dir() / "postgres"),
        "-D", str(root / "data"),
        "-p", str(port),
        "-h", "127.0.0.1",
        "-k", str(root),
        "-c", "max_connections=200",
    ]  # fmt: skip
    return _as_server_user(argv)


def admin_dsn_for_port(port: int) -> str:
    """The superuser DSN of a private cluster listening on `port`."""
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"
