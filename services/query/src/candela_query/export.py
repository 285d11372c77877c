"""Exports of requests as CSV or JSON Lines, streamed: read a page, write it, send it, forget it.

The columns are declared once (:data:`EXPORT_COLUMNS`); both formats and their header come from that
list. Memory stays flat whatever the export's size: the rows are read with the same keyset pages as
QueryRequests (``(sort key, request id)`` strictly after the previous page's last row, so rows logged
meanwhile never shift or repeat a row), and each page becomes one chunk of the file before the next is read.

CSV follows RFC 4180 (CRLF line ends, a field holding a comma, a quote, CR or LF is quoted, quotes
doubled). Text cells a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or
CR: OWASP's CSV injection list) get a single quote in front; numbers are numbers, never prefixed, so a
spreadsheet still sums them. JSON Lines has the same keys, with numbers as numbers, the exact cost as a
decimal string, absent values as null and properties as an object.
"""

from __future__ import annotations

import csv
import io
import json
import operator
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela_query.cursor import Position
from candela_query.row_reads import SORT_COLUMNS
from candela_query.store import RequestStore

Record = log_record_pb2.LogRecord


class Kind(Enum):
    """How a column is written: text is guarded in CSV; numbers and flags are written as they are."""

    TEXT = "text"
    NUMBER = "number"
    DECIMAL = "decimal"
    FLAG = "flag"
    OBJECT = "object"


@dataclass(frozen=True)
class ExportColumn:
    """One column of an export: its header name, its kind and how to take its value from a record
    (None when the record has no value: no first token, unpriced)."""

    name: str
    kind: Kind
    value: Callable[[Record], Any]


def _field(name: str) -> Callable[[Record], Any]:
    return operator.attrgetter(name)


def _usage(name: str) -> Callable[[Record], Any]:
    return operator.attrgetter(f"usage.{name}")


def _first_token(record: Record) -> int | None:
    return record.time_to_first_token_ms if record.HasField("time_to_first_token_ms") else None


def _cost(record: Record) -> str | None:
    """The exact cost as decimal text; None when the model has no known price (unpriced, never 0)."""
    return record.cost_usd if record.HasField("cost_usd") else None


EXPORT_COLUMNS: tuple[ExportColumn, ...] = (
    ExportColumn("request_id", Kind.TEXT, _field("request_id")),
    ExportColumn("created_at", Kind.TEXT, lambda record: record.created_at.ToJsonString()),
    ExportColumn("provider", Kind.TEXT, _field("provider")),
    ExportColumn("model", Kind.TEXT, _field("model")),
    ExportColumn("response_model", Kind.TEXT, _field("response_model")),
    ExportColumn("path", Kind.TEXT, _field("path")),
    ExportColumn("status_code", Kind.NUMBER, _field("status_code")),
    ExportColumn("latency_ms", Kind.NUMBER, _field("latency_ms")),
    ExportColumn("time_to_first_token_ms", Kind.NUMBER, _first_token),
    ExportColumn("prompt_tokens", Kind.NUMBER, _usage("prompt_tokens")),
    ExportColumn("completion_tokens", Kind.NUMBER, _usage("completion_tokens")),
    ExportColumn("total_tokens", Kind.NUMBER, _usage("total_tokens")),
    ExportColumn("cache_read_tokens", Kind.NUMBER, _usage("cache_read_tokens")),
    ExportColumn("cache_write_tokens", Kind.NUMBER, _usage("cache_write_tokens")),
    ExportColumn("reasoning_tokens", Kind.NUMBER, _usage("reasoning_tokens")),
    ExportColumn("cost_usd", Kind.DECIMAL, _cost),
    ExportColumn("streamed", Kind.FLAG, _field("streamed")),
    ExportColumn("cache_hit", Kind.FLAG, _field("cache_hit")),
    ExportColumn("user_id", Kind.TEXT, _field("user_id")),
    ExportColumn("session_id", Kind.TEXT, _field("session_id")),
    ExportColumn("session_path", Kind.TEXT, _field("session_path")),
    ExportColumn("session_name", Kind.TEXT, _field("session_name")),
    ExportColumn("prompt_id", Kind.TEXT, _field("prompt_id")),
    ExportColumn("prompt_version", Kind.TEXT, _field("prompt_version")),
    ExportColumn("api_key_id", Kind.TEXT, _field("api_key_id")),
    ExportColumn("finish_reason", Kind.TEXT, _field("finish_reason")),
    ExportColumn("trace_id", Kind.TEXT, _field("trace_id")),
    ExportColumn("properties", Kind.OBJECT, lambda record: dict(sorted(record.properties.items()))),
    ExportColumn("error", Kind.TEXT, _field("error")),
)
"""Every column an export has, in order: the CSV header and the keys of each JSON line."""

