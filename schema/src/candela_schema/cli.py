"""``candela-migrate``: applies Candela's pending Postgres and ClickHouse migrations to any servers.

    candela-migrate --postgres-dsn postgresql://candela@db:5432/candela --clickhouse-host ch
    CANDELA_POSTGRES_DSN=... CANDELA_CLICKHOUSE_HOST=... candela-migrate --only clickhouse

Every option falls back to the variable the services read (``CANDELA_POSTGRES_DSN``,
``CANDELA_CLICKHOUSE_HOST``, ``_PORT``, ``_ALT_HOSTS``, ``_DATABASE``, ``_USER``, ``_PASSWORD``, ``_CLUSTER``), with the
services'
defaults; pass the password in the environment rather than on the command line (where `ps` shows it).
Each store is migrated as :mod:`candela_schema.migrator` describes: what was applied before is skipped,
so running it again applies nothing.

Exit codes: 0 when every store is up to date, 1 when a store could not be reached or a migration failed
(what was applied before the failure stays applied), 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
from clickhouse_driver import errors as clickhouse_errors

from candela_schema.migrator import (
    CLICKHOUSE,
    CLICKHOUSE_DATABASE_NAME,
    POSTGRES,
    MigrationError,
    apply_clickhouse,
    apply_postgres,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_STORE_FAILURES = (
    MigrationError,
    OSError,  # refused, unreachable, timed out (TimeoutError is an OSError)
    asyncpg.PostgresError,  # authentication, a missing database, ...
    asyncpg.InterfaceError,
    clickhouse_errors.Error,  # network and server errors, authentication
    EOFError,  # a ClickHouse server closing the connection
)


@dataclass(frozen=True)
class Settings:
    """Where to migrate, from the arguments and the environment."""

    stores: tuple[str, ...]
    """``postgres``, ``clickhouse`` or both, in that order."""
    postgres_dsn: str
    clickhouse_host: str
    clickhouse_port: int
    clickhouse_database: str
    clickhouse_user: str
    clickhouse_password: str
    clickhouse_cluster: str = ""
    """The ClickHouse cluster to migrate ON CLUSTER (replicated + Distributed tables); empty: one server."""
    clickhouse_alt_hosts: str = ""
    """Other ClickHouse members, ``host[:port],...``, connected to when the first cannot be reached."""


class UsageError(Exception):
    """The arguments or environment do not say where to migrate."""


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str, default: str) -> str:
        return environ.get(f"CANDELA_{name}") or default

    parser = argparse.ArgumentParser(
        prog="candela-migrate",
        description="Apply Candela's pending Postgres and ClickHouse migrations (each file once, in order).",
        epilog="Exit codes: 0 up to date, 1 a store unreachable or a migration failed, 2 usage error.",
    )
    parser.add_argument(
        "--only",
        choices=(POSTGRES, CLICKHOUSE),
        help="migrate only this store (default: both)",
    )
    parser.add_argument(
        "--postgres-dsn",
        default=env("POSTGRES_DSN", ""),
        help="Postgres DSN of the database to migrate (CANDELA_POSTGRES_DSN; required unless --only clickhouse)",
    )
    parser.add_argument(
        "--clickhouse-host",
        default=env("CLICKHOUSE_HOST", "127.0.0.1"),
        help="ClickHouse host, native protocol (CANDELA_CLICKHOUSE_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--clickhouse-port",
        default=env("CLICKHOUSE_PORT", "9000"),
        help="ClickHouse native TCP port (CANDELA_CLICKHOUSE_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--clickhouse-alt-hosts",
        default=env("CLICKHOUSE_ALT_HOSTS", ""),
        help="other members of a ClickHouse cluster, comma-separated host[:port], tried in turn when the host "
        "cannot be reached (CANDELA_CLICKHOUSE_ALT_HOSTS; default: none)",
    )
    parser.add_argument(
        "--clickhouse-database",
        default=env("CLICKHOUSE_DATABASE", "candela"),
        help="ClickHouse database, created if missing (CANDELA_CLICKHOUSE_DATABASE; default %(default)s)",
    )
    parser.add_argument(
        "--clickhouse-user",
        default=env("CLICKHOUSE_USER", "default"),
        help="ClickHouse user (CANDELA_CLICKHOUSE_USER; default %(default)s)",
    )
    parser.add_argument(
        "--clickhouse-password",
        default=env("CLICKHOUSE_PASSWORD", ""),
        help="ClickHouse password (CANDELA_CLICKHOUSE_PASSWORD, preferred; default empty)",
    )
    parser.add_argument(
        "--clickhouse-cluster",
        default=env("CLICKHOUSE_CLUSTER", ""),
        help="ClickHouse cluster name: create replicated and Distributed tables ON CLUSTER "
        "(CANDELA_CLICKHOUSE_CLUSTER; default: a single server)",
    )
    return parser


def settings_of(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """The settings of a command line; raises UsageError (argparse exits 2 itself on a malformed one)."""
    args = _parser(environ).parse_args(argv)
    stores = (args.only,) if args.only else (POSTGRES, CLICKHOUSE)
    if POSTGRES in stores and not args.postgres_dsn:
        raise UsageError("no Postgres DSN: pass --postgres-dsn or set CANDELA_POSTGRES_DSN (or --only clickhouse)")
    try:
        port = int(args.clickhouse_port)
    except ValueError:
        raise UsageError(f"the ClickHouse port is no number: {args.clickhouse_port!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"the ClickHouse port is out of range: {port}")
    if CLICKHOUSE in stores and not CLICKHOUSE_DATABASE_NAME.match(args.clickhouse_database):
        raise UsageError(f"invalid ClickHouse database name {args.clickhouse_database!r} (letters, digits, _)")
    if args.clickhouse_cluster and not CLICKHOUSE_DATABASE_NAME.match(args.clickhouse_cluster):
        raise UsageError(f"invalid ClickHouse cluster name {args.clickhouse_cluster!r} (letters, digits, _)")
    for member in filter(None, (part.strip() for part in args.clickhouse_alt_hosts.split(","))):
        try:
            parsed = urlsplit(f"clickhouse://{member}")
            parsed.port  # noqa: B018 (raises ValueError on a port that is no number or out of range)
        except ValueError:
            raise UsageError(f"bad ClickHouse member {member!r} in the alt hosts (host or host:port)") from None
        if not parsed.hostname or parsed.path or parsed.username is not None:
            raise UsageError(f"bad ClickHouse member {member!r} in the alt hosts (host or host:port)")
    return Settings(
        stores=stores,
        postgres_dsn=args.postgres_dsn,
        clickhouse_host=args.clickhouse_host,
        clickhouse_port=port,
        clickhouse_database=args.clickhouse_database,
        clickhouse_user=args.clickhouse_user,
        clickhouse_password=args.clickhouse_password,
        clickhouse_cluster=args.clickhouse_cluster,
        clickhouse_alt_hosts=args.clickhouse_alt_hosts,
    )


def _migrate(settings: Settings, store: str) -> tuple[str, list[str]]:
    """Applies one store's migrations: (where, the names applied)."""
    if store == POSTGRES:
        return "Postgres", apply_postgres(settings.postgres_dsn)
    where = f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port}/{settings.clickhouse_database}"
    applied = apply_clickhouse(
        settings.clickhouse_host,
        settings.clickhouse_port,
        settings.clickhouse_database,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        cluster=settings.clickhouse_cluster,
        alt_hosts=settings.clickhouse_alt_hosts,
    )
    return where, applied


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    say: Callable[[str], None] = print,
    complain: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """Runs candela-migrate; returns the exit code."""
    try:
        settings = settings_of(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except UsageError as error:
        complain(f"candela-migrate: error: {error}")
        return EXIT_USAGE
    for store in settings.stores:
        try:
            where, applied = _migrate(settings, store)
        except ValueError as error:  # a DSN the driver cannot read
            complain(f"candela-migrate: error: {error}")
            return EXIT_USAGE
        except _STORE_FAILURES as error:
            name = "Postgres" if store == POSTGRES else "ClickHouse"
            complain(f"candela-migrate: {name} failed: {_message(error)}")
            return EXIT_FAILED
        say(
            f"{where}: applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ", up to date")
        )
    return EXIT_OK


def _message(error: BaseException) -> str:
    """An error's message without a server's stack trace, on one line (a migration's failed statement keeps
    its lines); its kind when it has no message."""
    text = str(error).split("Stack trace:", 1)[0].strip() or type(error).__name__
    return text if isinstance(error, MigrationError) else " ".join(text.split())


def run() -> None:
    """The console script's entry point."""
    logging.basicConfig(level=logging.WARNING, format="candela-migrate: %(levelname)s %(name)s: %(message)s")
    # The driver logs each refused connection with its traceback; the error printed here says it in one line.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    sys.exit(main())
