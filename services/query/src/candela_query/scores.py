"""Scores and feedback: what a caller may submit, and how the ``request_scores`` table is read.

Scores are written by ingest's writers (IngestService.UpdateLogs -> Kafka -> ``request_scores``), one row
per (organization, request, name) in a ReplacingMergeTree whose version is the update's time. Until the
server merges them, several rows of one score may be stored: every read here keeps the newest with
``argMax(value, version)``, which gives FINAL's answer on ClickHouse 18.16 and modern ClickHouse alike
(both dialects have argMax; neither needs FINAL's merge of the table).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import struct_pb2

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_query.scope import Scope, SqlRunner
from candela_runtime.errors import NotFound, Unavailable, Violations
from candela_runtime.security import service_metadata

if TYPE_CHECKING:
    from candela.ingest.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub

logger = logging.getLogger(__name__)

FEEDBACK_SCORE = "feedback"
"""The score a thumbs up (1) or down (0) is stored as."""
MAX_SCORE_NAME_CHARS = 128
"""As ingest allows (candela_ingest.wire.validation.MAX_SCORE_NAME_CHARS)."""
MAX_SCORES_PER_SUBMISSION = 64
"""As ingest allows in one update (MAX_SCORES_PER_UPDATE)."""
_SCORE_NAME = re.compile(r"[\w .:/-]+")
"""Letters and digits of any script, space, '_', '.', ':', '/', '-': names that read well in a table, a
URL and a CSV header; no control characters, quotes or markup."""

LATEST_SCORES = (
    "SELECT request_id, name AS score_name, argMax(value, version) AS score_value FROM request_scores "
    "WHERE organization_id = toUUID(%(organization_id)s) GROUP BY request_id, name"
)
"""The newest value of every score of the organization, as (request_id, score_name, score_value): aliases
no column of ``requests`` or ``request_scores`` has, so the subquery joins without ambiguity (an alias
equal to the aggregated column's name is refused by some servers). ``%(organization_id)s`` is bound by
:class:`~candela_query.scope.Scope` in every query that reaches a table, so a subquery using it is scoped
to the caller's organization like the query around it."""


def check_request_id(violations: Violations, text: str) -> uuid.UUID | None:
    """The request id of a submission, or None after recording why it is not one."""
    try:
        return uuid.UUID(text)
    except ValueError:
        violations.add("request_id", f"must be a UUID (the request's Candela-Id), got {text[:64]!r}")
        return None


def check_score_name(violations: Violations, field: str, name: str) -> bool:
    """Whether ``name`` may name a score (recording why not)."""
    if not 1 <= len(name) <= MAX_SCORE_NAME_CHARS:
        violations.add(field, f"score names must have 1 to {MAX_SCORE_NAME_CHARS} characters, got {name[:64]!r}")
        return False
    if not _SCORE_NAME.fullmatch(name):
        violations.add(field, f"score names may hold letters, digits, spaces and _ . : / - only, got {name[:64]!r}")
        return False
    return True


def submitted_scores(
    violations: Violations, scores: Mapping[str, struct_pb2.Value], field: str = "scores"
) -> dict[str, float]:
    """The good scores of a SubmitScores call as numbers (true -> 1, false -> 0), recording a violation
    for every bad name and value."""
    values: dict[str, float] = {}
    if not scores:
        violations.add(field, 'at least one score is required, e.g. {"accuracy": 0.9}')
    elif len(scores) > MAX_SCORES_PER_SUBMISSION:
        violations.add(field, f"holds {len(scores)} scores, more than {MAX_SCORES_PER_SUBMISSION}")
    for name, value in sorted(scores.items()):
        path = f"{field}[{name[:64]}]"
        if not check_score_name(violations, path, name):
            continue
        if name == FEEDBACK_SCORE:
            violations.add(path, f"{FEEDBACK_SCORE!r} is set by the feedback call (POST /v1/request/{{id}}/feedback)")
            continue
        kind = value.WhichOneof("kind")
        if kind == "bool_value":
            values[name] = 1.0 if value.bool_value else 0.0
        elif kind == "number_value" and math.isfinite(value.number_value):
            values[name] = value.number_value
        else:
            violations.add(path, f"must be a finite number or a bool, got {_shown(value)}")
    return values


def _shown(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return repr(value.number_value)
    if kind == "string_value":
        return f"the string {value.string_value[:32]!r}"
    return {"null_value": "null", "struct_value": "an object", "list_value": "a list"}.get(kind or "", "nothing")


def score_condition(name_placeholder: str, comparison: str, value_placeholder: str) -> str:
    """SQL: the request's newest value of the named score compares to a value (no score: false)."""
    return (
        "request_id IN (SELECT request_id FROM request_scores WHERE organization_id = toUUID(%(organization_id)s)"
        f" AND name = {name_placeholder} GROUP BY request_id"
        f" HAVING argMax(value, version) {comparison} {value_placeholder})"
    )


class ScoreReads:
    """Reads of ``request_scores`` for one organization at a time."""

    def __init__(self, runner: SqlRunner, scope: Scope) -> None:
        self._runner = runner
        self._scope = scope

    async def of_requests(self, organization_id: str, request_ids: list[str]) -> dict[str, dict[str, float]]:
        """The newest value of each score of each of ``request_ids``, by request id (text) then name:
        one query for the whole page, whatever its size."""
        if not request_ids:
            return {}
        params: dict[str, Any] = {"request_ids": tuple(sorted({str(uuid.UUID(text)) for text in request_ids}))}
        # As text: a UUID column compared with a tuple of strings is not portable to 18.16 (the page's
        # ids are few, and the organization prefix of the key already narrows the read).
        where = "toString(request_id) IN %(request_ids)s"
        sql = (
            f"SELECT toString(request_id), name, argMax(value, version) "
            f"{self._scope(organization_id, where, params, table='request_scores')} GROUP BY request_id, name"
        )
        found: dict[str, dict[str, float]] = {}
        for request_id, name, value in await self._runner.fetch(sql, params):
            found.setdefault(str(request_id), {})[str(name)] = float(value)
        return found


_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class ScoreWriter:
    """Hands scores to ingest (IngestService.UpdateLogs, with the service credential) once their request is
    visible to the caller's organization.

    Logs arrive asynchronously (proxy -> ingest -> Kafka -> writer), so a score sent right after its
    request may find no log yet: it waits up to ``wait_s`` for it, then answers NOT_FOUND. Another
    organization's request id waits and answers exactly the same, so its existence is never revealed.
    """

    def __init__(self, ingest: IngestServiceAsyncStub, service_token: str, wait_s: float, poll_s: float = 0.25) -> None:
        self._ingest = ingest
        self._metadata = service_metadata(service_token)
        self._wait_s = wait_s
        self._poll_s = poll_s

    async def submit(
        self,
        organization_id: str,
        request_id: uuid.UUID,
        visible: Callable[[], Awaitable[bool]],
        scores: Mapping[str, float] | None = None,
        feedback: bool | None = None,
    ) -> None:
        """Stores ``scores`` and/or ``feedback`` on the request; NOT_FOUND when ``visible`` never says it
        is the organization's, UNAVAILABLE when ingest cannot take them now (the caller may retry)."""
        deadline = time.monotonic() + self._wait_s
        while not await visible():
            if time.monotonic() >= deadline:
                raise NotFound(f"request {request_id} does not exist")
            await asyncio.sleep(self._poll_s)
        update = log_record_pb2.LogUpdate(
            request_id=str(request_id), organization_id=organization_id, scores=dict(scores or {})
        )
        if feedback is not None:
            update.feedback = feedback
        update.updated_at.FromDatetime(datetime.now(UTC))
        try:
            await self._ingest.UpdateLogs(
                ingest_service_pb2.UpdateLogsRequest(updates=[update]), metadata=self._metadata, timeout=10.0
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in _RETRYABLE:
                raise
            logger.warning("ingest refused a score update for now: %s", err.code().name)
            raise Unavailable(f"the scores could not be stored now ({err.code().name}); retry") from err
