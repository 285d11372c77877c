"""Hypothesis strategies derived from the API's descriptors: any request of any RPC, parsed or not.

Every RPC and REST route is found in the descriptors of the generated package ``candela`` (not in a list
kept by hand), so a new RPC is fuzzed by the property tests without editing them. A request is mostly a
plausible message (fields named in a :data:`Vocabulary` set to values that exist) with one or two fields
set to arbitrary values, since most bugs hide behind validation that a wholly random request rarely
passes; otherwise a wholly arbitrary message (text with NULs and any non-surrogate code point, integers
at their bounds, floats incl. NaN, unknown enum numbers, nested and repeated messages, maps, timestamps
out of range), or bytes that do not parse: random, a valid message damaged, a string field that is not
UTF-8, or a recursive field nested past protobuf's limit. REST calls get the same values in their paths,
query strings and JSON bodies, plus bodies that are not JSON.
"""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

import candela

MAX_DEPTH = 3
"""How deep generated messages nest (deeper nesting is made as bytes, see :func:`deeply_nested`)."""

_INTEGER_BOUNDS = {
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

# Text a caller might send on purpose or by mistake, beside random text: what the services parse (times,
# UUIDs, templates, page tokens), what Postgres refuses (NUL) and what parsers recurse on.
TRICKY_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\U0001d7d8",  # a digit outside ASCII (int() reads it; a regex [0-9] does not)
    "²",  # a digit to str.isdigit(), not to int()
    "١٢",
    "9" * 40,
    "-1",
    "1e309",
    "NaN",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-01-05T00:00:00Z",
    "00000000-0000-0000-0000-000000000000",
    "{{",
    "}}",
    "{{ name }}",
    "Hello {{name}}",
    "\\{{",
    '[{"role": "user", "content": "Hi {{name}}"}]',
    '[{"role": "user", "content": "\\u0000"}]',
    "[" * 100_000,
    "{" * 100_000,
    "{{" * 50_000,
    '[{"role": "x", "content": ' + "[" * 5000 + "]" * 5000 + "}]",
    # Page tokens and cursors are base64: these decode to positions no store can hold.
    *(base64.urlsafe_b64encode(text.encode()).decode() for text in ("p", "v", "v:-1", "v:" + "9" * 22, "p:\x00")),
    "x.y",
    "%",
    "_",
    "%ff",
    "\U0010ffff",
)


