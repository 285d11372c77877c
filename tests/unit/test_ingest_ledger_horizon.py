"""The ledger horizon's pure parts: which retention cutoff Postgres can account for, which rows are late."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from candela_ingest.writer.daily_usage import LedgerColumns
from candela_ingest.writer.ledger_horizon import _wholly_before, day_start, within_ledger

pytestmark = pytest.mark.unit

_DAY_US = 86_400 * 1_000_000


def test_a_retention_cutoff_within_the_ledger_is_kept_and_one_past_it_goes_back_to_its_day() -> None:
    cutoff = datetime(2026, 11, 3, 17, 45, 12, 345, tzinfo=UTC)
    assert within_ledger(cutoff, None) == cutoff, "nothing was ever dropped"
    assert within_ledger(cutoff, date(2026, 11, 3)) == cutoff, "the horizon's first day is in the ledger"
    assert within_ledger(cutoff, date(2026, 11, 4)) == datetime(2026, 11, 3, tzinfo=UTC)
    midnight = datetime(2026, 11, 3, tzinfo=UTC)
    assert within_ledger(midnight, date(2026, 12, 1)) == midnight


def test_rows_created_before_the_horizon_are_split_off_in_order() -> None:
    horizon_us = int(day_start(date(2026, 12, 1)).timestamp()) * 1_000_000
    ledger = LedgerColumns(
        request_ids=["r1", "r2", "r3", "r4"],
        organization_ids=["o1", "o1", "o2", "o2"],
        created_at_us=[horizon_us - 1, horizon_us, horizon_us + _DAY_US, horizon_us - _DAY_US],
    )
    kept, late = ledger.created_since(horizon_us)
    assert (kept.request_ids, kept.organization_ids, kept.created_at_us) == (
        ["r2", "r3"],
        ["o1", "o2"],
        [horizon_us, horizon_us + _DAY_US],
    )
    assert late == [("o1", "r1"), ("o2", "r4")]
    assert ledger.created_since(horizon_us - _DAY_US) == (ledger, [])
    assert ledger.days() == {date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 2)}


def test_a_partition_is_dropped_only_when_wholly_before_the_horizon() -> None:
    oldest = date(2026, 12, 1)
    assert _wholly_before("counted_requests_p20261130", oldest, None)
    assert not _wholly_before("counted_requests_p20261201", oldest, None)
    assert not _wholly_before("counted_requests_legacy", oldest, None)
    assert _wholly_before("counted_requests_legacy", oldest, date(2026, 12, 1)), "its last day is Nov 30"
    assert not _wholly_before("counted_requests_legacy", oldest, date(2026, 12, 2))
    assert not _wholly_before("something_else", oldest, None)
