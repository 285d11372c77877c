"""Timestamps sent by callers, checked against a range before any arithmetic or store sees them.

A ``google.protobuf.Timestamp`` on the wire may hold any int64 seconds and int32 nanos; protobuf's own
conversions raise on values outside 0001-01-01..9999-12-31 or on nanos outside 0..999,999,999, and a
store holds less still (ClickHouse's DateTime: 1970-01-01..2106-02-07). So each service names the range
it accepts and a value outside it is INVALID_ARGUMENT saying that range, never a conversion error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from candela_runtime.errors import Violations

_NANOS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True)
class TimeRange:
    """The instants a field accepts, both ends included, in seconds since the epoch (UTC)."""

    earliest_s: int
    latest_s: int
    holder: str
    """What bounds the range, said in the error (e.g. "what ClickHouse's DateTime holds")."""

    def describe(self) -> str:
        """The range as RFC 3339 text, for an error message."""
        return f"between {_rfc3339(self.earliest_s)} and {_rfc3339(self.latest_s)} ({self.holder})"


PROTOBUF_RANGE = TimeRange(-62_135_596_800, 253_402_300_799, "what a protobuf Timestamp holds")
"""0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, the range of the Timestamp type (and of Python's datetime)."""


def _rfc3339(seconds: int) -> str:
    # isoformat, not strftime: strftime writes year 1 as "1".
    return (datetime(1970, 1, 1) + timedelta(seconds=seconds)).isoformat() + "Z"


def checked_micros(
    violations: Violations, field: str, stamp: timestamp_pb2.Timestamp, allowed: TimeRange
) -> int | None:
    """``stamp`` in microseconds since the epoch when it is valid and within ``allowed``; otherwise None,
    with a violation of ``field`` added to ``violations``."""
    if not 0 <= stamp.nanos < _NANOS_PER_SECOND:
        violations.add(f"{field}.nanos", f"must be 0 to 999999999, got {stamp.nanos}")
        return None
    if not allowed.earliest_s <= stamp.seconds <= allowed.latest_s:
        violations.add(field, f"must be {allowed.describe()}, got {stamp.seconds} seconds since the epoch")
        return None
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def checked_datetime(
    violations: Violations, field: str, stamp: timestamp_pb2.Timestamp, allowed: TimeRange = PROTOBUF_RANGE
) -> datetime | None:
    """``stamp`` as an aware UTC datetime (microsecond precision), like :func:`checked_micros`."""
    if checked_micros(violations, field, stamp, allowed) is None:
        return None
    return stamp.ToDatetime(tzinfo=UTC)
