"""The AuthService servicer: validation, authorization and the mapping to and from protos.

Who may call what (also documented on each RPC in auth_service.proto):

==================  ==========================================  =========================================
RPC                 service credential                          user key (``authorization: Bearer``)
==================  ==========================================  =========================================
CreateOrganization  yes                                         no (UNAUTHENTICATED)
Authenticate        yes                                         no (UNAUTHENTICATED)
GetOrganization     any organization (``organization_id``)      READ, its own organization
UpdateOrganization  any organization                            ADMIN, its own organization
CreateApiKey        any organization                            ADMIN, its own organization
ListApiKeys         any organization                            ADMIN, its own organization
RevokeApiKey        any key                                     ADMIN, keys of its own organization
SetPriceOverride    any organization                            ADMIN, its own organization
ListPriceOverrides  any organization                            READ, its own organization
DeletePriceOverride any organization                            ADMIN, its own organization
SetModelAlias       any organization                            ADMIN, its own organization
ListModelAliases    any organization                            READ, its own organization
DeleteModelAlias    any organization                            ADMIN, its own organization
WatchPricing        yes                                         no (UNAUTHENTICATED)
FollowPricing       yes                                         no (UNAUTHENTICATED)
==================  ==========================================  =========================================

ADMIN implies every scope. A user call naming another organization is PERMISSION_DENIED; another
organization's key id is NOT_FOUND, exactly like an id that does not exist. This service reads keys
straight from Postgres (no cache), so a revoked key stops working here at once; the other services
cache answers for a few seconds (see candela_runtime.security.KeyAuthenticator).

Cost on the proxy's hot path (``make bench-auth``, bench/auth/bench_authenticate.py; 2-core machine,
auth as its own process on loopback, sequential calls): a cached ``KeyAuthenticator.authenticate`` is
p50 1.2 us / p99 1.7 us (a SHA-256 and a dict hit); an uncached one (gRPC round trip to this service,
SHA-256, a unique-index lookup in Postgres, a constant-time compare) is p50 ~1.4 ms / p99 ~8 ms on a
busy machine. With the 5 s cache, a key used steadily costs one uncached call per 5 s per process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_auth import keys
from candela_auth.pricing import (
    PricingWatchers,
    check_model,
    check_provider,
    genai_prices_knows,
    parse_price,
    price_text,
)
from candela_auth.pricing_store import ModelAliasRow, PriceOverrideRow, PricingStore
from candela_auth.store import ApiKeyRow, AuthStore, OrganizationRow
from candela_runtime.errors import NotFound, PermissionDenied, Unauthenticated, Violations
from candela_runtime.security import bearer_key, has_service_credential, require_service_credential
from candela_runtime.timestamps import PROTOBUF_RANGE, TimeRange, checked_datetime

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 200
MAX_RETENTION_DAYS = 36_500
_VALID_SCOPES = {pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ, pb.API_KEY_SCOPE_WRITE, pb.API_KEY_SCOPE_ADMIN}
_UPDATABLE_FIELDS = ("name", "max_stored_logs", "retention_days")
# What a Timestamp holds, less its last second: asyncpg writes 9999-12-31T23:59:59.999999Z (Python's
# datetime.max) as Postgres 'infinity' and reads it back as a naive datetime.max.
EXPIRY_RANGE = TimeRange(PROTOBUF_RANGE.earliest_s, PROTOBUF_RANGE.latest_s - 1, "what Postgres and a Timestamp hold")

Context = grpc.aio.ServicerContext[object, object]


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _parse_uuid(violations: Violations, field: str, value: str, *, required: bool = True) -> uuid.UUID | None:
    if not value:
        if required:
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
    elif "\x00" in name:
        # Postgres text cannot hold NUL; refused here rather than failing in the store.
        violations.add(field, "must not contain NUL (U+0000) characters")


def _is_usable(key: ApiKeyRow, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Organizations and API keys, stored in Postgres."""

    def __init__(self, store: AuthStore, service_token: str, pricing: PricingStore, watchers: PricingWatchers) -> None:
        self._store = store
        self._service_token = service_token
        self._pricing = pricing
        self._watchers = watchers

    # --- organizations ---------------------------------------------------------------------------

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: Context
    ) -> pb.CreateOrganizationResponse:
        require_service_credential(context, self._service_token)
        violations = Violations()
        _check_name(violations, "name", request.name)
        violations.raise_if_any()
        row = await self._store.create_organization(request.name.strip())
        logger.info("created organization %s", row.id)
        return pb.CreateOrganizationResponse(organization=_organization_message(row))

    async def GetOrganization(self, request: pb.GetOrganizationRequest, context: Context) -> pb.GetOrganizationResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_READ
        )
        violations.raise_if_any()
        assert organization_id is not None
        row = await self._store.get_organization(organization_id)
        if row is None:
            raise NotFound(f"organization {organization_id} does not exist")
        return pb.GetOrganizationResponse(organization=_organization_message(row))

    async def UpdateOrganization(
        self, request: pb.UpdateOrganizationRequest, context: Context
    ) -> pb.UpdateOrganizationResponse:
        violations = Violations()
        named = request.organization_id
        if request.organization.id and named and request.organization.id != named:
            violations.add("organization.id", "must be empty or equal to organization_id")
        organization_id = await self._target_organization(
            context, violations, named or request.organization.id, pb.API_KEY_SCOPE_ADMIN
        )
        changes = _organization_changes(request, violations)
        violations.raise_if_any()
        assert organization_id is not None
        row = await self._store.update_organization(organization_id, **changes)
        if row is None:
            raise NotFound(f"organization {organization_id} does not exist")
        logger.info("updated organization %s: %s", organization_id, ", ".join(changes))
        return pb.UpdateOrganizationResponse(organization=_organization_message(row))

    # --- keys ------------------------------------------------------------------------------------

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        _check_name(violations, "name", request.name)
        if not request.scopes:
            violations.add("scopes", "at least one scope is required")
        for index, scope in enumerate(request.scopes):
            if scope not in _VALID_SCOPES:
                violations.add(f"scopes[{index}]", f"unknown scope {scope}")
        expires_at = None
        if request.HasField("expire_time"):
            expires_at = checked_datetime(violations, "expire_time", request.expire_time, EXPIRY_RANGE)
            if expires_at is not None and expires_at <= datetime.now(UTC):
                violations.add("expire_time", "must be in the future")
        violations.raise_if_any()
        assert organization_id is not None
        if not await self._store.organization_exists(organization_id):
            raise NotFound(f"organization {organization_id} does not exist")
        secret = keys.generate_key()
        row = await self._store.create_api_key(
            organization_id,
            request.name.strip(),
            keys.visible_prefix(secret),
            keys.hash_key(secret),
            sorted(set(request.scopes)),
            expires_at,
        )
        logger.info("created API key %s for organization %s", row.id, organization_id)
        return pb.CreateApiKeyResponse(api_key=_api_key_message(row), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        violations.raise_if_any()
        assert organization_id is not None
        rows = await self._store.list_api_keys(organization_id, request.include_revoked)
        return pb.ListApiKeysResponse(api_keys=[_api_key_message(row) for row in rows])

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.RevokeApiKeyResponse:
        scoped_to: uuid.UUID | None = None
        if not has_service_credential(context, self._service_token):
            caller = await self._user_key(context)
            _require_scope(caller, pb.API_KEY_SCOPE_ADMIN)
            scoped_to = caller.organization_id
        violations = Violations()
        api_key_id = _parse_uuid(violations, "api_key_id", request.api_key_id)
        violations.raise_if_any()
        assert api_key_id is not None
        row = await self._store.revoke_api_key(api_key_id, scoped_to)
        if row is None:
            raise NotFound(f"API key {api_key_id} does not exist")
        logger.info("revoked API key %s of organization %s", row.id, row.organization_id)
        return pb.RevokeApiKeyResponse(api_key=_api_key_message(row))

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Context) -> pb.AuthenticateResponse:
        require_service_credential(context, self._service_token)
        violations = Violations()
        violations.require("api_key", request.api_key)
        violations.raise_if_any()
        row = await self._usable_key(request.api_key)
        if row is None:
            raise Unauthenticated("the API key is invalid, revoked or expired", "INVALID_API_KEY")
        response = pb.AuthenticateResponse(
            organization_id=str(row.organization_id),
            api_key_id=str(row.id),
            scopes=row.scopes,  # type: ignore[arg-type]
        )
        if row.expires_at is not None:
            response.expire_time.CopyFrom(_timestamp(row.expires_at))
        return response

    # --- pricing (see candela_auth.pricing) -------------------------------------------------------

    async def SetPriceOverride(
        self, request: pb.SetPriceOverrideRequest, context: Context
    ) -> pb.SetPriceOverrideResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        wanted = request.price_override
        check_provider(violations, "price_override.provider", wanted.provider)
        check_model(violations, "price_override.model", wanted.model)
        input_price = parse_price(violations, "price_override.input_price_per_mtok", wanted.input_price_per_mtok)
        output_price = parse_price(violations, "price_override.output_price_per_mtok", wanted.output_price_per_mtok)
        cached_input_price = parse_price(
            violations,
            "price_override.cached_input_price_per_mtok",
            wanted.cached_input_price_per_mtok,
            required=False,
        )
        cache_write_price = parse_price(
            violations, "price_override.cache_write_price_per_mtok", wanted.cache_write_price_per_mtok, required=False
        )
        violations.raise_if_any()
        assert organization_id is not None
        assert input_price is not None
        assert output_price is not None
        row = await self._pricing.set_price_override(
            organization_id,
            wanted.provider,
            wanted.model,
            input_price,
            output_price,
            cached_input_price,
            cache_write_price,
        )
        if row is None:
            raise NotFound(f"organization {organization_id} does not exist")
        await self._changed(organization_id)
        logger.info("set a price override for organization %s", organization_id)
        return pb.SetPriceOverrideResponse(price_override=_price_override_message(row))

    async def ListPriceOverrides(
        self, request: pb.ListPriceOverridesRequest, context: Context
    ) -> pb.ListPriceOverridesResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_READ
        )
        violations.raise_if_any()
        assert organization_id is not None
        rows = await self._pricing.list_price_overrides(organization_id)
        return pb.ListPriceOverridesResponse(price_overrides=[_price_override_message(row) for row in rows])

    async def DeletePriceOverride(
        self, request: pb.DeletePriceOverrideRequest, context: Context
    ) -> pb.DeletePriceOverrideResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        check_provider(violations, "provider", request.provider)
        check_model(violations, "model", request.model)
        violations.raise_if_any()
        assert organization_id is not None
        if not await self._pricing.delete_price_override(organization_id, request.provider, request.model):
            raise NotFound(f"no price override for {request.provider} {request.model!r}")
        await self._changed(organization_id)
        logger.info("deleted a price override of organization %s", organization_id)
        return pb.DeletePriceOverrideResponse()

    async def SetModelAlias(self, request: pb.SetModelAliasRequest, context: Context) -> pb.SetModelAliasResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        wanted = request.model_alias
        check_model(violations, "model_alias.model", wanted.model)
        check_provider(violations, "model_alias.target_provider", wanted.target_provider)
        check_model(violations, "model_alias.target_model", wanted.target_model)
        if not violations.items and not genai_prices_knows(wanted.target_provider, wanted.target_model):
            violations.add(
                "model_alias.target_model",
                f"genai-prices has no price for {wanted.target_model!r} at provider {wanted.target_provider!r}; "
                "alias a model it knows, or set a price override instead",
            )
        violations.raise_if_any()
        assert organization_id is not None
        row = await self._pricing.set_model_alias(
            organization_id, wanted.model, wanted.target_provider, wanted.target_model
        )
        if row is None:
            raise NotFound(f"organization {organization_id} does not exist")
        await self._changed(organization_id)
        logger.info("set a model alias for organization %s", organization_id)
        return pb.SetModelAliasResponse(model_alias=_model_alias_message(row))

    async def ListModelAliases(
        self, request: pb.ListModelAliasesRequest, context: Context
    ) -> pb.ListModelAliasesResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_READ
        )
        violations.raise_if_any()
        assert organization_id is not None
        rows = await self._pricing.list_model_aliases(organization_id)
        return pb.ListModelAliasesResponse(model_aliases=[_model_alias_message(row) for row in rows])

    async def DeleteModelAlias(
        self, request: pb.DeleteModelAliasRequest, context: Context
    ) -> pb.DeleteModelAliasResponse:
        violations = Violations()
        organization_id = await self._target_organization(
            context, violations, request.organization_id, pb.API_KEY_SCOPE_ADMIN
        )
        check_model(violations, "model", request.model)
        violations.raise_if_any()
        assert organization_id is not None
        if not await self._pricing.delete_model_alias(organization_id, request.model):
            raise NotFound(f"no model alias for {request.model!r}")
        await self._changed(organization_id)
        logger.info("deleted a model alias of organization %s", organization_id)
        return pb.DeleteModelAliasResponse()

    async def WatchPricing(
        self, request: pb.WatchPricingRequest, context: Context
    ) -> AsyncIterator[pb.WatchPricingResponse]:
        require_service_credential(context, self._service_token)
        async for notice in self._watchers.watch():
            yield notice

    async def FollowPricing(
        self, request_iterator: AsyncIterator[pb.FollowPricingRequest], context: Context
    ) -> AsyncIterator[pb.FollowPricingResponse]:
        require_service_credential(context, self._service_token)
        async for notice in self._watchers.follow(request_iterator):
            yield notice

    async def _changed(self, organization_id: uuid.UUID) -> None:
        """Tells the proxies following this replica, and waits until they have applied the notice (see
        candela_auth.pricing)."""
        await self._watchers.applied(self._watchers.notify(str(organization_id)))

    # --- authorization ---------------------------------------------------------------------------

    async def _usable_key(self, secret: str) -> ApiKeyRow | None:
        digest = keys.hash_key(secret)
        row = await self._store.find_api_key(digest)
        if row is None or not keys.digests_match(row.key_hash, digest):
            return None
        return row if _is_usable(row, datetime.now(UTC)) else None

    async def _user_key(self, context: Context) -> ApiKeyRow:
        secret = bearer_key(context)
        if secret is None:
            raise Unauthenticated(
                "send 'authorization: Bearer <Candela API key>' (or the service credential)", "MISSING_API_KEY"
            )
        caller = await self._usable_key(secret)
        if caller is None:
            raise Unauthenticated("the API key is invalid, revoked or expired", "INVALID_API_KEY")
        return caller

    async def _target_organization(
        self, context: Context, violations: Violations, named: str, scope: int
    ) -> uuid.UUID | None:
        """The organization a call acts on: named by an internal caller, else the caller key's own.

        Authentication and authorization failures raise at once; a malformed id is added to
        ``violations`` (the caller raises them together with the other fields').
        """
        if has_service_credential(context, self._service_token):
            return _parse_uuid(violations, "organization_id", named)
        caller = await self._user_key(context)
        _require_scope(caller, scope)
        requested = _parse_uuid(violations, "organization_id", named, required=False)
        if requested is not None and requested != caller.organization_id:
            raise PermissionDenied("an API key can only act on its own organization")
        return caller.organization_id


