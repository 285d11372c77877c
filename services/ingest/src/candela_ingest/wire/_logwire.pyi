"""The log wire format read in C (_logwire.c): LogMessages into the writers' columns, IngestRequests into
ingest's parts."""

from typing import Any

COLUMNS: tuple[str, ...]
"""The names of the columns :func:`columns` returns, in order."""

def columns(values: list[bytes], /) -> tuple[list[list[Any]], list[int], list[int]]:
    """(one list per name of COLUMNS, positions among the decoded of those with a cost or body reference set
    to its empty value, positions in ``values`` of the messages left to the protobuf runtime)."""

def ingest_request(
    data: bytes,
    max_records: int,
    max_record_bytes: int,
    max_metadata_bytes: int,
    earliest_seconds: int,
    latest_seconds: int,
    /,
) -> tuple[list[bytes], list[bytes], list[str], list[bytes], list[bytes], list[dict[str, str] | None]] | None:
    """A serialized IngestRequest's parts per record (LogMessage record field, request id, organization id,
    request body, response body, trace context) when every record surely passes ingest's checks; else None."""
