"""The shared varint: protobuf's own encoding, table lookups included, for any non-negative value."""

from __future__ import annotations

import pytest
from google.protobuf import wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st

from candela_ingest.wire.varint import varint

pytestmark = pytest.mark.unit


def _protobuf_varint(value: int) -> bytes:
    """protobuf's own encoding of ``value``: a UInt64Value's field 1 (tag 0x08) without its tag; zero is the
    one value proto3 leaves out."""
    return wrappers_pb2.UInt64Value(value=value).SerializeToString()[1:] if value else b"\x00"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2**28 - 1, 2**28, 2**40, 2**63 - 1])
def test_edges_of_the_lookup_tables(value: int) -> None:
    assert varint(value) == _protobuf_varint(value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_any_value(value: int) -> None:
    assert varint(value) == _protobuf_varint(value)
