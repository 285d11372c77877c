"""Logging set-up: one line per record, with the current trace and span ids."""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace

_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s trace=%(trace_id)s span=%(span_id)s %(message)s"


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


def configure_logging(service: str, level: str = "INFO") -> None:
    """Routes all logging to stderr with trace ids; call once, from a service's ``main()``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_TraceContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka and botocore narrate every connection at INFO.
    for noisy in ("aiokafka", "botocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
