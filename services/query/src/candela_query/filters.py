"""The filter tree of QueryRequests compiled to a ClickHouse WHERE clause, from a whitelist only.

Every field maps to a fixed SQL expression and every operator to a fixed SQL template; the only text a
caller controls is bound as a driver parameter (``%(pN)s``), so a property key or value can never inject
SQL. The SQL uses only functions that ClickHouse 18.16 and modern ClickHouse both have (no ILIKE, no
JSONExtract, no Map, no tuple comparison), so one builder serves both dialects.

Validation collects every mistake as a field violation (e.g. ``filter.any[1].conditions[0].operator``)
and raises them together as INVALID_ARGUMENT.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf import struct_pb2

from candela.query.v1 import query_service_pb2 as pb
from candela_query.scores import FEEDBACK_SCORE, score_condition
from candela_runtime.errors import Violations
from candela_runtime.timestamps import TimeRange, checked_micros

MAX_FILTER_DEPTH = 8
MAX_FILTER_CONDITIONS = 100
MAX_TEXT_VALUE = 1024
STORED_TIMES = TimeRange(0, 2**32 - 1, "what ClickHouse's DateTime holds")
"""The times a request's Timestamp fields may name: 1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z."""


class Kind(enum.Enum):
    """The type of a filterable field, which decides its operators and value type."""

    TEXT = "text"
    INTEGER = "integer"
    DECIMAL = "decimal"
    TIME = "time"
    BOOL = "bool"
    UUID = "uuid"
    NUMBER = "number"


@dataclass(frozen=True)
class Field:
    """A filterable column: its SQL expression and type."""

    sql: str
    kind: Kind
    # An extra condition the row must meet for the field to have a value (e.g. a first token).
    present: str = ""


