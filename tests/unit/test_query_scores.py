"""What a caller may submit as scores, and the score filters' SQL (pure functions)."""

from __future__ import annotations

import math

import pytest
from google.protobuf import struct_pb2

from candela.query.v1 import query_service_pb2 as pb
from candela_query.filters import FilterCompiler, Params
from candela_query.scores import MAX_SCORE_NAME_CHARS, check_request_id, submitted_scores
from candela_runtime.errors import InvalidArgument, Violations

pytestmark = pytest.mark.unit


def number(value: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=value)


def test_numbers_and_bools_are_kept_as_numbers() -> None:
    violations = Violations()
    scores = {
        "accuracy": number(0.9),
        "helpful": struct_pb2.Value(bool_value=True),
        "toxic": struct_pb2.Value(bool_value=False),
        "rank/top-3 v2:é": number(-2),
    }
    assert submitted_scores(violations, scores) == {
        "accuracy": 0.9,
        "helpful": 1.0,
        "toxic": 0.0,
        "rank/top-3 v2:é": -2.0,
    }
    assert violations.items == []


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("", number(1), "1 to 128 characters"),
        ("x" * (MAX_SCORE_NAME_CHARS + 1), number(1), "1 to 128 characters"),
        ("<script>", number(1), "letters, digits"),
        ("tab\there", number(1), "letters, digits"),
        ("feedback", number(1), "feedback call"),
        ("accuracy", number(math.nan), "finite number"),
        ("accuracy", number(-math.inf), "finite number"),
        ("accuracy", struct_pb2.Value(string_value="0.9"), "the string '0.9'"),
        ("accuracy", struct_pb2.Value(null_value=struct_pb2.NULL_VALUE), "got null"),
    ],
)
def test_each_bad_score_is_named_with_its_reason(name: str, value: struct_pb2.Value, reason: str) -> None:
    violations = Violations()
    assert submitted_scores(violations, {name: value, "fine": number(1)}) == {"fine": 1.0}
    assert len(violations.items) == 1
    assert violations.items[0].field == f"scores[{name[:64]}]"
    assert reason in violations.items[0].description


def test_at_least_one_score_and_a_uuid_request_id() -> None:
    violations = Violations()
    assert submitted_scores(violations, {}) == {}
    assert check_request_id(violations, "req_abc") is None
    with pytest.raises(InvalidArgument) as caught:
        violations.raise_if_any()
    assert [v.field for v in caught.value.violations] == ["scores", "request_id"]


def compile_condition(condition: pb.FilterCondition) -> tuple[str, dict[str, object], list[str]]:
    params = Params()
    violations = Violations()
    sql = FilterCompiler(params, violations).compile(pb.RequestFilter(conditions=[condition]))
    return sql, params.values, [f"{v.field}: {v.description}" for v in violations.items]


def test_a_score_filter_is_an_organization_scoped_subquery_on_the_newest_value() -> None:
    hostile = "x') OR 1=1 --"
    sql, params, problems = compile_condition(
        pb.FilterCondition(field="score", property_key=hostile, operator="gte", value=number(0.5))
    )
    assert problems == []
    assert sql == (
        "(request_id IN (SELECT request_id FROM request_scores WHERE organization_id = toUUID(%(organization_id)s)"
        " AND name = %(p0)s GROUP BY request_id HAVING argMax(value, version) >= %(p1)s))"
    )
    assert params == {"p0": hostile, "p1": 0.5}


def test_feedback_filters_compare_with_one_or_zero() -> None:
    sql, params, problems = compile_condition(
        pb.FilterCondition(field="feedback", operator="equals", value=struct_pb2.Value(bool_value=False))
    )
    assert problems == []
    assert "HAVING argMax(value, version) = %(p1)s" in sql
    assert params == {"p0": "feedback", "p1": 0.0}


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        (
            pb.FilterCondition(field="score", operator="gte", value=number(1)),
            "filter.conditions[0].property_key: is required",
        ),
        (
            pb.FilterCondition(field="score", property_key="a", operator="like", value=number(1)),
            "filter.conditions[0].operator: 'like' does not apply to score",
        ),
        (
            pb.FilterCondition(
                field="score", property_key="a", operator="gt", value=struct_pb2.Value(string_value="1")
            ),
            "filter.conditions[0].value: must be a finite number",
        ),
        (
            pb.FilterCondition(field="feedback", operator="equals", value=number(1)),
            "filter.conditions[0].value: must be true (thumbs up) or false",
        ),
        (
            pb.FilterCondition(
                field="feedback", property_key="x", operator="equals", value=struct_pb2.Value(bool_value=True)
            ),
            "filter.conditions[0].property_key: applies only to fields",
        ),
    ],
    ids=["no-name", "text-operator", "text-value", "number-feedback", "keyed-feedback"],
)
def test_bad_score_filters_are_named(condition: pb.FilterCondition, problem: str) -> None:
    _, _, problems = compile_condition(condition)
    assert any(found.startswith(problem) for found in problems), problems
