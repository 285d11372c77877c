"""Hypothesis strategies for the log wire format, derived from the message descriptors.

Every field of LogMessage, LogRecord and their sub-messages is found in the descriptors (not in a list kept
by hand), so a field added to the proto is set, left unset or set to its empty value by the property tests
of the wire decoder and the packer without editing them. A :data:`Vocabulary` gives plausible values by
field name (costs, ids, times), mixed with arbitrary ones, or, in a strict vocabulary, the only values
(to build valid records).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

Vocabulary = Mapping[str, Sequence[Any]]
"""Values by field name, in any message (``seconds`` is created_at's and ingested_at's)."""

INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
TEXT = st.one_of(st.sampled_from(["", "openai", "gpt-4o-mini", str(uuid.uuid4())]), st.text(max_size=12))

PLAUSIBLE: Vocabulary = {
    "seconds": [946_684_800, 1_796_000_000, 4_102_444_800, 0, -1],
    "nanos": [0, 999_999_999, 1_000_000_000, -1],
    "status_code": [0, 200, 429],
    "time_to_first_token_ms": [0],
    "cost_usd": ["", "0", "0.0001605", "1e3", "NaN", "-1", "abc"],
    "cost_saved_usd": ["", "0", "0.0001605", "1e3", "NaN", "-1", "abc"],
    "object_key": ["", "bodies/o/1.zst"],
}
"""Values the decoder and the checks treat specially, drawn beside arbitrary ones."""


def scalars(field: FieldDescriptor, vocabulary: Vocabulary = PLAUSIBLE, *, strict: bool = False) -> Any:
    """Any value of a scalar field; with ``strict``, only the vocabulary's values for it (when it has some)."""
    known = vocabulary.get(field.name)
    if known and strict:
        return st.sampled_from(known)
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        base: st.SearchStrategy[Any] = TEXT
    elif kind in INT_BOUNDS:
        low, high = INT_BOUNDS[kind]
        base = st.one_of(st.sampled_from((low, high, 0, 1)), st.integers(low, high))
    elif kind == FieldDescriptor.TYPE_BOOL:
        base = st.booleans()
    elif kind == FieldDescriptor.TYPE_BYTES:
        base = st.binary(max_size=16)
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        base = st.floats(allow_nan=False, width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    elif kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        base = st.sampled_from([value.number for value in field.enum_type.values])
    else:
        raise AssertionError(f"no strategy for {field.full_name}")
    return st.one_of(st.sampled_from(known), base) if known else base


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def messages(
    draw: st.DrawFn,
    descriptor: Descriptor,
    vocabulary: Vocabulary = PLAUSIBLE,
    *,
    exclude: Collection[str] = (),
    strict: bool = False,
) -> Message:
    """A message of ``descriptor`` with each field (but ``exclude``) left unset or set to any value of its
    type: sub-messages, repeated fields and maps (up to three entries) included."""
    message: Message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if field.name in exclude or not draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        if _is_map(field):
            assert field.message_type is not None
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            target.update(draw(st.dictionaries(scalars(key), scalars(value, vocabulary, strict=strict), max_size=3)))
        elif field.message_type is not None:
            sub = messages(field.message_type, vocabulary, strict=strict)
            if field.is_repeated:
                target.extend(draw(st.lists(sub, max_size=3)))
            else:
                target.CopyFrom(draw(sub))
                target.SetInParent()
        elif field.is_repeated:
            target.extend(draw(st.lists(scalars(field, vocabulary, strict=strict), max_size=3)))
        else:
            setattr(message, field.name, draw(scalars(field, vocabulary, strict=strict)))
    return message