def _require_scope(caller: ApiKeyRow, scope: int) -> None:
    if scope not in caller.scopes and pb.API_KEY_SCOPE_ADMIN not in caller.scopes:
        raise PermissionDenied(f"this API key lacks the {pb.ApiKeyScope.Name(scope)} scope")  # type: ignore[arg-type]


def _organization_changes(request: pb.UpdateOrganizationRequest, violations: Violations) -> dict[str, object]:
    """The columns to set, from the update mask (or, without one, from the fields present)."""
    wanted = request.organization
    paths = list(request.update_mask.paths)
    for index, path in enumerate(paths):
        if path not in _UPDATABLE_FIELDS:
            violations.add(f"update_mask.paths[{index}]", f"cannot update {path!r}; use {', '.join(_UPDATABLE_FIELDS)}")
    if not paths:
        paths = [
            field
            for field, present in (
                ("name", bool(wanted.name)),
                ("max_stored_logs", wanted.HasField("max_stored_logs")),
                ("retention_days", wanted.HasField("retention_days")),
            )
            if present
        ]
        if not paths:
            violations.add("organization", "nothing to update: set name, max_stored_logs or retention_days")
    changes: dict[str, object] = {}
    if "name" in paths:
        _check_name(violations, "organization.name", wanted.name)
        changes["name"] = wanted.name.strip()
    if "max_stored_logs" in paths:
        limit = wanted.max_stored_logs if wanted.HasField("max_stored_logs") else None
        if limit is not None and limit < 0:
            violations.add("organization.max_stored_logs", "must be 0 or more (unset for unlimited)")
        changes["max_stored_logs"] = limit
    if "retention_days" in paths:
        days = wanted.retention_days if wanted.HasField("retention_days") else None
        if days is not None and not 0 < days <= MAX_RETENTION_DAYS:
            violations.add("organization.retention_days", f"must be 1-{MAX_RETENTION_DAYS} (unset for forever)")
        changes["retention_days"] = days
    return changes


