"""The protobuf field numbers the wire code reads and writes by hand, in one place.

The packer (candela_ingest.packing) writes LogMessages field by field and the C decoder (_logwire.c) reads
LogMessages and IngestRequests field by field, without the protobuf runtime: both take their field numbers
from here (the C decoder through ``_tags.h``, generated from this module by ``python -m
candela_ingest.wire.tags``). A unit test checks each enum below against its message's descriptor, both
ways (a field added to the proto but not here fails it), and ``_tags.h`` against this module.
"""

from __future__ import annotations

import enum
import re
import sys

from candela_ingest.wire.varint import varint

WIRE_VARINT = 0
"""The wire type of an integer or bool field."""
WIRE_LEN = 2
"""The wire type of a string, bytes, message or map field (length-delimited)."""


class Timestamp(enum.IntEnum):
    """google.protobuf.Timestamp."""

    SECONDS = 1
    NANOS = 2


class TokenUsage(enum.IntEnum):
    """candela.logs.v1.TokenUsage."""

    PROMPT_TOKENS = 1
    COMPLETION_TOKENS = 2
    TOTAL_TOKENS = 3
    CACHE_READ_TOKENS = 4
    CACHE_WRITE_TOKENS = 5
    REASONING_TOKENS = 6
    AUDIO_PROMPT_TOKENS = 7
    AUDIO_COMPLETION_TOKENS = 8


class LogRecord(enum.IntEnum):
    """candela.logs.v1.LogRecord."""

    REQUEST_ID = 1
    ORGANIZATION_ID = 2
    API_KEY_ID = 3
    CREATED_AT = 4
    PROVIDER = 5
    MODEL = 6
    RESPONSE_MODEL = 7
    PATH = 8
    STATUS_CODE = 9
    ERROR = 10
    STREAMED = 11
    LATENCY_MS = 12
    TIME_TO_FIRST_TOKEN_MS = 13
    USAGE = 14
    COST_USD = 15
    USER_ID = 16
    SESSION_ID = 17
    SESSION_PATH = 18
    SESSION_NAME = 19
    PROPERTIES = 20
    PROMPT_ID = 21
    PROMPT_VERSION = 22
    CACHE_HIT = 23
    REQUEST_BODY_OMITTED = 24
    RESPONSE_BODY_OMITTED = 25
    FINISH_REASON = 26
    TARGET_URL = 27
    COST_SAVED_USD = 28
    ATTEMPTS = 29
    PROMPT_INPUTS = 30
    USAGE_CLAMPED = 31
    REQUEST_BODY_OVER_LIMIT = 32
    RESPONSE_BODY_OVER_LIMIT = 33
    TRACE_ID = 34


class UpstreamAttempt(enum.IntEnum):
    """candela.logs.v1.UpstreamAttempt."""

    TARGET_URL = 1
    STATUS_CODE = 2
    ERROR = 3
    LATENCY_MS = 4


class BodyRef(enum.IntEnum):
    """candela.logs.v1.BodyRef."""

    OBJECT_KEY = 1
    OFFSET = 2
    LENGTH = 3
    FRAME_OFFSET = 4
    FRAME_LENGTH = 5


class LogMessage(enum.IntEnum):
    """candela.logs.v1.LogMessage."""

    RECORD = 1
    REQUEST_BODY = 2
    RESPONSE_BODY = 3
    INGESTED_AT = 4
    UPDATE = 100


class MapEntry(enum.IntEnum):
    """Any map field's entry (``map<K, V>`` is ``repeated {K key = 1; V value = 2;}`` on the wire)."""

    KEY = 1
    VALUE = 2


class IngestRecord(enum.IntEnum):
    """candela.ingest.v1.IngestRecord."""

    RECORD = 1
    REQUEST_BODY = 2
    RESPONSE_BODY = 3
    TRACE_CONTEXT = 4


class IngestRequest(enum.IntEnum):
    """candela.ingest.v1.IngestRequest."""

    RECORDS = 1


MESSAGES: tuple[type[enum.IntEnum], ...] = (
    Timestamp,
    TokenUsage,
    LogRecord,
    UpstreamAttempt,
    BodyRef,
    LogMessage,
    MapEntry,
    IngestRecord,
    IngestRequest,
)
"""Every message whose fields the wire code reads or writes by hand."""


def tag(field: enum.IntEnum, wire_type: int) -> bytes:
    """The encoded tag of ``field``: its number and wire type as a varint."""
    return varint(field << 3 | wire_type)


def c_header() -> str:
    """``_tags.h``: each field number as a C constant named ``<MESSAGE>_<FIELD>`` (``LOG_RECORD_MODEL``)."""
    lines = [
        "/* Generated from candela_ingest/wire/tags.py by `python -m candela_ingest.wire.tags`: do not edit.",
        "   The protobuf field numbers the C decoder reads (a unit test checks this file is current). */",
        "#ifndef CANDELA_WIRE_TAGS_H",
        "#define CANDELA_WIRE_TAGS_H",
    ]
    for message in MESSAGES:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", message.__name__).upper()
        lines.append("")
        lines.extend(f"#define {prefix}_{field.name} {field.value}" for field in message)
    lines.append("")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(c_header())
