"""Every list of the ``requests`` columns agrees with the one table definition (candela_schema.requests_table).

The writer's insert is derived from it; the C wire decoder's columns, the Native encoder's types, the query
service's reads, the LogMessage fields and the migrations (applied to chDB, a modern ClickHouse) are checked
against it here. The same migrations on ClickHouse 18.16 are checked in
tests/integration/test_ingest_native_insert.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import _logwire
from candela_ingest.writer import rows
from candela_ingest.writer.native import column_encoder
from candela_query import row_reads
from candela_schema import requests_table
from candela_schema.migrator import CLICKHOUSE, clickhouse_gates, load, render_clickhouse
from candela_schema.requests_table import (
    MODERN_SERVER,
    OLDEST_SERVER,
    REQUESTS_COLUMN_NAMES,
    REQUESTS_COLUMNS,
    table_order,
)

pytestmark = pytest.mark.unit

NOT_STORED = frozenset({"ingested_at", "update"})
"""LogMessage fields no column holds: when ingest took the log, and a later update (request_scores)."""


def test_names_are_unique_and_version_is_last() -> None:
    assert len(set(REQUESTS_COLUMN_NAMES)) == len(REQUESTS_COLUMN_NAMES)
    assert REQUESTS_COLUMN_NAMES[-1] == "version"


def test_the_writer_inserts_the_declared_columns_in_order() -> None:
    assert rows.REQUEST_COLUMNS == REQUESTS_COLUMN_NAMES
    assert rows.REQUESTS_TABLE == requests_table.TABLE
    assert rows.insert_statement() == f"INSERT INTO requests ({', '.join(REQUESTS_COLUMN_NAMES)}) VALUES"
    batch = rows.request_columns([log_record_pb2.LogMessage(record=log_record_pb2.LogRecord())], 1)
    assert tuple(batch) == REQUESTS_COLUMN_NAMES


def test_the_c_decoder_reads_every_column_the_writer_does_not_make() -> None:
    """A column declared but neither read by _logwire.c nor made in rows.py from what it reads fails here."""
    made = set(rows.MADE_FROM_WIRE_COLUMNS)
    decoded = set(_logwire.COLUMNS)
    missing = [name for name in REQUESTS_COLUMN_NAMES if name not in made and name not in decoded]
    assert not missing, f"declared in candela_schema.requests_table but not read by the C decoder: {missing}"
    assert made <= set(REQUESTS_COLUMN_NAMES)
    unknown = decoded - set(REQUESTS_COLUMN_NAMES) - set(rows.WIRE_ONLY_COLUMNS)
    assert not unknown, f"read by the C decoder but no declared column: {sorted(unknown)}"
    assert not made & decoded


def test_the_query_service_reads_every_column_but_the_versions_and_whole_seconds() -> None:
    """A row read by the query service (by name) holds every column but ``version`` (read apart, where a
    query wants it) and ``created_at`` (``created_at_us`` is the exact time)."""
    read = [re.sub(r"^toString\((\w+)\)$", r"\1", expression) for expression in row_reads._COLUMNS]
    assert len(read) == len(set(read))
    assert set(read) == set(REQUESTS_COLUMN_NAMES) - {"version", "created_at"}


@pytest.mark.parametrize("server", [OLDEST_SERVER, MODERN_SERVER])
def test_the_native_encoder_takes_every_type(server: str) -> None:
    """Each column's type has an encoder of its own, but for LowCardinality (left to the driver, on modern
    servers only: on 18.16 the gate makes it a String)."""
    left_to_the_driver = [
        (column.name, column.type_on(server))
        for column in REQUESTS_COLUMNS
        if column_encoder(column.type_on(server)) is None
    ]
    if server == OLDEST_SERVER:
        assert left_to_the_driver == []
    else:
        assert {column_type for _, column_type in left_to_the_driver} == {"LowCardinality(String)"}


def _fields(descriptor: Descriptor, prefix: str = "") -> Iterator[str]:
    """The dotted paths of a message's fields, down to the leaves (a timestamp, a map is a leaf)."""
    for field in descriptor.fields:
        path = prefix + field.name
        message = field.message_type
        if (
            message is not None
            and field.type == FieldDescriptor.TYPE_MESSAGE
            and not message.GetOptions().map_entry
            and message.full_name != "google.protobuf.Timestamp"
        ):
            yield from _fields(message, path + ".")
        else:
            yield path


def test_every_column_comes_from_a_logmessage_field_and_every_field_is_stored() -> None:
    fields = set(_fields(log_record_pb2.LogMessage.DESCRIPTOR))
    sources = {column.source for column in REQUESTS_COLUMNS if column.source != "writer"}
    assert sources - fields == set(), "sources that are no LogMessage field"
    unstored = {field for field in fields if field.split(".")[0] not in NOT_STORED} - sources
    assert unstored == set(), "LogMessage fields no column of requests holds"


def test_each_column_is_added_by_a_shipped_migration_that_names_it() -> None:
    shipped = {migration.name: migration.sql for migration in load(CLICKHOUSE)}
    for column in REQUESTS_COLUMNS:
        assert column.added_by in shipped, column.name
        assert re.search(rf"^\s*(ADD COLUMN )?{column.name} ", shipped[column.added_by], re.MULTILINE), column.name


def _chdb_columns(tmp_path: Path) -> tuple[str, list[tuple[str, str]]]:
    chdb_session = pytest.importorskip("chdb.session")
    session: Any = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        version = str(session.query("SELECT version()", "CSV")).strip().strip('"')
        session.query("CREATE DATABASE IF NOT EXISTS candela")
        session.query("USE candela")
        for migration in load(CLICKHOUSE):
            for statement in render_clickhouse(migration, clickhouse_gates(version, "candela")):
                session.query(statement)
        result = session.query(
            "SELECT name, type FROM system.columns WHERE database = 'candela' AND table = 'requests' ORDER BY position",
            "JSONCompact",
        )
        return version, [(str(name), str(kind)) for name, kind in json.loads(bytes(result.bytes()))["data"]]
    finally:
        session.close()


def test_the_migrations_make_the_declared_table_on_modern_clickhouse(tmp_path: Path) -> None:
    version, described = _chdb_columns(tmp_path)
    assert int(version.split(".")[0]) >= 19, "chDB is a modern ClickHouse"
    declared = [(column.name, column.type_on(version)) for column in table_order()]
    assert described == declared, (
        f"declared, not made by the migrations: {sorted(set(declared) - set(described))}; "
        f"made, not declared: {sorted(set(described) - set(declared))} (or the order differs)"
    )
