"""The writer's Native encoder: byte for byte what clickhouse-driver writes, and bad values refused.

Every column type the encoder handles is compared with the driver's own ``write_column`` on examples at
the edges (zero, the type's limits, empty and non-ASCII strings, one-byte and longer length prefixes,
empty and long arrays, columns of one repeated value) and on random columns (hypothesis); whole blocks
are compared with the driver's BlockOutputStream, and a block read back by modern ClickHouse (chDB's
``file(path, Native, structure)``) holds the writer's rows.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.bufferedwriter import CompressedBufferedWriter
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.errors import TooLargeStringSize
from clickhouse_driver.streams.native import BlockOutputStream
from hypothesis import given, settings
from hypothesis import strategies as st

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.native import ColumnValueError, column_encoder, driver_encoding, encode_block
from candela_ingest.writer.rows import REQUEST_COLUMNS, request_columns
from candela_schema.migrator import CLICKHOUSE, clickhouse_gates, load, render_clickhouse

pytestmark = pytest.mark.unit

_REVISION_18_16 = 54412  # what a ClickHouse 18.16 server and the driver agree on
_REVISION_MODERN = 54468  # the driver's own revision, which a modern server agrees on


def _context(revision: int = _REVISION_18_16) -> Any:
    """A driver connection's context as it is once connected (no connection needed to encode)."""
    client = Client("127.0.0.1")
    context = Context()
    context.settings = {}
    context.client_settings = client.client_settings
    context.server_info = ServerInfo("ClickHouse", 18, 16, 1, revision, "UTC", "test", revision)
    return context


CONTEXT = _context()


def _driver(column_type: str, values: Sequence[Any]) -> bytes:
    return driver_encoding(CONTEXT, "column", column_type, values)


def _ours(column_type: str, values: Sequence[Any]) -> bytes:
    encoder = column_encoder(column_type)
    assert encoder is not None, f"{column_type} is encoded natively"
    return encoder(values)


def _same_as_driver(column_type: str, values: Sequence[Any]) -> None:
    assert _ours(column_type, values) == _driver(column_type, values)


# --- value strategies, per type ---------------------------------------------------------------------

_INTEGER_RANGES = {
    "Int8": (-(2**7), 2**7 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt8": (0, 2**8 - 1),
    "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1),
    "UInt64": (0, 2**64 - 1),
}
_DECIMAL_LIMITS = {"Decimal(18, 12)": (Decimal("999999.999999999999"), 12), "Decimal(9, 2)": (Decimal("9999999.99"), 2)}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([low, high, 0, 1, high - 1]), st.integers(low, high))


def _decimals(limit: Decimal, places: int) -> st.SearchStrategy[Decimal | int]:
    return st.one_of(
        st.sampled_from([Decimal(0), limit, -limit, (limit / 3).quantize(limit), Decimal(1).scaleb(-places)]),
        st.decimals(min_value=-limit, max_value=limit, places=places, allow_nan=False, allow_infinity=False),
        st.integers(-int(limit), int(limit)),
    )


_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "é", "日本語", "x" * 127, "x" * 128, "ü" * 64, "x" * 16_384]),
    st.text(alphabet="abc", min_size=120, max_size=300),
)
_UUIDS = st.uuids().flatmap(lambda value: st.sampled_from([str(value), str(value).upper()]))

SCALARS: dict[str, st.SearchStrategy[Any]] = {
    **{name: _integers(low, high) for name, (low, high) in _INTEGER_RANGES.items()},
    "Float64": st.floats(),
    "Float32": st.one_of(st.floats(width=32), st.floats(min_value=-1e38, max_value=1e38)),
    "DateTime": _integers(0, 2**32 - 1),
    "DateTime('UTC')": _integers(0, 2**32 - 1),
    "String": _TEXT,
    "FixedString(5)": st.text(max_size=5).filter(lambda text: len(text.encode()) <= 5),
    "UUID": _UUIDS,
    **{name: _decimals(limit, places) for name, (limit, places) in _DECIMAL_LIMITS.items()},
}