TEXT_OPERATORS = frozenset({"equals", "not_equals", "contains", "like", "ilike"})
ORDER_OPERATORS = frozenset({"equals", "not_equals", "gt", "gte", "lt", "lte"})
OPERATORS: dict[Kind, frozenset[str]] = {
    Kind.TEXT: TEXT_OPERATORS,
    Kind.INTEGER: ORDER_OPERATORS,
    Kind.DECIMAL: ORDER_OPERATORS,
    Kind.TIME: ORDER_OPERATORS,
    Kind.BOOL: frozenset({"equals", "not_equals"}),
    Kind.UUID: frozenset({"equals", "not_equals"}),
    Kind.NUMBER: ORDER_OPERATORS,
}
_COMPARISONS = {"equals": "=", "not_equals": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

PROPERTY = "property"
# A property's value by name, the name matched without regard to case: header names are case-insensitive
# (the proxy stores them lower-cased), and a log sent straight to Ingest may spell a name in any case.
PROPERTY_VALUE = "property_values[indexOf(arrayMap(name -> lowerUTF8(name), property_keys), lowerUTF8({key}))]"
# One input of the rendered prompt; its variable name travels in `property_key` too, so no new proto
# field is needed: the key names a property or a prompt input, whichever the field says.
PROMPT_INPUT = "prompt_input"
# A score's newest value (its name in `property_key`) and the feedback: both read request_scores through a
# subquery (candela_query.scores.score_condition); a request without the score matches no condition on it.
SCORE = "score"
FEEDBACK = "feedback"
SCORE_FIELDS = frozenset({SCORE, FEEDBACK})
KEYED_FIELDS = frozenset({PROPERTY, PROMPT_INPUT, SCORE})
FIELDS: dict[str, Field] = {
    **{
        name: Field(name, Kind.TEXT)
        for name in (
            "model",
            "provider",
            "response_model",
            "path",
            "error",
            "finish_reason",
            "user_id",
            "api_key_id",
            "session_id",
            "session_path",
            "session_name",
            "prompt_id",
            "prompt_version",
            "trace_id",
        )
    },
    **{
        name: Field(name, Kind.INTEGER)
        for name in ("status_code", "latency_ms", "prompt_tokens", "completion_tokens", "total_tokens")
    },
    "time_to_first_token_ms": Field("time_to_first_token_ms", Kind.INTEGER, present="time_to_first_token_ms >= 0"),
    "cost_usd": Field("cost_usd", Kind.DECIMAL, present="priced = 1"),
    "created_at": Field("created_at_us", Kind.TIME),
    "cache_hit": Field("cache_hit", Kind.BOOL),
    "streamed": Field("streamed", Kind.BOOL),
    "priced": Field("priced", Kind.BOOL),
    "request_id": Field("request_id", Kind.UUID),
    # The value of one property ('' when the request lacks it); the key is bound too.
    PROPERTY: Field(PROPERTY_VALUE, Kind.TEXT),
    # The value of one prompt input ('' when the request has none of that name).
    PROMPT_INPUT: Field("prompt_input_values[indexOf(prompt_input_keys, {key})]", Kind.TEXT),
    # Compiled by FilterCompiler._score, not from an expression on the requests table.
    SCORE: Field("", Kind.NUMBER),
    FEEDBACK: Field("", Kind.BOOL),
}

_INT64_MAX = 2**63 - 1


class Params:
    """Bound parameters of one query, named ``p0``, ``p1``, ... in order of use."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        """The placeholder of ``value`` (added to the parameters)."""
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"%({name})s"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def parse_time(value: struct_pb2.Value) -> int | None:
    """RFC 3339 text (or epoch seconds) as microseconds since the epoch; None when it is neither."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if value.number_value != value.number_value or abs(value.number_value) > 1e11:
            return None
        return round(value.number_value * 1_000_000)
    if kind != "string_value":
        return None
    try:
        moment = datetime.fromisoformat(value.string_value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _parse_integer(value: struct_pb2.Value) -> int | None:
    kind = value.WhichOneof("kind")
    number: float | int
    if kind == "number_value":
        number = value.number_value
    elif kind == "string_value":
        try:
            number = int(value.string_value)
        except ValueError:
            return None
    else:
        return None
    if number != number or not float(number).is_integer() or abs(number) > _INT64_MAX:
        return None
    return int(number)


def _parse_decimal(value: struct_pb2.Value) -> str | None:
    kind = value.WhichOneof("kind")
    try:
        if kind == "string_value":
            number = Decimal(value.string_value)
        elif kind == "number_value":
            number = Decimal(repr(value.number_value))
        else:
            return None
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) >= Decimal(10) ** 6:
        return None
    return format(number.quantize(Decimal(1).scaleb(-12)), "f")


class FilterCompiler:
    """Turns a RequestFilter into SQL conditions with bound parameters, collecting violations."""

    def __init__(self, params: Params, violations: Violations) -> None:
        self.params = params
        self.violations = violations
        self._conditions = 0

    def compile(self, request_filter: pb.RequestFilter, path: str = "filter", depth: int = 0) -> str:
        """One SQL boolean expression ("1" when the filter is empty)."""
        if depth > MAX_FILTER_DEPTH:
            self.violations.add(path, f"filters may nest at most {MAX_FILTER_DEPTH} levels")
            return "1"
        parts = self._legacy(request_filter, path)
        for index, condition in enumerate(request_filter.conditions):
            parts.append(self.condition(condition, f"{path}.conditions[{index}]"))
        for index, child in enumerate(request_filter.all):
            parts.append(self.compile(child, f"{path}.all[{index}]", depth + 1))
        if request_filter.any:
            alternatives = [
                self.compile(child, f"{path}.any[{index}]", depth + 1) for index, child in enumerate(request_filter.any)
            ]
            parts.append("(" + " OR ".join(f"({sql})" for sql in alternatives) + ")")
        if not parts:
            return "1"
        return " AND ".join(f"({sql})" for sql in parts)

    def _legacy(self, request_filter: pb.RequestFilter, path: str) -> list[str]:
        """The deprecated flat fields, each an `equals` (or a time bound) ANDed with the rest."""
        parts: list[str] = []
        for name in ("model", "provider", "user_id", "session_id"):
            value = getattr(request_filter, name)
            if value:
                parts.append(f"{name} = {self.params.bind(value)}")
        if request_filter.status_code < 0:
            self.violations.add(f"{path}.status_code", "must be a positive HTTP status")
        elif request_filter.status_code:
            parts.append(f"status_code = {self.params.bind(request_filter.status_code)}")
        if request_filter.HasField("created_after"):
            after = checked_micros(self.violations, f"{path}.created_after", request_filter.created_after, STORED_TIMES)
            if after is not None:
                parts.append(time_bound(">=", after, self.params))
        if request_filter.HasField("created_before"):
            before = checked_micros(
                self.violations, f"{path}.created_before", request_filter.created_before, STORED_TIMES
            )
            if before is not None:
                parts.append(time_bound("<", before, self.params))
        return parts

    def condition(self, condition: pb.FilterCondition, path: str) -> str:
        """One leaf; "1" (after recording a violation) when it is invalid."""
        self._conditions += 1
        if self._conditions == MAX_FILTER_CONDITIONS + 1:
            self.violations.add(path, f"a filter may hold at most {MAX_FILTER_CONDITIONS} conditions")
        field = FIELDS.get(condition.field)
        if field is None:
            self.violations.add(f"{path}.field", f"unknown field {condition.field!r}; known: {', '.join(FIELDS)}")
            return "1"
        operators = OPERATORS[field.kind]
        if condition.operator not in operators:
            self.violations.add(
                f"{path}.operator",
                f"{condition.operator!r} does not apply to {condition.field}; "
                f"use one of {', '.join(sorted(operators))}",
            )
            return "1"
        sql = field.sql
        if condition.field in KEYED_FIELDS:
            if not condition.property_key:
                self.violations.add(f"{path}.property_key", f"is required with field {condition.field!r}")
                return "1"
            if condition.field != SCORE:
                sql = sql.format(key=self.params.bind(condition.property_key))
        elif condition.property_key:
            self.violations.add(
                f"{path}.property_key", f"applies only to fields {', '.join(repr(f) for f in sorted(KEYED_FIELDS))}"
            )
        if condition.field in SCORE_FIELDS:
            return self._score(condition, path)
        compiled = self._compare(field, sql, condition.operator, condition.value, f"{path}.value")
        if compiled is None:
            return "1"
        return f"{field.present} AND {compiled}" if field.present else compiled

    def _score(self, condition: pb.FilterCondition, path: str) -> str:
        """A condition on a score's newest value (or the feedback's, 1 or 0): a subquery of request ids."""
        comparison = _COMPARISONS[condition.operator]
        value = condition.value
        if condition.field == FEEDBACK:
            if value.WhichOneof("kind") != "bool_value":
                self.violations.add(f"{path}.value", "must be true (thumbs up) or false (thumbs down)")
                return "1"
            return score_condition(
                self.params.bind(FEEDBACK_SCORE), comparison, self.params.bind(1.0 if value.bool_value else 0.0)
            )
        if len(condition.property_key) > MAX_TEXT_VALUE:
            self.violations.add(f"{path}.property_key", f"must be at most {MAX_TEXT_VALUE} characters")
            return "1"
        if value.WhichOneof("kind") == "bool_value":
            number = 1.0 if value.bool_value else 0.0
        elif value.WhichOneof("kind") == "number_value" and math.isfinite(value.number_value):
            number = value.number_value
        else:
            self.violations.add(f"{path}.value", "must be a finite number (or a bool, as 1 or 0)")
            return "1"
        return score_condition(self.params.bind(condition.property_key), comparison, self.params.bind(number))

    def _compare(self, field: Field, sql: str, operator: str, value: struct_pb2.Value, path: str) -> str | None:
        kind = field.kind
        if kind is Kind.TEXT:
            if value.WhichOneof("kind") != "string_value":
                self.violations.add(path, "must be a string")
                return None
            text = value.string_value
            if len(text) > MAX_TEXT_VALUE:
                self.violations.add(path, f"must be at most {MAX_TEXT_VALUE} characters")
                return None
            if operator == "contains":
                return f"position({sql}, {self.params.bind(text)}) > 0"
            if operator == "like":
                return f"like({sql}, {self.params.bind(text)})"
            if operator == "ilike":
                # ILIKE is not on 18.16: compare lower-cased text with a lower-cased pattern.
                return f"like(lowerUTF8({sql}), lowerUTF8({self.params.bind(text)}))"
            return f"{sql} {_COMPARISONS[operator]} {self.params.bind(text)}"
        if kind is Kind.INTEGER:
            number = _parse_integer(value)
            if number is None:
                self.violations.add(path, "must be an integer")
                return None
            return f"{sql} {_COMPARISONS[operator]} {self.params.bind(number)}"
        if kind is Kind.DECIMAL:
            decimal = _parse_decimal(value)
            if decimal is None:
                self.violations.add(path, 'must be a decimal number (a string such as "0.0025" or a number)')
                return None
            return f"{sql} {_COMPARISONS[operator]} toDecimal64({self.params.bind(decimal)}, 12)"
        if kind is Kind.TIME:
            micros = parse_time(value)
            if micros is None:
                self.violations.add(path, 'must be an RFC 3339 time such as "2025-01-31T12:00:00Z"')
                return None
            return time_bound(_COMPARISONS[operator], micros, self.params)
        if kind is Kind.BOOL:
            if value.WhichOneof("kind") != "bool_value":
                self.violations.add(path, "must be true or false")
                return None
            return f"{sql} {_COMPARISONS[operator]} {self.params.bind(int(value.bool_value))}"
        if value.WhichOneof("kind") != "string_value":
            self.violations.add(path, "must be a UUID string")
            return None
        try:
            request_id = uuid.UUID(value.string_value)
        except ValueError:
            self.violations.add(path, "must be a UUID string")
            return None
        return f"{sql} {_COMPARISONS[operator]} toUUID({self.params.bind(str(request_id))})"


def time_bound(comparison: str, micros: int, params: Params) -> str:
    """``created_at_us <op> micros``, plus the matching bound on ``created_at`` (seconds).

    The table is ordered by (organization_id, created_at, ...): the coarse bound on created_at lets
    ClickHouse skip whole granules, the exact one on created_at_us decides.
    """
    seconds = micros // 1_000_000
    seconds = max(0, min(seconds, 2**32 - 1))
    exact = f"created_at_us {comparison} {params.bind(max(micros, 0))}"
    coarse = {
        ">": ">=",
        ">=": ">=",
        "<": "<=",
        "<=": "<=",
        "=": "=",
    }.get(comparison)
    if coarse is None or micros < 0:
        return exact
    return f"created_at {coarse} toDateTime({params.bind(seconds)}) AND {exact}"
