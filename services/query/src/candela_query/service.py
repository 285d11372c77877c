"""The QueryService servicer: validation and the caller's organization, then the store."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_query.bodies import BodyReader
from candela_query.store import RequestStore
from candela_runtime.errors import NotFound, Violations
from candela_runtime.security import KeyAuthenticator

DEFAULT_PAGE_SIZE = 100

Context = grpc.aio.ServicerContext[object, object]


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Logged requests of the caller's organization."""

    def __init__(
        self, store: RequestStore, bodies: BodyReader, authenticator: KeyAuthenticator, max_page_size: int
    ) -> None:
        self._store = store
        self._bodies = bodies
        self._authenticator = authenticator
        self._max_page_size = max_page_size

    async def QueryRequests(self, request: pb.QueryRequestsRequest, context: Context) -> pb.QueryRequestsResponse:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        if not 0 <= request.limit <= self._max_page_size:
            violations.add("limit", f"must be between 1 and {self._max_page_size} (0 for {DEFAULT_PAGE_SIZE})")
        if request.filter.status_code < 0:
            violations.add("filter.status_code", "must be a positive HTTP status")
        violations.raise_if_any()
        rows = await self._store.query(caller.organization_id, request.filter, request.limit or DEFAULT_PAGE_SIZE)
        return pb.QueryRequestsResponse(requests=[row.record for row in rows])

    async def GetRequest(self, request: pb.GetRequestRequest, context: Context) -> pb.GetRequestResponse:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        try:
            request_id = uuid.UUID(request.request_id)
        except ValueError:
            violations.add("request_id", f"must be a UUID, got {request.request_id!r}")
        violations.raise_if_any()
        stored = await self._store.get(caller.organization_id, request_id)
        if stored is None:
            raise NotFound(f"request {request_id} does not exist")
        request_body, response_body = await asyncio.gather(
            self._bodies.read(stored.request_body), self._bodies.read(stored.response_body)
        )
        return pb.GetRequestResponse(
            request=stored.record,
            request_body=request_body.decode("utf-8", errors="replace"),
            response_body=response_body.decode("utf-8", errors="replace"),
        )
