"""Fixtures shared by every tier: a private Postgres database with the migrations applied."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

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


# --- tiers: a test's folder is its tier ----------------------------------------------------------------

TIERS = ("unit", "integration", "e2e")
TESTS_DIR = Path(__file__).parent
STORE_FIXTURES = frozenset({"postgres_admin_dsn", "postgres_dsn", "stack"})
"""Fixtures that start or reach a real store or the whole mesh: never requested by a unit test."""


def tier_mismatch(item: pytest.Item) -> str | None:
    """Why ``item``'s tier marker does not match its folder (tests/<tier>/...), or None when it does."""
    folder = item.path.relative_to(TESTS_DIR).parts[0]
    marked = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
    if folder not in TIERS:
        return f"sits in tests/{folder}/, which is no tier ({', '.join(TIERS)})"
    if marked != [folder]:
        return f"sits in tests/{folder}/ but is marked {', '.join(marked) or 'with no tier'}"
    stores = STORE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if folder == "unit" and stores:
        return f"is a unit test but uses {', '.join(sorted(stores))} (a real store: integration or e2e)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fails the run when a test's tier marker and folder disagree (``-m unit`` must select tests/unit/)."""
    mismatches = [f"{item.nodeid} {why}" for item in items if (why := tier_mismatch(item)) is not None]
    if mismatches:
        raise pytest.UsageError("tests whose tier does not match their folder:\n  " + "\n  ".join(mismatches))
