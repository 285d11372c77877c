"""Fixtures shared by every tier: a private Postgres database with the migrations applied."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from candela_schema.migrator import apply_postgres
from candela_stack.postgres import create_database, drop_database, ensure_server, with_database

SERVICE_TOKEN = "test-service-token-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    """The machine's Postgres server (started if it is down)."""
    dsn = os.environ.get("CANDELA_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    ensure_server(dsn)
    return dsn


@pytest.fixture(scope="session")
def postgres_dsn(postgres_admin_dsn: str) -> Iterator[str]:
    """A database of this test run's own, migrated, dropped at the end."""
    name = f"candela_test_{secrets.token_hex(6)}"
    create_database(postgres_admin_dsn, name)
    dsn = with_database(postgres_admin_dsn, name)
    apply_postgres(dsn)
    yield dsn
    drop_database(postgres_admin_dsn, name)
