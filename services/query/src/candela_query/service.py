"""The QueryService servicer: the caller's organization and validation, then the store.

Every RPC authenticates first and passes ``caller.organization_id`` (from the key, never from the
request) to :class:`RequestStore`, which puts it in every query. Bad input is collected into field
violations and answered with INVALID_ARGUMENT (400 through the REST gateway); store errors never reach
the caller as text (the gRPC boundary answers INTERNAL with a trace id).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import struct_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_query.aggregates import Metrics, MetricsRow
from candela_query.body_reader import BodyReader
from candela_query.cursor import CursorCodec, CursorError, Position
from candela_query.export import ENCODERS, MAX_EXPORT_CHUNK_BYTES, matching_pages
from candela_query.filters import PROPERTY_VALUE, STORED_TIMES, FilterCompiler, Params, time_bound
from candela_query.row_reads import SORT_COLUMNS, StoredRequest, decimal_text, timestamp
from candela_query.scores import ScoreWriter, check_request_id, submitted_scores
from candela_query.store import RequestStore
from candela_query.usage_reader import UsageReader
from candela_runtime.errors import NotFound, Unavailable, Violations
from candela_runtime.security import KeyAuthenticator
from candela_runtime.timestamps import checked_micros

DEFAULT_PAGE_SIZE = 100
MAX_GROUPS = 10_000
MAX_RANGE_DAYS = 400
MAX_SESSION_REQUESTS = 10_000
MAX_USAGE_DAYS = 400
DEFAULT_USAGE_DAYS = 30
_BUCKET_SECONDS = {pb.TIME_BUCKET_MINUTE: 60, pb.TIME_BUCKET_HOUR: 3600, pb.TIME_BUCKET_DAY: 86_400}

Context = grpc.aio.ServicerContext[object, object]


@dataclass
class _Node:
    """A session tree node while it is being built."""

    path: str
    name: str
    requests: list[log_record_pb2.LogRecord] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)

    def all_records(self) -> list[log_record_pb2.LogRecord]:
        records = list(self.requests)
        for child in self.children.values():
            records.extend(child.all_records())
        return records

    def to_proto(self) -> pb.SessionNode:
        return pb.SessionNode(
            path=self.path,
            name=self.name,
            requests=self.requests,
            children=[child.to_proto() for _, child in sorted(self.children.items())],
            metrics=Metrics.of_records(self.all_records()).to_proto(),
        )


def session_tree(records: list[log_record_pb2.LogRecord]) -> pb.SessionNode:
    """The session's requests arranged by session path ("/a/b" is a child of "/a"), oldest first."""
    root = _Node(path="/", name="")
    for record in records:
        node = root
        built = ""
        for segment in (part for part in record.session_path.split("/") if part):
            built = f"{built}/{segment}"
            node = node.children.setdefault(segment, _Node(path=built, name=segment))
        node.requests.append(record)
    return root.to_proto()