def _organization_message(row: OrganizationRow) -> pb.Organization:
    message = pb.Organization(
        id=str(row.id), name=row.name, create_time=_timestamp(row.created_at), update_time=_timestamp(row.updated_at)
    )
    if row.max_stored_logs is not None:
        message.max_stored_logs = row.max_stored_logs
    if row.retention_days is not None:
        message.retention_days = row.retention_days
    return message


def _api_key_message(row: ApiKeyRow) -> pb.ApiKey:
    message = pb.ApiKey(
        id=str(row.id),
        organization_id=str(row.organization_id),
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),  # type: ignore[arg-type]
        create_time=_timestamp(row.created_at),
    )
    if row.expires_at is not None:
        message.expire_time.CopyFrom(_timestamp(row.expires_at))
    if row.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(row.revoked_at))
    return message


def _price_override_message(row: PriceOverrideRow) -> pb.PriceOverride:
    message = pb.PriceOverride(
        provider=row.provider,
        model=row.model,
        input_price_per_mtok=price_text(row.input_price_per_mtok),
        output_price_per_mtok=price_text(row.output_price_per_mtok),
        update_time=_timestamp(row.updated_at),
    )
    if row.cached_input_price_per_mtok is not None:
        message.cached_input_price_per_mtok = price_text(row.cached_input_price_per_mtok)
    if row.cache_write_price_per_mtok is not None:
        message.cache_write_price_per_mtok = price_text(row.cache_write_price_per_mtok)
    return message


def _model_alias_message(row: ModelAliasRow) -> pb.ModelAlias:
    return pb.ModelAlias(
        model=row.model,
        target_provider=row.target_provider,
        target_model=row.target_model,
        update_time=_timestamp(row.updated_at),
    )