def candela_services() -> list[ServiceDescriptor]:
    """Every gRPC service of the generated ``candela`` package (importing each ``*_pb2`` module)."""
    services: dict[str, ServiceDescriptor] = {}
    for module_info in pkgutil.walk_packages(candela.__path__, "candela."):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(module_info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                services[service.full_name] = service
    return [services[name] for name in sorted(services)]


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 path of a gRPC method: ``/package.Service/Method``."""
    return f"/{method.containing_service.full_name}/{method.name}"


@dataclass(frozen=True)
class RestRoute:
    """One ``google.api.http`` binding of an RPC."""

    method: MethodDescriptor
    verb: str
    template: str
    body: str

    @property
    def path_fields(self) -> list[str]:
        """The request fields bound to ``{name}`` segments of the path."""
        return [segment[1:-1].split("=")[0] for segment in self.template.split("/") if segment.startswith("{")]


def rest_routes(services: Sequence[ServiceDescriptor]) -> list[RestRoute]:
    """Every REST route declared on the RPCs of ``services`` (additional bindings included)."""
    routes = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                verb = binding.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    continue
                routes.append(RestRoute(method, verb.upper(), getattr(binding, verb), binding.body))
    return routes


Vocabulary = Mapping[str, Sequence[Any]]
"""Plausible values by field name (``prompt_id``: ids that exist, ``seconds``: recent times, ...), so that
generated requests often get past validation to the code behind it. Keyed by name, not by RPC, so a new
RPC with familiar fields is reached too."""

SHORT_TRICKY = ("\x00", "²", "9" * 40, "-1", " ", "%ff", "\U0010ffff", "'", "\\", "{{", "é", "\n")


def hostile_text(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Text meant to break what reads it: a ``known`` value with a NUL or odd text added, the same
    base64-encoded (page tokens and cursors are), tricky or random text. Never a surrogate: protobuf
    strings are UTF-8."""
    base = st.sampled_from(known) if known else st.text(st.characters(codec="utf-8"), max_size=8)
    with_nul = st.builds(lambda value, at: value[:at] + "\x00" + value[at:], base, st.integers(0, 8))
    extended = st.builds(lambda value, extra: value + extra, base, st.sampled_from(SHORT_TRICKY))
    encoded = st.one_of(base, with_nul, extended).map(lambda value: base64.urlsafe_b64encode(value.encode()).decode())
    return st.one_of(
        with_nul,
        extended,
        encoded,
        st.sampled_from(TRICKY_TEXT),
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.text(st.sampled_from("\x00{}[]\"'\\%_.:/-aZ9é\u202e😀"), max_size=20),
    )


def _scalar(field: FieldDescriptor, vocabulary: Vocabulary) -> st.SearchStrategy[Any]:
    """Any value of a scalar field (sometimes a plausible one)."""
    kind = field.type
    known = _known(field, vocabulary)
    plausible = [st.sampled_from(known)] if known else []
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(*plausible, hostile_text(known))
    if kind in _INTEGER_BOUNDS:
        low, high = _INTEGER_BOUNDS[kind]
        edges = st.sampled_from((low, high, 0, 1, -1 if low else 2, 2**31 - 1))
        return st.one_of(*plausible, edges, st.integers(low, high))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None, field.full_name
        named = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(named), st.sampled_from(named), st.integers(-(2**31), 2**31 - 1))
    raise AssertionError(f"no strategy for field type {kind} of {field.full_name}")


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _known(field: FieldDescriptor, vocabulary: Vocabulary) -> list[Any]:
    """The vocabulary's values for a field of this name that fit its type."""
    if field.type == FieldDescriptor.TYPE_STRING:
        wanted: type = str
    elif field.type in _INTEGER_BOUNDS:
        wanted = int
    else:
        return []
    return [value for value in vocabulary.get(field.name, ()) if isinstance(value, wanted)]


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and _message_type(field).GetOptions().map_entry


def field_values(field: FieldDescriptor, vocabulary: Vocabulary, depth: int) -> st.SearchStrategy[Any] | None:
    """Any value of ``field`` as a message constructor takes it (a list, a dict, a message, a scalar);
    None for a message field deeper than :data:`MAX_DEPTH`."""
    if _is_map(field):
        entry = _message_type(field)
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        values = field_values(value, vocabulary, depth)
        if values is None:
            return None
        return st.dictionaries(_scalar(key, vocabulary), values, max_size=3)
    single: st.SearchStrategy[Any]
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= MAX_DEPTH:
            return None
        entry = _message_type(field)
        single = st.deferred(lambda: messages(entry, vocabulary, depth + 1))
    else:
        single = _scalar(field, vocabulary)
    return st.lists(single, max_size=3) if field.is_repeated else single


