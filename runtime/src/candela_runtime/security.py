"""Who is calling: the internal service credential, and Candela API keys resolved through AuthService.

Internal calls (proxy -> auth, proxy -> ingest, launcher -> auth) carry a shared service token in the
``candela-service-token`` metadata entry. Users' calls carry their Candela key as
``authorization: Bearer <key>``; services resolve it through AuthService.Authenticate with a short cache,
so revocation takes effect within ``ttl_s`` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from candela.auth.v1 import auth_service_pb2

if TYPE_CHECKING:
    from candela.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
from candela_runtime.errors import PermissionDenied, Unauthenticated, Unavailable

SERVICE_TOKEN_METADATA = "candela-service-token"
Metadata = Sequence[tuple[str, str]]


def service_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata that authenticates an internal call."""
    return ((SERVICE_TOKEN_METADATA, token),)


def _metadata_value(context: grpc.aio.ServicerContext[object, object], key: str) -> str | None:
    for entry_key, value in context.invocation_metadata() or ():
        if entry_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


def has_service_credential(context: grpc.aio.ServicerContext[object, object], token: str) -> bool:
    """Whether the call presents the service token (compared in constant time)."""
    presented = _metadata_value(context, SERVICE_TOKEN_METADATA)
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def require_service_credential(context: grpc.aio.ServicerContext[object, object], token: str) -> None:
    """Raises UNAUTHENTICATED unless the call is an authenticated internal call."""
    if not has_service_credential(context, token):
        raise Unauthenticated("this method requires the Candela service credential", "SERVICE_CREDENTIAL")


def bearer_key(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The Candela key from ``authorization: Bearer <key>``, if present."""
    value = _metadata_value(context, "authorization")
    if value is None:
        return None
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


@dataclass(frozen=True)
class Caller:
    """An authenticated API key: the organization every read and write is scoped to."""

    organization_id: str
    api_key_id: str
    scopes: frozenset[int]
    expires_at: float | None = None
    """When the key expires (seconds since the epoch), if it does."""

    def require_scope(self, scope: int) -> None:
        """Raises PERMISSION_DENIED unless the key has ``scope`` (admin implies every scope)."""
        if scope not in self.scopes and auth_service_pb2.API_KEY_SCOPE_ADMIN not in self.scopes:
            name = auth_service_pb2.ApiKeyScope.Name(scope)  # type: ignore[arg-type]
            raise PermissionDenied(f"this API key lacks the {name} scope")

    def require_any_scope(self, *scopes: int) -> None:
        """Raises PERMISSION_DENIED unless the key has one of ``scopes`` (admin implies every scope)."""
        if not self.scopes & {*scopes, auth_service_pb2.API_KEY_SCOPE_ADMIN}:
            names = " or ".join(auth_service_pb2.ApiKeyScope.Name(s) for s in scopes)  # type: ignore[arg-type]
            raise PermissionDenied(f"this API key lacks the {names} scope")


class KeyAuthenticator:
    """Resolves Candela keys through AuthService, caching answers (good and bad) for ``ttl_s`` seconds."""

    def __init__(
        self,
        stub: AuthServiceAsyncStub,
        service_token: str,
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self._stub = stub
        self._metadata = service_metadata(service_token)
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        # Keyed by a digest so the cache never holds a key in the clear.
        self._cache: dict[bytes, tuple[float, Caller | None]] = {}
        self._pending: dict[bytes, asyncio.Task[Caller | None]] = {}

    async def authenticate(self, api_key: str) -> Caller:
        """The caller behind ``api_key``; UNAUTHENTICATED when it is unknown, revoked or expired."""
        digest = hashlib.sha256(api_key.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            caller = cached[1]
            # A cached answer never outlives the key's own expiry.
            if caller is not None and caller.expires_at is not None and caller.expires_at <= time.time():
                caller = None
        else:
            caller = await self._shared_lookup(api_key, digest, now)
        if caller is None:
            raise Unauthenticated("the Candela API key is invalid, revoked or expired", "INVALID_API_KEY")
        return caller

    async def authenticate_call(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        """The caller of a gRPC call, from its bearer key."""
        key = bearer_key(context)
        if key is None:
            raise Unauthenticated("missing 'authorization: Bearer <Candela API key>' metadata", "MISSING_API_KEY")
        return await self.authenticate(key)

    async def _shared_lookup(self, api_key: str, digest: bytes, now: float) -> Caller | None:
        """One AuthService call per key at a time: the requests that miss the cache together share it.

        Under load every request in flight misses at once when an entry expires (64 concurrent requests made
        64 calls every ``ttl_s``); they now wait for the first one's answer. Shielded: a waiter that is
        cancelled leaves the call to the others.
        """
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup_and_cache(api_key, digest, now))
            self._pending[digest] = pending
            pending.add_done_callback(functools.partial(self._forget, digest))
        return await asyncio.shield(pending)

    async def _lookup_and_cache(self, api_key: str, digest: bytes, now: float) -> Caller | None:
        caller = await self._lookup(api_key)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, caller)
        return caller

    def _forget(self, digest: bytes, done: asyncio.Task[Caller | None]) -> None:
        self._pending.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved: its waiters had it, or none was left to (all cancelled)

    async def _lookup(self, api_key: str) -> Caller | None:
        try:
            response = await self._stub.Authenticate(
                auth_service_pb2.AuthenticateRequest(api_key=api_key), metadata=self._metadata, timeout=5.0
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                return None
            raise Unavailable(f"the auth service is unavailable: {err.code().name}") from err
        return Caller(
            organization_id=response.organization_id,
            api_key_id=response.api_key_id,
            scopes=frozenset(response.scopes),
            expires_at=response.expire_time.ToNanoseconds() / 1e9 if response.HasField("expire_time") else None,
        )
