"""The field numbers the wire code uses by hand (candela_ingest.wire.tags) are the protos', and the C
decoder's header is generated from them; the two wire decoders (C and its pure-Python twin) name the same
columns."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import _logwire, _logwire_py, logwire, tags

pytestmark = [pytest.mark.unit, pytest.mark.wire]

_MAP_ENTRY = log_record_pb2.LogRecord.DESCRIPTOR.fields_by_name["properties"].message_type
assert _MAP_ENTRY is not None
_DESCRIPTORS: dict[type[enum.IntEnum], Descriptor] = {
    tags.Timestamp: timestamp_pb2.Timestamp.DESCRIPTOR,
    tags.TokenUsage: log_record_pb2.TokenUsage.DESCRIPTOR,
    tags.LogRecord: log_record_pb2.LogRecord.DESCRIPTOR,
    tags.UpstreamAttempt: log_record_pb2.UpstreamAttempt.DESCRIPTOR,
    tags.BodyRef: log_record_pb2.BodyRef.DESCRIPTOR,
    tags.LogMessage: log_record_pb2.LogMessage.DESCRIPTOR,
    tags.MapEntry: _MAP_ENTRY,
    tags.IngestRecord: ingest_service_pb2.IngestRecord.DESCRIPTOR,
    tags.IngestRequest: ingest_service_pb2.IngestRequest.DESCRIPTOR,
}


def test_every_message_of_tags_is_checked() -> None:
    assert set(tags.MESSAGES) == set(_DESCRIPTORS)


@pytest.mark.parametrize("message", tags.MESSAGES, ids=lambda message: message.__name__)
def test_each_message_has_exactly_its_descriptors_fields_and_numbers(message: type[enum.IntEnum]) -> None:
    descriptor = _DESCRIPTORS[message]
    assert {field.name.upper(): field.value for field in message} == {
        field.name.upper(): field.number for field in descriptor.fields
    }, f"tags.{message.__name__} and {descriptor.full_name} differ: a field added to one only?"


def test_every_map_field_read_by_hand_has_the_entry_layout_of_tags() -> None:
    for descriptor in (log_record_pb2.LogRecord.DESCRIPTOR, ingest_service_pb2.IngestRecord.DESCRIPTOR):
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                assert {f.name: f.number for f in field.message_type.fields} == {"key": 1, "value": 2}


def test_the_c_header_is_generated_from_tags() -> None:
    header = Path(tags.__file__).with_name("_tags.h").read_text()
    assert header == tags.c_header(), "run: uv run python -m candela_ingest.wire.tags > .../wire/_tags.h"


def test_tag_encodes_the_number_and_the_wire_type() -> None:
    assert tags.tag(tags.LogMessage.RECORD, tags.WIRE_LEN) == b"\x0a"
    assert tags.tag(tags.BodyRef.FRAME_LENGTH, tags.WIRE_VARINT) == b"\x28"
    assert tags.tag(tags.LogMessage.UPDATE, tags.WIRE_LEN) == b"\xa2\x06"


def test_both_decoders_name_the_same_columns() -> None:
    assert _logwire.COLUMNS == _logwire_py.COLUMNS
    assert logwire.COLUMNS == _logwire.COLUMNS


def test_the_switch_takes_1_0_or_nothing() -> None:
    assert logwire.no_extensions("1") is True
    assert logwire.no_extensions("0") is False
    assert logwire.no_extensions("") is False
    assert logwire.no_extensions(None) is False
    with pytest.raises(ValueError, match="CANDELA_NO_EXTENSIONS"):
        logwire.no_extensions("yes")


@pytest.mark.parametrize(("value", "module"), [("1", "candela_ingest.wire._logwire_py"), ("0", "_logwire")])
def test_the_switch_is_read_at_import(value: str, module: str) -> None:
    program = "from candela_ingest.wire import logwire; print(logwire.columns.__module__ or 'built-in')"
    environment = {**os.environ, "CANDELA_NO_EXTENSIONS": value}
    command = [sys.executable, "-c", program]
    result = subprocess.run(command, env=environment, capture_output=True, check=True, text=True)
    assert module in result.stdout