def messages(descriptor: Descriptor, vocabulary: Vocabulary, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set to arbitrary values."""
    optional = {field.name: field_values(field, vocabulary, depth) for field in descriptor.fields}
    return _build(descriptor, st.fixed_dictionaries({}, optional={k: v for k, v in optional.items() if v is not None}))


def _build(descriptor: Descriptor, fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Message]:
    message_class = message_factory.GetMessageClass(descriptor)
    return fields.map(lambda values: message_class(**values))


def _plausible_fields(descriptor: Descriptor, vocabulary: Vocabulary, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Constructor arguments of a plausible message: every field with known values set to one of them,
    sub-messages (two levels deep) sometimes, the rest left at their defaults."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            entry = _message_type(field)
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            keys, values = _known(key, vocabulary), _known(value, vocabulary)
            if keys and value.type != FieldDescriptor.TYPE_MESSAGE:
                entry_values = st.sampled_from(values) if values else _scalar(value, vocabulary)
                optional[field.name] = st.dictionaries(st.sampled_from(keys), entry_values, max_size=2)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 2:
                single = _build(_message_type(field), _plausible_fields(_message_type(field), vocabulary, depth + 1))
                optional[field.name] = st.lists(single, min_size=1, max_size=2) if field.is_repeated else single
        elif known := _known(field, vocabulary):
            single = st.sampled_from(known)
            required[field.name] = st.lists(single, min_size=1, max_size=2) if field.is_repeated else single
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def perturbed(draw: st.DrawFn, descriptor: Descriptor, vocabulary: Vocabulary) -> Message:
    """A plausible message with one or two of its fields set to arbitrary values: most bugs hide behind
    validation, which a wholly random request rarely passes."""
    values = draw(_plausible_fields(descriptor, vocabulary, 0))
    fields = [field for field in descriptor.fields if field_values(field, vocabulary, 1) is not None]
    if fields:
        for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique_by=lambda f: f.name)):
            strategy = field_values(field, vocabulary, 1)
            assert strategy is not None
            values[field.name] = draw(strategy)
    message: Message = message_factory.GetMessageClass(descriptor)(**values)
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _wrap(fields: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    for field in reversed(fields):
        payload = _length_delimited(field.number, payload)
    return payload


def _cycles(descriptor: Descriptor) -> Iterator[tuple[list[FieldDescriptor], list[FieldDescriptor]]]:
    """(path to a recursive message, the fields that lead from it back to itself) for each cycle found."""

    def walk(current: Descriptor, path: list[FieldDescriptor], stack: list[Descriptor]) -> Iterator[Any]:
        for field in current.fields:
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            target = _message_type(field)
            if target in stack:
                start = stack.index(target)
                yield path[:start], [*path[start:], field]
            elif len(stack) < 6:
                yield from walk(target, [*path, field], [*stack, target])

    yield from walk(descriptor, [], [descriptor])


def _string_paths(descriptor: Descriptor, depth: int = 0) -> Iterator[list[FieldDescriptor]]:
    """Paths to string fields, at most three messages deep."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield [field]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            for rest in _string_paths(_message_type(field), depth + 1):
                yield [field, *rest]


def deeply_nested(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A recursive field of the request nested 1-130 times (protobuf parses at most 100 levels)."""
    cycles = list(_cycles(descriptor))
    if not cycles:
        return st.nothing()
    return st.builds(
        lambda cycle, times: _wrap(cycle[0] + cycle[1] * times, b""), st.sampled_from(cycles), st.integers(1, 130)
    )


def not_utf8(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A string field holding bytes that are not UTF-8."""
    paths = list(_string_paths(descriptor))
    if not paths:
        return st.nothing()
    bad = st.sampled_from((b"\xff\xfe", b"\xc3", b"a\xed\xa0\x80b", b"\xf4\x90\x80\x80", b"ok\x80"))
    return st.builds(
        lambda path, value: _wrap(path[:-1], _length_delimited(path[-1].number, value)), st.sampled_from(paths), bad
    )


def damaged(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings cut short, with a byte changed, or with junk appended."""

    def damage(data: bytes, position: int, byte: int, how: int) -> bytes:
        if not data:
            return bytes([byte])
        position %= len(data)
        if how == 0:
            return data[:position]
        if how == 1:
            return data[:position] + bytes([byte]) + data[position + 1 :]
        return data + bytes([byte, 0xFF, 0xFF])

    return st.builds(damage, valid, st.integers(0, 2**16), st.integers(0, 255), st.integers(0, 2))


def request_bytes(descriptor: Descriptor, vocabulary: Vocabulary) -> st.SearchStrategy[bytes]:
    """Any bytes a caller could send as the request of an RPC taking ``descriptor``: mostly messages (a
    plausible one with a field or two set to arbitrary values, or a wholly arbitrary one), otherwise
    bytes that do not parse."""
    near_valid = perturbed(descriptor, vocabulary).map(lambda message: message.SerializeToString())
    arbitrary = messages(descriptor, vocabulary).map(lambda message: message.SerializeToString())
    return st.one_of(
        near_valid,
        near_valid,
        near_valid,
        near_valid,
        arbitrary,
        arbitrary,
        st.binary(max_size=64),
        damaged(arbitrary),
        not_utf8(descriptor),
        deeply_nested(descriptor),
    )


@dataclass(frozen=True)
class RestCall:
    """One HTTP request to a REST route: its path and query string already percent-encoded."""

    path: str
    query: str
    body: bytes | None


def _percent_encoded(data: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in data)


def _url_text(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """A path segment or query value: text percent-encoded as UTF-8, or bytes that are not UTF-8."""
    # Cut to what fits in a URL: a longer one is refused before it is sent (the gateway answers 414 anyway).
    return st.one_of(
        text_of(known).map(lambda value: urllib.parse.quote(value[:2000], safe="")),
        st.binary(min_size=1, max_size=6).map(_percent_encoded),
        st.sampled_from(("%FF%FE", "%00", "%C3", "%ED%A0%80", "%2F", "..", "%25", "a%2Fb")),
    )


def text_of(known: Sequence[str]) -> st.SearchStrategy[str]:
    """A known value or hostile text."""
    return st.one_of(st.sampled_from(known), hostile_text(known)) if known else hostile_text()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_text(), children, max_size=3),
    max_leaves=8,
)


def _json_bytes(message: Message) -> bytes:
    """The proto3 JSON of ``message``; ``{}`` for values JSON cannot carry (a Timestamp out of range)."""
    try:
        return json_format.MessageToJson(message).encode()
    except (json_format.Error, ValueError):
        return b"{}"


def _nested_json(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A recursive field nested 1-300 levels in JSON (``{"filter": {"all": [{"all": [...]}]}}``)."""
    cycles = list(_cycles(descriptor))
    if not cycles:
        return st.nothing()

    def nest(cycle: tuple[list[FieldDescriptor], list[FieldDescriptor]], times: int) -> bytes:
        value: Any = {}
        for field in reversed(cycle[0] + cycle[1] * times):
            value = {field.json_name: [value] if field.is_repeated else value}
        return json.dumps(value).encode()

    return st.builds(nest, st.sampled_from(cycles), st.integers(1, 300))


def _bodies(descriptor: Descriptor, vocabulary: Vocabulary) -> st.SearchStrategy[bytes]:
    names = [field.json_name for field in descriptor.fields] + [field.name for field in descriptor.fields]
    loose = st.dictionaries(st.sampled_from(names), _JSON, max_size=4).map(lambda value: json.dumps(value).encode())
    strings = [field.json_name for field in descriptor.fields if field.type == FieldDescriptor.TYPE_STRING]
    not_utf8_json = st.nothing()
    if strings:
        not_utf8_json = st.builds(
            lambda name, raw: b'{"' + name.encode() + b'": "' + raw + b'"}',
            st.sampled_from(strings),
            st.binary(min_size=1, max_size=6),
        )
    return st.one_of(
        perturbed(descriptor, vocabulary).map(_json_bytes),
        perturbed(descriptor, vocabulary).map(_json_bytes),
        messages(descriptor, vocabulary).map(_json_bytes),
        loose,
        not_utf8_json,
        _nested_json(descriptor),
        st.binary(max_size=64),
        st.sampled_from((b"", b"[" * 100_000, b'{"a": ' * 50_000, b"null", b"[]", b'"x"', b"{}")),
    )


def rest_calls(route: RestRoute, vocabulary: Vocabulary) -> st.SearchStrategy[RestCall]:
    """Any request to ``route``: arbitrary path parameters (bytes that are not UTF-8 included), query
    parameters for its message's scalar fields, and a JSON body (or bytes that are not JSON) when it has one."""
    request_type = route.method.input_type
    segments = {
        name: _url_text(_known(request_type.fields_by_name[name], vocabulary))
        if name in request_type.fields_by_name
        else _url_text()
        for name in route.path_fields
    }
    scalars = [
        field
        for field in request_type.fields
        if field.type != FieldDescriptor.TYPE_MESSAGE and field.name not in route.path_fields
    ]
    parameters: st.SearchStrategy[list[tuple[str, str]]] = st.just([])
    if scalars:
        parameter = st.tuples(
            st.sampled_from([name for field in scalars for name in (field.name, field.json_name)]),
            st.one_of(_url_text(), st.integers(-(2**64), 2**64).map(str)),
        )
        parameters = st.lists(parameter, max_size=3)
    body = _bodies(request_type, vocabulary) if route.body else st.none()

    def build(values: dict[str, str], parameters: list[tuple[str, str]], content: bytes | None) -> RestCall:
        path = re.sub(r"\{([a-z_][a-z0-9_.]*)(?:=[^}]*)?\}", lambda match: values[match.group(1)], route.template)
        query = "&".join(f"{name}={value}" for name, value in parameters)
        return RestCall(path, query, content)

    return st.builds(build, st.fixed_dictionaries(segments), parameters, body)