def _sort_field(sort: pb.RequestSort, violations: Violations) -> str:
    """The column a listing is sorted by (``created_at`` unless named); an unknown one is a violation."""
    field_name = sort.field or "created_at"
    if field_name not in SORT_COLUMNS:
        violations.add("sort.field", f"cannot sort by {field_name!r}; use one of {', '.join(SORT_COLUMNS)}")
    return field_name


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Logged requests of the caller's organization."""

    def __init__(
        self,
        store: RequestStore,
        bodies: BodyReader,
        authenticator: KeyAuthenticator,
        max_page_size: int,
        cursor_secret: str,
        usage: UsageReader | None = None,
        scores: ScoreWriter | None = None,
        export_page_size: int = 1000,
    ) -> None:
        self._store = store
        self._bodies = bodies
        self._authenticator = authenticator
        self._max_page_size = max_page_size
        self._cursors = CursorCodec(cursor_secret)
        self._usage = usage
        self._scores = scores
        self._export_page_size = export_page_size

    async def _organization(self, context: Context, scope: int = auth_pb.API_KEY_SCOPE_READ) -> str:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(scope)
        return caller.organization_id

    def _limit(self, limit: int, violations: Violations, maximum: int | None = None) -> int:
        top = maximum or self._max_page_size
        if not 0 <= limit <= top:
            violations.add("limit", f"must be between 1 and {top} (0 for {DEFAULT_PAGE_SIZE})")
        return min(limit or DEFAULT_PAGE_SIZE, top)

    async def QueryRequests(self, request: pb.QueryRequestsRequest, context: Context) -> pb.QueryRequestsResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        limit = self._limit(request.limit, violations)
        params = Params()
        where = FilterCompiler(params, violations).compile(request.filter)
        sort_field = _sort_field(request.sort, violations)
        digest = hashlib.sha256(
            request.filter.SerializeToString(deterministic=True) + f"|{sort_field}|{request.sort.ascending}".encode()
        ).hexdigest()[:16]
        after: Position | None = None
        if request.cursor:
            try:
                after = self._cursors.decode(request.cursor, digest)
            except CursorError as error:
                violations.add("cursor", str(error))
        violations.raise_if_any()
        page = await self._store.page(
            organization_id, where, params.values, sort_field, request.sort.ascending, after, limit
        )
        response = pb.QueryRequestsResponse(requests=[row.record for row in page.rows])
        scores = await self._store.scores(organization_id, [row.record.request_id for row in page.rows])
        for request_id, named in scores.items():
            response.scores[request_id].scores.update(named)
        if page.has_more and page.rows:
            last = page.rows[-1]
            response.next_cursor = self._cursors.encode(
                Position(last.sort_keys[SORT_COLUMNS[sort_field]], last.record.request_id), digest
            )
        return response

    async def GetRequest(self, request: pb.GetRequestRequest, context: Context) -> pb.GetRequestResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        try:
            request_id = uuid.UUID(request.request_id)
        except ValueError:
            violations.add("request_id", f"must be a UUID, got {request.request_id!r}")
        violations.raise_if_any()
        stored = await self._store.get(organization_id, request_id)
        if stored is None:
            raise NotFound(f"request {request_id} does not exist")
        response = await self._with_bodies(stored)
        scores = await self._store.scores(organization_id, [stored.record.request_id])
        response.scores.update(scores.get(stored.record.request_id, {}))
        return response

    async def _with_bodies(self, stored: StoredRequest) -> pb.GetRequestResponse:
        request_body, response_body = await self._bodies.read_pair(stored.request_body, stored.response_body)
        response = pb.GetRequestResponse(request=stored.record)
        # Text as text; any other body byte for byte in the bytes field, never text with replacement characters.
        try:
            response.request_body = request_body.decode()
        except UnicodeDecodeError:
            response.request_body_bytes = request_body
        try:
            response.response_body = response_body.decode()
        except UnicodeDecodeError:
            response.response_body_bytes = response_body
        return response

    def _range(self, request: Any, params: Params, violations: Violations, *, required: bool) -> tuple[list[str], int]:
        """Conditions for [start, end) and its length in seconds (0 when open)."""
        conditions: list[str] = []
        has_start, has_end = request.HasField("start"), request.HasField("end")
        if required:
            if not has_start:
                violations.add("start", "is required")
            if not has_end:
                violations.add("end", "is required")
        start = checked_micros(violations, "start", request.start, STORED_TIMES) if has_start else None
        end = checked_micros(violations, "end", request.end, STORED_TIMES) if has_end else None
        if start is not None and end is not None:
            if end <= start:
                violations.add("end", "must be after start")
            elif end - start > MAX_RANGE_DAYS * 86_400_000_000:
                violations.add("end", f"the range may span at most {MAX_RANGE_DAYS} days")
        if start is not None:
            conditions.append(time_bound(">=", start, params))
        if end is not None:
            conditions.append(time_bound("<", end, params))
        span = (end - start) // 1_000_000 if start is not None and end is not None else 0
        return conditions, span

    async def AggregateRequests(
        self, request: pb.AggregateRequestsRequest, context: Context
    ) -> pb.AggregateRequestsResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        params = Params()
        conditions, span = self._range(request, params, violations, required=True)
        conditions.append(FilterCompiler(params, violations).compile(request.filter))
        group_sql: list[str] = []
        time_dimension: int | None = None
        if len(request.group_by) > 2 or len(set(request.group_by)) != len(request.group_by):
            violations.add("group_by", "at most two different dimensions")
        for index, dimension in enumerate(request.group_by):
            if dimension == pb.GROUP_BY_MODEL:
                group_sql.append("model")
            elif dimension == pb.GROUP_BY_PROVIDER:
                group_sql.append("provider")
            elif dimension == pb.GROUP_BY_USER:
                group_sql.append("user_id")
            elif dimension == pb.GROUP_BY_PROPERTY:
                if not request.property_key:
                    violations.add("property_key", "is required with GROUP_BY_PROPERTY")
                group_sql.append(PROPERTY_VALUE.format(key=params.bind(request.property_key)))
            elif dimension == pb.GROUP_BY_TIME:
                width = _BUCKET_SECONDS.get(request.time_bucket)
                if width is None:
                    violations.add("time_bucket", "is required with GROUP_BY_TIME (minute, hour or day)")
                    width = 86_400
                elif span and span // width > MAX_GROUPS:
                    violations.add("time_bucket", f"the range holds more than {MAX_GROUPS} buckets; use a wider one")
                time_dimension = index
                group_sql.append(f"intDiv(toUInt32(created_at), {width}) * {width}")
            else:
                violations.add(f"group_by[{index}]", "must be a GroupBy value other than UNSPECIFIED")
        violations.raise_if_any()
        where = " AND ".join(f"({condition})" for condition in conditions)
        span_us = _span(request)
        rows = await self._store.metrics(organization_id, where, params.values, group_sql, MAX_GROUPS, span=span_us)
        averages = await self._store.score_averages(
            organization_id, where, params.values, group_sql, MAX_GROUPS * 64, span=span_us
        )

        def metrics(row: MetricsRow) -> pb.RequestMetrics:
            message = row.metrics.to_proto()
            for name, (mean, count) in averages.get(tuple(row.keys), {}).items():
                message.score_averages[name] = mean
                message.score_counts[name] = count
            return message

        def key_text(index: int, value: Any) -> str:
            return _rfc3339(int(value)) if index == time_dimension else str(value)

        return pb.AggregateRequestsResponse(
            groups=[
                pb.MetricsGroup(
                    keys=[key_text(index, value) for index, value in enumerate(row.keys)],
                    metrics=metrics(row),
                )
                for row in rows
            ]
        )

    @staticmethod
    def _summary(row: MetricsRow) -> pb.SessionSummary:
        return pb.SessionSummary(
            session_id=str(row.keys[0]),
            session_name=row.label,
            first_request_at=timestamp(row.first_at_us),
            last_request_at=timestamp(row.last_at_us),
            metrics=row.metrics.to_proto(),
        )

    async def QuerySessions(self, request: pb.QuerySessionsRequest, context: Context) -> pb.QuerySessionsResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        limit = self._limit(request.limit, violations)
        params = Params()
        conditions, _ = self._range(request, params, violations, required=False)
        conditions.append(FilterCompiler(params, violations).compile(request.filter))
        conditions.append("session_id != ''")
        violations.raise_if_any()
        where = " AND ".join(f"({condition})" for condition in conditions)
        rows = await self._store.metrics(
            organization_id,
            where,
            params.values,
            ["session_id"],
            limit,
            order="last",
            label="max(session_name)",
            span=_span(request),
        )
        return pb.QuerySessionsResponse(sessions=[self._summary(row) for row in rows])

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.GetSessionResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        violations.require("session_id", request.session_id)
        if len(request.session_id) > 1024:
            violations.add("session_id", "must be at most 1024 characters")
        violations.raise_if_any()
        rows = await self._store.session_requests(organization_id, request.session_id, MAX_SESSION_REQUESTS)
        if not rows:
            raise NotFound(f"session {request.session_id!r} does not exist")
        records = [row.record for row in rows]
        summary = pb.SessionSummary(
            session_id=request.session_id,
            session_name=max(record.session_name for record in records),
            first_request_at=records[0].created_at,
            last_request_at=records[-1].created_at,
            metrics=Metrics.of_records(records).to_proto(),
        )
        return pb.GetSessionResponse(session=summary, root=session_tree(records))

    async def QueryUserMetrics(
        self, request: pb.QueryUserMetricsRequest, context: Context
    ) -> pb.QueryUserMetricsResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        limit = self._limit(request.limit, violations)
        params = Params()
        conditions, _ = self._range(request, params, violations, required=False)
        conditions.append(FilterCompiler(params, violations).compile(request.filter))
        violations.raise_if_any()
        where = " AND ".join(f"({condition})" for condition in conditions)
        rows = await self._store.metrics(
            organization_id, where, params.values, ["user_id"], limit, order="count", span=_span(request)
        )
        return pb.QueryUserMetricsResponse(
            users=[
                pb.UserMetrics(
                    user_id=str(row.keys[0]),
                    first_request_at=timestamp(row.first_at_us),
                    last_request_at=timestamp(row.last_at_us),
                    metrics=row.metrics.to_proto(),
                )
                for row in rows
            ]
        )

    async def GetOrganizationUsage(
        self, request: pb.GetOrganizationUsageRequest, context: Context
    ) -> pb.GetOrganizationUsageResponse:
        organization_id = await self._organization(context)
        violations = Violations()
        if not 0 <= request.days <= MAX_USAGE_DAYS:
            violations.add("days", f"must be between 1 and {MAX_USAGE_DAYS} (0 for {DEFAULT_USAGE_DAYS})")
        violations.raise_if_any()
        if self._usage is None:
            raise Unavailable("usage is not available: the query service has no Postgres connection")
        today = datetime.now(UTC).date()
        usage = await self._usage.usage(organization_id, request.days or DEFAULT_USAGE_DAYS, today)
        if usage is None:
            raise NotFound("the organization does not exist")
        # Logs kept, as the writers count them when they enforce the limit; before that counter existed,
        # every counted request was stored.
        stored = usage.counters.get("stored_logs", usage.counters.get("request_count", 0))
        limits = [
            pb.UsageLimit(
                name="max_stored_logs",
                limited=usage.max_stored_logs is not None,
                limit=usage.max_stored_logs or 0,
                used=stored,
            ),
            pb.UsageLimit(
                name="retention_days",
                limited=usage.retention_days is not None,
                limit=usage.retention_days or 0,
                used=_days_since(usage.oldest_day, today),
            ),
        ]
        return pb.GetOrganizationUsageResponse(
            days=[
                pb.DailyUsage(
                    day=row.day.isoformat(),
                    request_count=row.request_count,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cost_usd=decimal_text(row.cost_usd),
                    unpriced_count=row.unpriced_count,
                )
                for row in usage.days
            ],
            limits=limits,
            counters=usage.counters,
        )

    async def SubmitFeedback(self, request: pb.SubmitFeedbackRequest, context: Context) -> pb.SubmitFeedbackResponse:
        await self._submit(context, request.request_id, feedback=request.rating)
        return pb.SubmitFeedbackResponse()

    async def SubmitScores(self, request: pb.SubmitScoresRequest, context: Context) -> pb.SubmitScoresResponse:
        await self._submit(context, request.request_id, scores=request.scores)
        return pb.SubmitScoresResponse()

    async def _submit(
        self,
        context: Context,
        request_id_text: str,
        scores: Mapping[str, struct_pb2.Value] | None = None,
        feedback: bool | None = None,
    ) -> None:
        """Scores or feedback on a request of the caller's organization (WRITE scope), through ingest."""
        organization_id = await self._organization(context, auth_pb.API_KEY_SCOPE_WRITE)
        violations = Violations()
        request_id = check_request_id(violations, request_id_text)
        values = submitted_scores(violations, scores) if scores is not None else {}
        violations.raise_if_any("the scores are invalid" if scores is not None else "the feedback is invalid")
        assert request_id is not None  # a violation was raised otherwise
        if self._scores is None:
            raise Unavailable("scores are not available: the query service has no ingest address")

        async def visible() -> bool:
            return await self._store.get(organization_id, request_id) is not None

        await self._scores.submit(organization_id, request_id, visible, scores=values, feedback=feedback)

    async def ExportRequests(
        self, request: pb.ExportRequestsRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        organization_id = await self._organization(context)
        violations = Violations()
        params = Params()
        where = FilterCompiler(params, violations).compile(request.filter)
        sort_field = _sort_field(request.sort, violations)
        if request.format not in ENCODERS:
            violations.add("format", "must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_JSONL")
        if request.max_rows < 0:
            violations.add("max_rows", "must be 0 (every row) or a positive number of rows")
        violations.raise_if_any()
        encoder = ENCODERS[request.format]()
        # The gateway's transcoder passes response metadata on as headers: a REST client saves a file.
        filename = f"candela-requests.{encoder.extension}"
        await context.send_initial_metadata((("content-disposition", f'attachment; filename="{filename}"'),))
        # The first chunk names the content type (the transcoder takes it from the first message only).
        yield httpbody_pb2.HttpBody(content_type=encoder.content_type, data=encoder.header())
        pages = matching_pages(
            self._store,
            organization_id,
            where,
            params.values,
            sort_field,
            request.sort.ascending,
            self._export_page_size,
            request.max_rows,
        )
        async for records in pages:
            data = encoder.rows(records)
            # A page of long rows is sent as several messages, each well under gRPC's 4 MiB default limit.
            for start in range(0, len(data), MAX_EXPORT_CHUNK_BYTES):
                chunk = data[start : start + MAX_EXPORT_CHUNK_BYTES]
                yield httpbody_pb2.HttpBody(content_type=encoder.content_type, data=chunk)


def _span(request: Any) -> tuple[int, int] | None:
    """[start, end) of a request's time range in microseconds, when it has both ends (the store then may
    prove the range free of duplicate copies and read it without FINAL)."""
    if not (request.HasField("start") and request.HasField("end")):
        return None
    return request.start.ToMicroseconds(), request.end.ToMicroseconds()


def _days_since(oldest: date | None, today: date) -> int:
    return (today - oldest).days + 1 if oldest is not None else 0
