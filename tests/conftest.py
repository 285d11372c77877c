"""What every tier shares: a private Postgres database with the migrations applied, and the checks and guards
that fail a run or a test for what a test forgets.

- A test's folder is its tier: collection fails when a tier marker (unit, integration, e2e) disagrees with
  the folder, or a unit test asks for a real store.
- An unhandled event-loop exception (a callback that raised, "Task exception was never retrieved") during
  a test, or while its fixtures are torn down, fails that test (as asyncpg's ``_testbase`` does).
- In an async test, a blocking call made inside the event loop by product code (the services and the
  shared runtime) raises blockbuster's ``BlockingError`` (as pydantic-ai's tests do); the exceptions allowed
  are listed, each with its reason, in :func:`blocking_detector`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from blockbuster import BlockBuster
from pytest_asyncio import is_async_test

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
    if not item.path.is_relative_to(TESTS_DIR):
        return None  # not one of this suite's tests (pytest pointed elsewhere)
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


# --- guards: what a test forgets fails it (asyncpg's _testbase, pydantic-ai's blockbuster) -------------

PRODUCT_PACKAGES = [
    "candela_runtime",
    "candela_proxy",
    "candela_ingest",
    "candela_query",
    "candela_auth",
    "candela_prompts",
]
"""Where a blocking call inside the event loop fails the test: the services and their shared runtime. The
tests themselves, and the stack launcher that starts stores for them (candela_stack), may block."""


class LoopErrors:
    """Every unhandled event-loop exception (a callback that raised, "Task exception was never retrieved",
    ...) reported since the last look, from any asyncio loop of this process (the session's, and those of
    asyncio.run in a sync test; uvloop's are not asyncio's and are not watched: no test runs one)."""

    def __init__(self) -> None:
        self.reported: list[dict[str, Any]] = []
        self._patch = pytest.MonkeyPatch()

    def install(self) -> None:
        """Records what every loop's default handler is given (and still logs it as asyncio would)."""
        original = asyncio.BaseEventLoop.default_exception_handler

        def recording(loop: asyncio.BaseEventLoop, context: dict[str, Any]) -> None:
            self.reported.append(context)
            original(loop, context)

        self._patch.setattr(asyncio.BaseEventLoop, "default_exception_handler", recording)

    def uninstall(self) -> None:
        """Gives the loops their own handler back."""
        self._patch.undo()

    def take(self) -> list[str]:
        """What was reported since the last call, one line each, and forgets it."""
        taken, self.reported = self.reported, []
        return [_describe(context) for context in taken]


def _describe(context: dict[str, Any]) -> str:
    exception = context.get("exception")
    cause = f": {type(exception).__name__}: {exception}" if exception is not None else ""
    where = context.get("task") or context.get("future") or context.get("handle") or ""
    return f"{context.get('message', 'unhandled exception')}{cause} {where}".strip()


LOOP_ERRORS = LoopErrors()


def pytest_configure(config: pytest.Config) -> None:
    LOOP_ERRORS.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    LOOP_ERRORS.uninstall()


def _fail_on_loop_errors(when: str) -> None:
    errors = LOOP_ERRORS.take()
    if errors:
        pytest.fail(f"unhandled event-loop exception {when}:\n  " + "\n  ".join(errors), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Runs an async test with blocking calls of product code refused; fails it on an unhandled loop error."""
    if is_async_test(item):
        detector = blocking_detector()
        detector.activate()
        try:
            result = yield
        finally:
            detector.deactivate()
    else:
        result = yield
    _fail_on_loop_errors("during the test (or its setup)")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Fails the test on an unhandled loop error raised while its fixtures were torn down."""
    result = yield
    gone = " (the session's fixtures end with the last test)" if nextitem is None else ""
    _fail_on_loop_errors(f"while the test's fixtures were torn down{gone}")
    return result


@functools.cache
def blocking_detector() -> BlockBuster:
    """blockbuster watching product code, less the blocking calls it may make inside the loop (each with
    its reason)."""
    detector = BlockBuster(PRODUCT_PACKAGES)
    for function in detector.functions.values():
        # Constructors run once while a service starts, before it serves anything (in build_deps, or the
        # shipper's __init__): creating the spool's and the write-ahead log's directories and listing their
        # leftover segments, and boto3 reading its service model files for the S3 client.
        function.can_block_in("candela_proxy/spool.py", "__init__")
        function.can_block_in("candela_proxy/shipping.py", "__init__")
        function.can_block_in("candela_proxy/wal.py", "__init__")
        function.can_block_in("candela_ingest/body_store.py", "__init__")
        # asyncpg looks for ~/.pgpass each time it opens a connection (one stat of a small local file per
        # pooled connection, not per query): the library's choice, and cheap.
        function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        # At shutdown, after the ClickHouse client disconnected in its worker thread (the last of its work),
        # joining that idle thread only waits for it to exit.
        function.can_block_in("candela_ingest/writer/clickhouse.py", "close")
        # A test may block: its own calls into product code's plain functions (writing a leftover
        # write-ahead log, reading one back to check it) are the test's, not the service's.
        function.can_block_predicate = _or_called_by_the_test(function.can_block_predicate)
    return detector


@functools.cache
def _product_paths() -> tuple[str, ...]:
    return tuple(str(Path(importlib.import_module(name).__path__[0])) + os.sep for name in PRODUCT_PACKAGES)


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def called_by_the_test() -> bool:
    """Whether the blocking call is in product code that a test called as a plain function, not in product
    code running in the loop (a coroutine the test awaits, a task, a callback)."""
    product, tests = _product_paths(), str(TESTS_DIR) + os.sep
    frame: FrameType | None = sys._getframe(1)
    entry: FrameType | None = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(product):
            entry = frame
        elif entry is not None:
            return filename.startswith(tests) and not entry.f_code.co_flags & _ASYNC_CODE
        frame = frame.f_back
    return False


def _or_called_by_the_test(can_block: Callable[..., bool]) -> Callable[..., bool]:
    def predicate(*args: Any, **kwargs: Any) -> bool:
        return can_block(*args, **kwargs) or called_by_the_test()

    return predicate