def _arrays(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.one_of(st.lists(element, max_size=4), st.lists(element, min_size=50, max_size=120), st.just([]))


STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    **SCALARS,
    **{f"Array({name})": _arrays(strategy) for name, strategy in SCALARS.items()},
    "Array(Array(Int32))": _arrays(st.lists(SCALARS["Int32"], max_size=6)),
    "Array(Array(String))": _arrays(st.lists(_TEXT, max_size=6)),
}


def _columns(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Columns of varied values, and columns of one value repeated (the encoder's shortcut)."""
    repeated = st.tuples(values, st.integers(1, 40)).map(lambda pair: [pair[0]] * pair[1])
    return st.one_of(st.lists(values, max_size=40), repeated)


# --- the same bytes as the driver -------------------------------------------------------------------


@pytest.mark.parametrize("column_type", sorted(STRATEGIES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_columns_encode_as_the_driver_encodes_them(column_type: str, data: st.DataObject) -> None:
    _same_as_driver(column_type, data.draw(_columns(STRATEGIES[column_type])))


@pytest.mark.parametrize(("column_type", "limits"), sorted(_INTEGER_RANGES.items()))
def test_integers_at_their_limits(column_type: str, limits: tuple[int, int]) -> None:
    low, high = limits
    _same_as_driver(column_type, [low, 0, high, low + 1, high - 1])
    _same_as_driver(column_type, [high] * 3)


@pytest.mark.parametrize(
    ("column_type", "values"),
    [
        ("String", [""] * 5),
        ("String", ["", "é", "日本語", "tab\there", "nul\x00byte"]),
        ("String", ["x" * 127, "x" * 128, "x" * 16_383, "x" * 16_384, "é" * 70]),
        ("String", ["openai"] * 3),
        ("FixedString(3)", ["", "a", "abc", "é"]),
        ("FixedString(3)", ["ab"] * 4),
        ("UUID", ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]),
        ("UUID", ["3F1D9A52-8C47-4A8E-9D1E-6B2F0C7A5E11", "3f1d9a52-8c47-4a8e-9d1e-6b2f0c7a5e11"]),
        ("UUID", [str(uuid.UUID(int=1))] * 3),
        ("Float64", [0.0, -0.0, 1.5, float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308]),
        ("Float64", [0.0, -0.0, 0.0]),
        ("Float32", [0.0, -0.0, 0.1, 3.4028234663852886e38, float("inf")]),
        ("DateTime('UTC')", [0, 1_764_720_000, 2**32 - 1]),
        ("Decimal(18, 12)", [Decimal(0), Decimal("-0"), Decimal("0.000160500000"), Decimal("999999.999999999999")]),
        ("Decimal(18, 12)", [Decimal("-999999.999999999999"), Decimal("1E-12"), Decimal("1.5"), 7]),
        ("Decimal(18, 12)", [Decimal("0.000160500000")] * 4),
        ("Array(String)", [[], [], []]),
        ("Array(String)", [["environment"], ["environment"]]),
        ("Array(String)", [["a", "é"], [], ["x" * 200], [""] * 300]),
        ("Array(Int64)", [[840], [12, -(2**63)], [2**63 - 1]]),
        ("Array(Int32)", [[200], [200], [200]]),
        ("Array(UUID)", [[str(uuid.UUID(int=5))], [], [str(uuid.UUID(int=2**128 - 1))] * 3]),
        ("Array(Decimal(18, 12))", [[Decimal("0.5")], [], [Decimal("-1E-12"), Decimal(3)]]),
        ("Array(Array(String))", [[["a"], []], [], [[], ["b", "c"]]]),
        ("Array(Array(Int32))", [[[1, 2]], [[1, 2]], [[]]]),
        ("String", []),
        ("Array(String)", []),
        ("FixedString(4)", []),
        ("UUID", []),
        ("Decimal(18, 12)", []),
    ],
)
def test_edge_columns_encode_as_the_driver_encodes_them(column_type: str, values: list[Any]) -> None:
    _same_as_driver(column_type, values)


def test_a_block_is_the_driver_block_for_either_protocol_revision() -> None:
    columns_with_types = [
        ("organization_id", "UUID"),
        ("created_at", "DateTime('UTC')"),
        ("cost_usd", "Decimal(18, 12)"),
        ("model", "String"),
        ("property_keys", "Array(String)"),
        ("attempt_status_codes", "Array(Int32)"),
        ("provider", "LowCardinality(String)"),  # left to the driver
        ("note", "Nullable(String)"),  # left to the driver
        ("tags", "Array(LowCardinality(String))"),  # left to the driver
    ]
    columns: list[list[Any]] = [
        [str(uuid.UUID(int=7)), str(uuid.UUID(int=8))],
        [1_764_720_000, 1_764_720_001],
        [Decimal("0.000160500000"), Decimal(0)],
        ["gpt-4o-mini", "claude"],
        [["environment"], []],
        [[200, 500], [429]],
        ["openai", "anthropic"],
        [None, "x"],
        [["a", "b"], ["a"]],
    ]
    for revision in (_REVISION_18_16, _REVISION_MODERN):
        context = _context(revision)
        driver = _BytesWriter()
        block = ColumnOrientedBlock(columns_with_types, [list(column) for column in columns])
        BlockOutputStream(driver.writer, context).write(block)

        def fallback(name: str, column_type: str, values: Sequence[Any], context: Any = context) -> bytes:
            return driver_encoding(context, name, column_type, values)

        ours = encode_block(
            columns_with_types, columns, fallback, block_info=True, custom_serialization=revision == _REVISION_MODERN
        )
        assert ours == driver.value()


class _BytesWriter:
    """The driver's buffered writer, collecting what it writes (its streams need one of these)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.writer = CompressedBufferedWriter(self, 1 << 20)

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def value(self) -> bytes:
        self.writer.flush()
        return b"".join(self._chunks)


def test_types_it_does_not_handle_are_left_to_the_driver() -> None:
    for column_type in (
        "LowCardinality(String)",
        "Nullable(String)",
        "Array(Nullable(Int32))",
        "Decimal(38, 10)",
        "DateTime64(3)",
        "Date",
        "Map(String, String)",
        "Enum8('a' = 1)",
        "Int128",
    ):
        assert column_encoder(column_type) is None, column_type


# --- bad values are refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(("column_type", "limits"), sorted(_INTEGER_RANGES.items()))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_an_integer_out_of_range_is_refused(column_type: str, limits: tuple[int, int], data: st.DataObject) -> None:
    low, high = limits
    bad = data.draw(st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)))
    for values in ([bad], [0, bad], [bad] * 3, [bad, 0, bad]):
        with pytest.raises((struct.error, OverflowError)):
            _ours(column_type, values)
        with pytest.raises((struct.error, OverflowError)):
            _ours(f"Array({column_type})", [[0], values])


def _is_refused(column_type: str, values: list[Any], error: type[Exception] | tuple[type[Exception], ...]) -> None:
    with pytest.raises(error):
        _ours(column_type, values)


def test_a_value_that_is_no_canonical_uuid_is_refused() -> None:
    good = "3f1d9a52-8c47-4a8e-9d1e-6b2f0c7a5e11"
    for bad in (
        "",
        "not-a-uuid",
        good[:-1],
        good + "0",
        good.replace("-", ""),  # 32 digits, no hyphens
        "{" + good[1:-1] + "}",
        good.replace("3f", "3g", 1),
        good.replace("-8c47-", "-8c4-7", 1),  # hyphens moved
        good[:2] + " " + good[3:],  # whitespace in place of a digit
        good[:2] + "-" + good[3:],  # a fifth hyphen in place of a digit
        good.replace("a", "\u0430"),  # a Cyrillic a
    ):
        for values in ([bad], [good, bad], [bad, bad]):
            _is_refused("UUID", values, ValueError)
    _is_refused("UUID", [uuid.UUID(good)], TypeError)  # the caller gives the text
    with pytest.raises(ColumnValueError, match="organization_id"):
        encode_block([("organization_id", "UUID")], [[good, good[:35] + "x"]], _no_fallback, **_FILE)


def test_a_string_too_long_for_its_fixed_string_is_refused_not_cut() -> None:
    _is_refused("FixedString(3)", ["abcd"], ValueError)
    _is_refused("FixedString(3)", ["ab", "éé"], ValueError)  # 4 bytes
    _is_refused("FixedString(11)", ["not-in-the-enum"] * 2, ValueError)
    with pytest.raises(TooLargeStringSize):  # the driver refuses it too
        _driver("FixedString(3)", ["abcd"])


def test_decimals_that_do_not_fit_are_refused_not_rounded() -> None:
    column = "Decimal(18, 12)"
    for bad in (Decimal("0.0000000000001"), Decimal("1000000"), Decimal("-1000000"), Decimal("NaN"), Decimal("Inf")):
        _is_refused(column, [bad], ValueError)
        _is_refused(column, [Decimal(0), bad], ValueError)
    _is_refused(column, [Decimal("1E+999999")], ValueError)  # not an ArithmeticError the writer would retry
    _is_refused(column, [0.1], TypeError)
    _is_refused(column, ["0.1"], TypeError)
    _is_refused("Decimal(9, 2)", [Decimal("10000000")], ValueError)


def test_values_of_another_kind_are_refused() -> None:
    _is_refused("String", [1, "a"], TypeError)
    _is_refused("String", [None] * 3, TypeError)
    _is_refused("String", [b"bytes"], TypeError)
    _is_refused("String", ["lone \ud800 surrogate"], ValueError)
    _is_refused("UInt32", [1.5], struct.error)
    _is_refused("UInt32", ["1"], struct.error)
    _is_refused("Float32", [1e39], OverflowError)
    _is_refused("Array(String)", ["abc", ["a"]], TypeError)  # a str would be split into characters
    _is_refused("Array(String)", [""] * 3, TypeError)
    _is_refused("Array(Int32)", [0, [1]], TypeError)
    _is_refused("DateTime('UTC')", [datetime(2026, 1, 1, tzinfo=UTC)], struct.error)


def test_a_block_refuses_columns_that_do_not_match_its_types() -> None:
    with pytest.raises(ValueError, match="expected 2 columns"):
        encode_block([("a", "UInt8"), ("b", "UInt8")], [[1]], _no_fallback, **_FILE)
    with pytest.raises(ValueError, match="different lengths"):
        encode_block([("a", "UInt8"), ("b", "UInt8")], [[1], [1, 2]], _no_fallback, **_FILE)
    with pytest.raises(ColumnValueError, match=r"column b \(UInt8\)") as refused:
        encode_block([("a", "UInt8"), ("b", "UInt8")], [[1], [256]], _no_fallback, **_FILE)
    assert isinstance(refused.value.__cause__, struct.error)


_FILE = {"block_info": False, "custom_serialization": False}  # a Native file: no protocol extras


def _no_fallback(name: str, column_type: str, values: Sequence[Any]) -> bytes:
    raise AssertionError(f"{name} ({column_type}) is encoded natively")


# --- modern ClickHouse reads the writer's rows back ---------------------------------------------------


def varied_messages(count: int, organizations: Sequence[str]) -> list[log_record_pb2.LogMessage]:
    """LogMessages whose rows fill every requests column with varied values: ids in either case,
    non-ASCII and long strings, maps and attempts of several sizes (none included), costs, unset and set
    optional numbers. Request ids are random; organizations are taken in turn."""
    messages = []
    for index in range(count):
        organization_id = organizations[index % len(organizations)]
        record = log_record_pb2.LogRecord(
            request_id=str(uuid.uuid4()).upper() if index % 5 == 0 else str(uuid.uuid4()),
            organization_id=organization_id.upper() if index % 7 == 0 else organization_id,
            api_key_id=str(uuid.UUID(int=index + 10**6)) if index % 2 else "",
            provider=("openai", "anthropic", "mistral")[index % 3],
            model="gpt-4o-mini" if index % 4 else "modèle-" + "x" * (index % 200),
            response_model="gpt-4o-mini-2024-07-18",
            path="/v1/chat/completions",
            status_code=(200, 429, 500, 0)[index % 4],
            error="" if index % 4 < 2 else "upstream said: " + "ошибка " * (index % 40),
            streamed=index % 2 == 0,
            latency_ms=850 + index,
            usage=log_record_pb2.TokenUsage(
                prompt_tokens=230 + index, completion_tokens=2**32 - 1 if index == 3 else 210, total_tokens=440
            ),
            cost_usd=("0.0001605", "", "999999.999999999999", "0.000000000001")[index % 4],
            user_id=f"user-{index % 7}" if index % 3 else "",
            session_id=f"session-{index % 2}",
            properties={f"key-{k}": "värde " * k for k in range(index % 4)},
            prompt_inputs={"name": "Ada"} if index % 6 == 0 else {},
            finish_reason="stop",
            target_url="https://api.openai.com/v1/chat/completions",
            attempts=[
                log_record_pb2.UpstreamAttempt(target_url=f"https://upstream-{a}.example/v1", status_code=500 + a)
                for a in range(index % 3)
            ],
        )
        if index % 2:
            record.time_to_first_token_ms = index % 5
        record.created_at.FromDatetime(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
        record.created_at.nanos = index * 1000
        messages.append(log_record_pb2.LogMessage(record=record))
    return messages


def comparable(column_type: str, value: Any) -> Any:
    """A column's value as read back, in the form it was given: UUID text (lower case), epoch seconds,
    Decimal, and arrays of those."""
    if column_type.startswith("Array("):
        return [comparable(column_type[6:-1], item) for item in value]
    if column_type == "UUID":
        return str(value).lower()
    if column_type.startswith("Decimal"):
        return Decimal(str(value))
    if column_type.startswith("DateTime") and isinstance(value, datetime):
        return int(value.timestamp())
    return value


def _read_expression(name: str, column_type: str) -> str:
    """How chDB is asked for a column so that JSON keeps it exact."""
    if column_type.startswith("DateTime"):
        return f"toUnixTimestamp({name})"
    if column_type == "UUID" or column_type.startswith("Decimal"):
        return f"toString({name})"
    if column_type in ("Array(Decimal(18, 12))", "Array(UUID)"):
        return f"arrayMap(x -> toString(x), {name})"
    return name


def test_modern_clickhouse_reads_the_block_back_from_a_native_file(tmp_path: Path) -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        version = str(session.query("SELECT version()", "CSV")).strip().strip('"')
        session.query("CREATE DATABASE IF NOT EXISTS candela")
        session.query("USE candela")
        for migration in load(CLICKHOUSE):
            for statement in render_clickhouse(migration, clickhouse_gates(version, "candela")):
                session.query(statement)
        described = json.loads(bytes(session.query("DESCRIBE TABLE requests", "JSONCompact").bytes()))["data"]
        types = {row[0]: row[1] for row in described}
        columns_with_types = [(name, types[name]) for name in REQUEST_COLUMNS]
        assert ("provider", "LowCardinality(String)") in columns_with_types, "a type left to the driver is in"

        organizations = [str(uuid.uuid4()) for _ in range(3)]
        batch = request_columns(varied_messages(300, organizations), version=2**64 - 1)
        columns = [batch[name] for name, _ in columns_with_types]
        context = _context(_REVISION_MODERN)

        def fallback(name: str, column_type: str, values: Sequence[Any]) -> bytes:
            return driver_encoding(context, name, column_type, values)

        path = tmp_path / "block.native"
        path.write_bytes(encode_block(columns_with_types, columns, fallback, **_FILE))
        structure = ", ".join(f"{name} {column_type}" for name, column_type in columns_with_types)
        expressions = ", ".join(_read_expression(name, column_type) for name, column_type in columns_with_types)
        result = session.query(
            f"SELECT {expressions} FROM file('{path}', Native, '{_quoted(structure)}')"
            " SETTINGS output_format_json_quote_64bit_integers = 0",
            "JSONCompact",
        )
        rows = json.loads(bytes(result.bytes()))["data"]
    finally:
        session.close()
    read = [list(column) for column in zip(*rows, strict=True)]
    for (name, column_type), given_column, read_column in zip(columns_with_types, columns, read, strict=True):
        expected = [comparable(column_type, value) for value in given_column]
        assert [comparable(column_type, value) for value in read_column] == expected, name


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
