"""Log lines: JSON by default, with the trace and span ids of the active span."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from candela_runtime.logs import configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the configured handler writes (pytest swaps sys.stderr per phase, so the stream is set after)."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield stream
    root.handlers[:], root.level = saved


def _configure(stream: io.StringIO, log_format: str | None = None) -> None:
    configure_logging("candela-test", "INFO", log_format)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_json_lines_carry_trace_and_span_ids(captured: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANDELA_LOG_FORMAT", raising=False)
    _configure(captured)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("candela.test").info("stored %d logs", 3)
        context = span.get_span_context()
    logging.getLogger("candela.test").warning("outside")

    inside, outside = (json.loads(line) for line in captured.getvalue().splitlines())
    assert inside["message"] == "stored 3 logs"
    assert (inside["level"], inside["service"], inside["logger"]) == ("INFO", "candela-test", "candela.test")
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert (outside["trace_id"], outside["span_id"]) == ("-", "-")


def test_exceptions_are_kept_in_the_record(captured: io.StringIO) -> None:
    _configure(captured, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("candela.test").exception("failed")
    record = json.loads(captured.getvalue())
    assert "ValueError: boom" in record["exception"]


def test_text_format_and_bad_format(captured: io.StringIO) -> None:
    _configure(captured, "text")
    logging.getLogger("candela.test").info("hello")
    assert "INFO candela-test candela.test trace=- span=- hello" in captured.getvalue()
    with pytest.raises(ValueError, match="CANDELA_LOG_FORMAT"):
        configure_logging("candela-test", "INFO", "xml")
