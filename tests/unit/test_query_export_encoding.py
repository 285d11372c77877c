"""The export's encoders: RFC 4180 CSV with the formula guard on text only, and JSON Lines, read back."""

from __future__ import annotations

import csv
import io
import json

import pytest

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela_query.export import ENCODERS, EXPORT_COLUMNS, CsvEncoder, JsonLinesEncoder, Kind, guarded

pytestmark = pytest.mark.unit


def _record(**fields: object) -> log_record_pb2.LogRecord:
    record = log_record_pb2.LogRecord(request_id="3f0c7b9e-0000-4000-8000-000000000001", **fields)  # type: ignore[arg-type]
    record.created_at.FromJsonString("2026-01-02T03:04:05.678901Z")
    return record


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=SUM(A1:A9)", "'=SUM(A1:A9)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("", ""),
        ("'already", "'already"),
        ("Élodie", "Élodie"),
    ],
)
def test_the_guard_quotes_only_a_formula_start(text: str, cell: str) -> None:
    assert guarded(text) == cell


def test_csv_reads_back_cell_for_cell_with_text_guarded_and_numbers_plain() -> None:
    record = _record(
        model='gpt "4o", mini',
        user_id='=HYPERLINK("http://x")',
        error="line\r\nbreak",
        session_name="-1",
        status_code=429,
        latency_ms=1234,
        cost_usd="0.000000000001",
        properties={"b": "+2", "a": "日本"},
    )
    record.usage.total_tokens = 42
    encoder = CsvEncoder()
    data = encoder.header() + encoder.rows([record, _record()])
    assert data.endswith(b"\r\n")
    header, first, second = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert header == [column.name for column in EXPORT_COLUMNS]
    row = dict(zip(header, first, strict=True))
    assert row["model"] == 'gpt "4o", mini'
    assert row["user_id"] == '\'=HYPERLINK("http://x")'
    assert row["error"] == "line\r\nbreak"
    assert row["session_name"] == "'-1"
    assert (row["status_code"], row["latency_ms"], row["total_tokens"]) == ("429", "1234", "42")
    assert row["cost_usd"] == "0.000000000001"
    assert row["created_at"] == "2026-01-02T03:04:05.678901Z"
    assert json.loads(row["properties"]) == {"a": "日本", "b": "+2"}
    empty = dict(zip(header, second, strict=True))
    # Unpriced and no first token are empty cells, never 0.
    assert (empty["cost_usd"], empty["time_to_first_token_ms"], empty["properties"]) == ("", "", "{}")
    assert (empty["streamed"], empty["cache_hit"]) == ("false", "false")


def test_json_lines_keep_text_as_sent_with_nulls_and_an_object() -> None:
    record = _record(user_id="=1+1", time_to_first_token_ms=0, properties={"k": "v\nw"})
    data = JsonLinesEncoder().rows([record, _record(cost_usd="1.5")])
    first, second = (json.loads(line) for line in data.decode("utf-8").splitlines())
    assert list(first) == [column.name for column in EXPORT_COLUMNS]
    assert (first["user_id"], first["time_to_first_token_ms"], first["cost_usd"]) == ("=1+1", 0, None)
    assert first["properties"] == {"k": "v\nw"}
    assert (second["cost_usd"], second["time_to_first_token_ms"]) == ("1.5", None)
    assert JsonLinesEncoder().header() == b""


def test_every_export_format_has_an_encoder_and_every_column_a_known_kind() -> None:
    named = {value for value in pb.ExportFormat.values() if value != pb.EXPORT_FORMAT_UNSPECIFIED}
    assert set(ENCODERS) == named
    assert len({column.name for column in EXPORT_COLUMNS}) == len(EXPORT_COLUMNS)
    assert all(isinstance(column.kind, Kind) for column in EXPORT_COLUMNS)
