"""The AuthService servicer: validation, authorization and the mapping to and from protos."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_auth import keys
from candela_auth.store import ApiKeyRow, AuthStore
from candela_runtime.errors import NotFound, PermissionDenied, Unauthenticated, Violations
from candela_runtime.security import bearer_key, has_service_credential, require_service_credential

MAX_NAME_LENGTH = 200
_VALID_SCOPES = {pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ, pb.API_KEY_SCOPE_WRITE, pb.API_KEY_SCOPE_ADMIN}

Context = grpc.aio.ServicerContext[object, object]


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _parse_uuid(violations: Violations, field: str, value: str) -> uuid.UUID | None:
    if not value:
        violations.add(field, "is required")
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        violations.add(field, f"must be a UUID, got {value!r}")
        return None


def _check_name(violations: Violations, field: str, name: str) -> None:
    if not name.strip():
        violations.add(field, "is required")
    elif len(name) > MAX_NAME_LENGTH:
        violations.add(field, f"must be at most {MAX_NAME_LENGTH} characters")


def _is_usable(key: ApiKeyRow, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Organizations and API keys, stored in Postgres."""

    def __init__(self, store: AuthStore, service_token: str) -> None:
        self._store = store
        self._service_token = service_token

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: Context
    ) -> pb.CreateOrganizationResponse:
        require_service_credential(context, self._service_token)
        violations = Violations()
        _check_name(violations, "name", request.name)
        violations.raise_if_any()
        row = await self._store.create_organization(request.name.strip())
        return pb.CreateOrganizationResponse(
            organization=pb.Organization(id=str(row.id), name=row.name, create_time=_timestamp(row.created_at))
        )

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        violations = Violations()
        organization_id = _parse_uuid(violations, "organization_id", request.organization_id)
        _check_name(violations, "name", request.name)
        if not request.scopes:
            violations.add("scopes", "at least one scope is required")
        for index, scope in enumerate(request.scopes):
            if scope not in _VALID_SCOPES:
                violations.add(f"scopes[{index}]", f"unknown scope {scope}")
        violations.raise_if_any()
        assert organization_id is not None
        await self._authorize_key_admin(context, organization_id)
        if not await self._store.organization_exists(organization_id):
            raise NotFound(f"organization {organization_id} does not exist")
        secret = keys.generate_key()
        row = await self._store.create_api_key(
            organization_id,
            request.name.strip(),
            keys.visible_prefix(secret),
            keys.hash_key(secret),
            sorted(set(request.scopes)),
        )
        return pb.CreateApiKeyResponse(api_key=_api_key_message(row), secret=secret)

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Context) -> pb.AuthenticateResponse:
        require_service_credential(context, self._service_token)
        violations = Violations()
        violations.require("api_key", request.api_key)
        violations.raise_if_any()
        row = await self._usable_key(request.api_key)
        if row is None:
            raise Unauthenticated("the API key is invalid, revoked or expired", "INVALID_API_KEY")
        return pb.AuthenticateResponse(
            organization_id=str(row.organization_id),
            api_key_id=str(row.id),
            scopes=row.scopes,  # type: ignore[arg-type]
        )

    async def _usable_key(self, secret: str) -> ApiKeyRow | None:
        digest = keys.hash_key(secret)
        row = await self._store.find_api_key(digest)
        if row is None or not keys.digests_match(row.key_hash, digest):
            return None
        return row if _is_usable(row, datetime.now(UTC)) else None

    async def _authorize_key_admin(self, context: Context, organization_id: uuid.UUID) -> None:
        """Internal callers may manage any organization's keys; users only their own, with an admin key."""
        if has_service_credential(context, self._service_token):
            return
        secret = bearer_key(context)
        if secret is None:
            raise Unauthenticated("an admin API key or the service credential is required", "MISSING_API_KEY")
        caller = await self._usable_key(secret)
        if caller is None:
            raise Unauthenticated("the API key is invalid, revoked or expired", "INVALID_API_KEY")
        if caller.organization_id != organization_id or pb.API_KEY_SCOPE_ADMIN not in caller.scopes:
            raise PermissionDenied("creating keys needs an admin key of the same organization")


def _api_key_message(row: ApiKeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(row.id),
        organization_id=str(row.organization_id),
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),  # type: ignore[arg-type]
        create_time=_timestamp(row.created_at),
    )
