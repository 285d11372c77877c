"""The guards of tests/conftest.py can fail: a tier marker out of its folder, an unhandled loop exception, a
blocking call of product code inside the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from candela_proxy.spool import Spool
from tests.conftest import LOOP_ERRORS, TESTS_DIR, tier_mismatch

pytestmark = pytest.mark.unit


@dataclass
class _Item:
    """What tier_mismatch reads of a collected test."""

    path: Path
    markers: list[str]
    fixturenames: list[str] = field(default_factory=list)

    def iter_markers(self) -> list[pytest.MarkDecorator]:
        return [getattr(pytest.mark, name) for name in self.markers]


def _mismatch(folder: str, markers: list[str], fixtures: list[str] | None = None) -> str | None:
    item = _Item(TESTS_DIR / folder / "test_x.py", markers, fixtures or [])
    return tier_mismatch(cast(pytest.Item, item))


def test_a_tier_marker_must_name_the_tests_folder() -> None:
    assert _mismatch("unit", ["unit"]) is None
    assert _mismatch("integration", ["integration", "filterwarnings"]) is None
    assert _mismatch("integration", ["unit"]) == "sits in tests/integration/ but is marked unit"
    assert _mismatch("e2e", ["integration"]) == "sits in tests/e2e/ but is marked integration"
    assert _mismatch("unit", []) == "sits in tests/unit/ but is marked with no tier"
    assert _mismatch("unit", ["unit", "integration"]) == "sits in tests/unit/ but is marked integration, unit"


def test_a_unit_test_may_not_start_a_store() -> None:
    assert _mismatch("unit", ["unit"], ["tmp_path", "postgres_dsn"]) == (
        "is a unit test but uses postgres_dsn (a real store: integration or e2e)"
    )
    assert _mismatch("integration", ["integration"], ["postgres_dsn"]) is None


async def _lost() -> None:
    raise ValueError("nobody awaits me")


async def test_an_exception_no_one_retrieves_is_reported() -> None:
    task = asyncio.get_running_loop().create_task(_lost())
    await asyncio.sleep(0)
    del task  # the last reference: the task is finalized, its exception never retrieved
    reported = LOOP_ERRORS.take()  # taken here, so that this test passes; left, it would fail the test
    assert len(reported) == 1
    assert reported[0].startswith("Task exception was never retrieved: ValueError: nobody awaits me")


async def test_product_code_blocking_in_the_loop_is_refused_and_a_tests_own_call_is_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)  # the test's own call: it creates a directory
    assert spool.segment_count() == 0  # the test's own call again: it lists the directory
    # The same listing as the service runs it, from the loop (a callback here), blocks the loop: refused,
    # and the refusal is an exception in a callback, which the loop reports.
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_soon(spool.segment_count)
    loop.call_soon(done.set)
    await done.wait()
    reported = LOOP_ERRORS.take()  # taken here, so that this test passes
    assert len(reported) == 1
    assert "BlockingError: Blocking call to " in reported[0], reported
