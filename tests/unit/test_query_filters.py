"""The filter compiler's whitelist and validation, and the signed cursors (pure functions)."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from candela.query.v1 import query_service_pb2 as pb
from candela_query.cursor import CursorCodec, CursorError, Position
from candela_query.filters import FIELDS, KEYED_FIELDS, OPERATORS, FilterCompiler, Params
from candela_runtime.errors import InvalidArgument, Violations

pytestmark = pytest.mark.unit


def compile_filter(request_filter: pb.RequestFilter) -> tuple[str, dict[str, object]]:
    params = Params()
    violations = Violations()
    sql = FilterCompiler(params, violations).compile(request_filter)
    violations.raise_if_any()
    return sql, params.values


def condition(field: str, operator: str, value: struct_pb2.Value, key: str = "") -> pb.FilterCondition:
    return pb.FilterCondition(field=field, operator=operator, value=value, property_key=key)


def test_caller_text_only_ever_travels_as_bound_parameters() -> None:
    hostile = "x') OR 1=1; DROP TABLE requests --"
    sql, params = compile_filter(
        pb.RequestFilter(
            conditions=[
                condition("property", "equals", struct_pb2.Value(string_value=hostile), key=hostile),
                condition("model", "ilike", struct_pb2.Value(string_value=hostile)),
            ]
        )
    )
    assert hostile not in sql
    assert "DROP" not in sql
    assert list(params.values()).count(hostile) == 3


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_field_accepts_its_operators_and_rejects_the_others(field: str) -> None:
    kind = FIELDS[field].kind
    samples = {
        "text": struct_pb2.Value(string_value="a"),
        "integer": struct_pb2.Value(number_value=3),
        "decimal": struct_pb2.Value(string_value="0.25"),
        "time": struct_pb2.Value(string_value="2026-01-01T00:00:00Z"),
        "bool": struct_pb2.Value(bool_value=True),
        "uuid": struct_pb2.Value(string_value="6b0f7d5e-8a55-4c1f-9f3e-0d1c2b3a4f5e"),
        "number": struct_pb2.Value(number_value=0.5),
    }
    key = "feature" if field in KEYED_FIELDS else ""
    for operator in ("equals", "not_equals", "contains", "like", "ilike", "gt", "gte", "lt", "lte"):
        request_filter = pb.RequestFilter(conditions=[condition(field, operator, samples[kind.value], key)])
        if operator in OPERATORS[kind]:
            compile_filter(request_filter)
        else:
            with pytest.raises(InvalidArgument) as caught:
                compile_filter(request_filter)
            assert [v.field for v in caught.value.violations] == ["filter.conditions[0].operator"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("latency_ms", struct_pb2.Value(string_value="slow"), "integer"),
        ("latency_ms", struct_pb2.Value(number_value=1.5), "integer"),
        ("model", struct_pb2.Value(number_value=4), "string"),
        ("cost_usd", struct_pb2.Value(string_value="cheap"), "decimal"),
        ("created_at", struct_pb2.Value(string_value="last tuesday"), "RFC 3339"),
        ("cache_hit", struct_pb2.Value(string_value="yes"), "true or false"),
        ("request_id", struct_pb2.Value(string_value="42"), "UUID"),
    ],
)
def test_a_wrong_value_type_names_the_value(field: str, value: struct_pb2.Value, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        compile_filter(pb.RequestFilter(all=[pb.RequestFilter(conditions=[condition(field, "equals", value)])]))
    [violation] = caught.value.violations
    assert violation.field == "filter.all[0].conditions[0].value"
    assert message in violation.description


def test_too_deep_or_too_many_conditions_are_refused() -> None:
    deep = pb.RequestFilter(model="m")
    for _ in range(10):
        deep = pb.RequestFilter(all=[deep])
    with pytest.raises(InvalidArgument):
        compile_filter(deep)
    wide = pb.RequestFilter(conditions=[condition("model", "equals", struct_pb2.Value(string_value="m"))] * 101)
    with pytest.raises(InvalidArgument) as caught:
        compile_filter(wide)
    assert "at most 100" in caught.value.violations[0].description


def test_a_prompt_input_filter_binds_its_variable_name_and_needs_one() -> None:
    sql, params = compile_filter(
        pb.RequestFilter(
            conditions=[condition("prompt_input", "equals", struct_pb2.Value(string_value="Brest"), "city")]
        )
    )
    assert sql == "(prompt_input_values[indexOf(prompt_input_keys, %(p0)s)] = %(p1)s)"
    assert params == {"p0": "city", "p1": "Brest"}
    with pytest.raises(InvalidArgument) as caught:
        compile_filter(
            pb.RequestFilter(conditions=[condition("prompt_input", "equals", struct_pb2.Value(string_value="x"))])
        )
    [violation] = caught.value.violations
    assert (violation.field, violation.description) == (
        "filter.conditions[0].property_key",
        "is required with field 'prompt_input'",
    )


def test_an_empty_filter_matches_everything() -> None:
    assert compile_filter(pb.RequestFilter()) == ("1", {})


def test_cursors_round_trip_and_refuse_forgery_or_another_query() -> None:
    codec = CursorCodec("secret")
    cursor = codec.encode(Position(1_767_225_600_000_000, "6b0f7d5e-8a55-4c1f-9f3e-0d1c2b3a4f5e"), "digest-a")
    assert codec.decode(cursor, "digest-a") == Position(1_767_225_600_000_000, "6b0f7d5e-8a55-4c1f-9f3e-0d1c2b3a4f5e")
    with pytest.raises(CursorError, match="another filter"):
        codec.decode(cursor, "digest-b")
    with pytest.raises(CursorError):
        CursorCodec("other secret").decode(cursor, "digest-a")
    for garbage in ("", "abc", "a.b.c", "!!!.???", cursor[:-3] + "xyz", "x" * 5000):
        with pytest.raises(CursorError):
            codec.decode(garbage, "digest-a")
