"""Logging set-up: one record per line, JSON by default, always with the current trace and span ids.

``CANDELA_LOG_FORMAT=json`` (the default) writes one JSON object per line, for log shippers;
``CANDELA_LOG_FORMAT=text`` writes a readable line with the same fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from opentelemetry import trace

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s trace=%(trace_id)s span=%(span_id)s %(message)s"


class _TraceContextFilter(logging.Filter):
    """Adds the active span's trace and span ids (or "-") and the service name to each record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = "-"
            record.span_id = "-"
        record.service = self._service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, service, logger, message, trace ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", "-"),
            "span_id": getattr(record, "span_id", "-"),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", log_format: str | None = None) -> None:
    """Routes all logging to stderr with trace ids; call once, from a service's ``main()``.

    ``log_format`` is "json" or "text"; by default it comes from ``CANDELA_LOG_FORMAT`` (default "json").
    """
    chosen = (log_format or os.environ.get("CANDELA_LOG_FORMAT") or "json").lower()
    if chosen not in {"json", "text"}:
        raise ValueError(f"CANDELA_LOG_FORMAT must be 'json' or 'text', got {chosen!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_TraceContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka and botocore narrate every connection at INFO.
    for noisy in ("aiokafka", "botocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
