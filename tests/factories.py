"""The logs tests feed the services, built one way: a ``LogRecord`` (a new request id unless given, its
creation time as a datetime), as Kafka carries it (``LogMessage``) or as the proxy sends it to ingest
(``IngestRecord``). Each test passes the fields it cares about; nothing else is filled in."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2


def log_record(
    *, request_id: str | None = None, created_at: datetime | None = None, **fields: Any
) -> log_record_pb2.LogRecord:
    """A LogRecord with ``fields``: a new request id unless one is given, ``created_at`` set when given."""
    record = log_record_pb2.LogRecord(request_id=str(uuid.uuid4()) if request_id is None else request_id, **fields)
    if created_at is not None:
        record.created_at.FromDatetime(created_at)
    return record


def log_message(*, record: log_record_pb2.LogRecord | None = None, **fields: Any) -> log_record_pb2.LogMessage:
    """A LogMessage holding ``record``, or :func:`log_record` of ``fields``."""
    return log_record_pb2.LogMessage(record=record if record is not None else log_record(**fields))


def ingest_record(
    *,
    record: log_record_pb2.LogRecord | None = None,
    request_body: bytes = b"",
    response_body: bytes = b"",
    trace_context: dict[str, str] | None = None,
    **fields: Any,
) -> ingest_service_pb2.IngestRecord:
    """An IngestRecord with its bodies, holding ``record``, or :func:`log_record` of ``fields``."""
    return ingest_service_pb2.IngestRecord(
        record=record if record is not None else log_record(**fields),
        request_body=request_body,
        response_body=response_body,
        trace_context=trace_context or {},
    )
