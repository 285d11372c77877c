"""Which body reads can share one ranged GET."""

from __future__ import annotations

import pytest

from candela_query.bodies import MAX_GAP_BYTES, covering_range
from candela_query.store import BodyLocation

pytestmark = pytest.mark.unit


def test_adjacent_bodies_of_one_object_are_read_in_one_range() -> None:
    request, response = BodyLocation("org/a.bin", 100, 40), BodyLocation("org/a.bin", 140, 60)
    assert covering_range(request, response) == BodyLocation("org/a.bin", 100, 100)
    assert covering_range(response, request) == BodyLocation("org/a.bin", 100, 100)


def test_a_small_gap_is_read_and_dropped_a_large_one_is_not() -> None:
    request = BodyLocation("org/a.bin", 0, 10)
    assert covering_range(request, BodyLocation("org/a.bin", 10 + MAX_GAP_BYTES, 5)) == BodyLocation(
        "org/a.bin", 0, 15 + MAX_GAP_BYTES
    )
    assert covering_range(request, BodyLocation("org/a.bin", 11 + MAX_GAP_BYTES, 5)) is None


def test_bodies_in_different_objects_or_empty_ones_are_read_apart() -> None:
    assert covering_range(BodyLocation("org/a.bin", 0, 10), BodyLocation("org/b.bin", 10, 10)) is None
    assert covering_range(BodyLocation("org/a.bin", 0, 0), BodyLocation("org/a.bin", 0, 10)) is None