MAX_EXPORT_CHUNK_BYTES = 1024 * 1024
"""The largest message of an export stream (a page holding longer rows is split)."""

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def guarded(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: a single quote in front of a formula's first character."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _csv_cell(column: ExportColumn) -> Callable[[Record], str]:
    """How a column's CSV cell is made from a record: chosen once per column, not per cell (an export
    writes millions of cells)."""
    value = column.value
    if column.kind is Kind.TEXT:
        return lambda record: guarded(value(record))
    if column.kind is Kind.FLAG:
        return lambda record: "true" if value(record) else "false"
    if column.kind is Kind.OBJECT:
        # A JSON object starts with "{": never a formula.
        return lambda record: json.dumps(value(record), ensure_ascii=False, separators=(",", ":"))
    return lambda record: "" if (cell := value(record)) is None else str(cell)


_CSV_CELLS = tuple(_csv_cell(column) for column in EXPORT_COLUMNS)


class CsvEncoder:
    """RFC 4180 CSV with a header row; text cells guarded against formula injection."""

    content_type = "text/csv; charset=utf-8"
    extension = "csv"

    def header(self) -> bytes:
        """The header row."""
        return self._lines([[column.name for column in EXPORT_COLUMNS]])

    def rows(self, records: list[Record]) -> bytes:
        """One line per record (a quoted cell may hold line breaks)."""
        return self._lines([[cell(record) for cell in _CSV_CELLS] for record in records])

    @staticmethod
    def _lines(cells: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(cells)
        return buffer.getvalue().encode("utf-8")


class JsonLinesEncoder:
    """One JSON object per line, UTF-8; no header."""

    content_type = "application/x-ndjson; charset=utf-8"
    extension = "jsonl"

    def header(self) -> bytes:
        """Nothing: every line names its keys."""
        return b""

    def rows(self, records: list[Record]) -> bytes:
        """One line per record."""
        return "".join(
            json.dumps(
                {column.name: column.value(record) for column in EXPORT_COLUMNS},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
            for record in records
        ).encode("utf-8")


Encoder = CsvEncoder | JsonLinesEncoder

ENCODERS: dict[int, Callable[[], Encoder]] = {
    pb.EXPORT_FORMAT_CSV: CsvEncoder,
    pb.EXPORT_FORMAT_JSONL: JsonLinesEncoder,
}
"""The encoder of each export format."""


async def matching_pages(
    store: RequestStore,
    organization_id: str,
    where: str,
    params: dict[str, Any],
    sort_field: str,
    ascending: bool,
    page_size: int,
    max_rows: int,
) -> AsyncIterator[list[Record]]:
    """The records matching ``where``, sorted, one keyset page at a time; at most ``max_rows`` (0: all)."""
    column = SORT_COLUMNS[sort_field]
    after: Position | None = None
    remaining = max_rows
    while True:
        limit = min(page_size, remaining) if max_rows else page_size
        page = await store.page(organization_id, where, dict(params), sort_field, ascending, after, limit)
        if page.rows:
            yield [row.record for row in page.rows]
        if max_rows:
            remaining -= len(page.rows)
        if not page.has_more or not page.rows or (max_rows and remaining <= 0):
            return
        last = page.rows[-1]
        after = Position(last.sort_keys[column], last.record.request_id)
