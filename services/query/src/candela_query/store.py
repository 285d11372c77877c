"""Reads of the ClickHouse ``requests`` table, always scoped to one organization.

Every query is built by :func:`_scoped_select`, the single place the caller's organization enters the SQL,
so no query can forget it. Values are bound by the driver, never formatted into the SQL text.
Rows are read with FINAL so a log delivered twice (before ClickHouse merges the copies) shows once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from google.protobuf import timestamp_pb2

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2
from candela_query.clickhouse import ClickHouseReader

_COLUMNS = (
    "toString(request_id)",
    "toString(organization_id)",
    "api_key_id",
    "created_at_us",
    "provider",
    "model",
    "response_model",
    "path",
    "status_code",
    "error",
    "streamed",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_prompt_tokens",
    "audio_completion_tokens",
    "cost_usd",
    "priced",
    "user_id",
    "session_id",
    "session_path",
    "session_name",
    "property_keys",
    "property_values",
    "prompt_id",
    "prompt_version",
    "cache_hit",
    "finish_reason",
    "request_body_omitted",
    "response_body_omitted",
    "request_body_key",
    "request_body_offset",
    "request_body_length",
    "response_body_key",
    "response_body_offset",
    "response_body_length",
)


@dataclass(frozen=True)
class BodyLocation:
    """Where a body lives in S3 (a byte range of a packed object)."""

    object_key: str
    offset: int
    length: int


@dataclass(frozen=True)
class StoredRequest:
    """One logged request: its record and where its bodies are."""

    record: log_record_pb2.LogRecord
    request_body: BodyLocation | None
    response_body: BodyLocation | None


def decimal_text(value: Decimal) -> str:
    """An exact decimal in plain notation without trailing zeros ("0.0004425", never "4.425E-4")."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _scoped_select(organization_id: str, conditions: list[str], params: dict[str, Any]) -> str:
    params["organization_id"] = organization_id
    where = " AND ".join(["organization_id = toUUID(%(organization_id)s)", *conditions])
    return f"SELECT {', '.join(_COLUMNS)} FROM requests FINAL WHERE {where}"


def _timestamp(microseconds: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(microseconds)
    return stamp


def _body(key: str, offset: int, length: int) -> BodyLocation | None:
    return BodyLocation(key, offset, length) if key else None


def _to_stored(row: tuple[Any, ...]) -> StoredRequest:
    values = dict(zip(_COLUMNS, row, strict=True))
    usage = log_record_pb2.TokenUsage(
        prompt_tokens=values["prompt_tokens"],
        completion_tokens=values["completion_tokens"],
        total_tokens=values["total_tokens"],
        cache_read_tokens=values["cache_read_tokens"],
        cache_write_tokens=values["cache_write_tokens"],
        reasoning_tokens=values["reasoning_tokens"],
        audio_prompt_tokens=values["audio_prompt_tokens"],
        audio_completion_tokens=values["audio_completion_tokens"],
    )
    record = log_record_pb2.LogRecord(
        request_id=values["toString(request_id)"],
        organization_id=values["toString(organization_id)"],
        api_key_id=values["api_key_id"],
        created_at=_timestamp(values["created_at_us"]),
        provider=values["provider"],
        model=values["model"],
        response_model=values["response_model"],
        path=values["path"],
        status_code=values["status_code"],
        error=values["error"],
        streamed=bool(values["streamed"]),
        latency_ms=values["latency_ms"],
        usage=usage,
        user_id=values["user_id"],
        session_id=values["session_id"],
        session_path=values["session_path"],
        session_name=values["session_name"],
        properties=dict(zip(values["property_keys"], values["property_values"], strict=True)),
        prompt_id=values["prompt_id"],
        prompt_version=values["prompt_version"],
        cache_hit=bool(values["cache_hit"]),
        finish_reason=values["finish_reason"],
        request_body_omitted=bool(values["request_body_omitted"]),
        response_body_omitted=bool(values["response_body_omitted"]),
    )
    if values["time_to_first_token_ms"] >= 0:
        record.time_to_first_token_ms = values["time_to_first_token_ms"]
    if values["priced"]:
        record.cost_usd = decimal_text(values["cost_usd"])
    return StoredRequest(
        record=record,
        request_body=_body(values["request_body_key"], values["request_body_offset"], values["request_body_length"]),
        response_body=_body(
            values["response_body_key"], values["response_body_offset"], values["response_body_length"]
        ),
    )


class RequestStore:
    """Queries over logged requests for one organization at a time."""

    def __init__(self, reader: ClickHouseReader) -> None:
        self._reader = reader

    async def query(
        self, organization_id: str, request_filter: query_service_pb2.RequestFilter, limit: int
    ) -> list[StoredRequest]:
        """The newest requests matching every set field of ``request_filter``."""
        conditions: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for field in ("model", "provider", "user_id", "session_id"):
            value = getattr(request_filter, field)
            if value:
                conditions.append(f"{field} = %({field})s")
                params[field] = value
        if request_filter.status_code:
            conditions.append("status_code = %(status_code)s")
            params["status_code"] = request_filter.status_code
        if request_filter.HasField("created_after"):
            conditions.append("created_at_us >= %(created_after)s")
            params["created_after"] = request_filter.created_after.ToMicroseconds()
        if request_filter.HasField("created_before"):
            conditions.append("created_at_us < %(created_before)s")
            params["created_before"] = request_filter.created_before.ToMicroseconds()
        sql = _scoped_select(organization_id, conditions, params)
        rows = await self._reader.fetch(f"{sql} ORDER BY created_at_us DESC, request_id DESC LIMIT %(limit)s", params)
        return [_to_stored(row) for row in rows]

    async def get(self, organization_id: str, request_id: uuid.UUID) -> StoredRequest | None:
        """One request of the organization, or None."""
        params: dict[str, Any] = {"request_id": str(request_id)}
        sql = _scoped_select(organization_id, ["request_id = toUUID(%(request_id)s)"], params)
        rows = await self._reader.fetch(f"{sql} LIMIT 1", params)
        return _to_stored(rows[0]) if rows else None
