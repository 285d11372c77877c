"""AuthService on a real Postgres: organizations, keys stored only as hashes, authentication, authorization."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_runtime.errors import Unauthenticated, bad_request_violations, rpc_error_status
from candela_runtime.security import KeyAuthenticator, service_metadata
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, create_key, create_organization

pytestmark = pytest.mark.integration

INTERNAL = service_metadata(SERVICE_TOKEN)


async def test_create_organization_needs_the_service_credential(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.CreateOrganization(pb.CreateOrganizationRequest(name="Acme"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.CreateOrganization(
            pb.CreateOrganizationRequest(name="Acme"), metadata=service_metadata("wrong")
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_missing_name_is_invalid_argument_with_details(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.CreateOrganization(pb.CreateOrganizationRequest(name="  "), metadata=INTERNAL)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert [(v.field, v.description) for v in bad_request_violations(status)] == [("name", "is required")]


async def test_key_is_returned_once_and_stored_only_as_a_hash(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub, auth_server: AuthServer
) -> None:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ)
    assert created.secret.startswith("cdl_")
    assert len(created.secret) >= 40
    assert created.secret.startswith(created.api_key.prefix)
    assert list(created.api_key.scopes) == [pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ]

    pool: asyncpg.Pool = auth_server.deps.pool
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(created.api_key.id))
    assert row is not None
    assert bytes(row["key_hash"]) == hashlib.sha256(created.secret.encode()).digest()
    stored_text = " ".join(str(value) for value in row.values())
    assert created.secret not in stored_text
    assert created.secret[len(created.api_key.prefix) :] not in stored_text

    answer = await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert (answer.organization_id, answer.api_key_id) == (organization_id, created.api_key.id)
    assert list(answer.scopes) == [pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ]


async def test_unknown_and_revoked_keys_do_not_authenticate(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub, auth_server: AuthServer
) -> None:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_PROXY)
    for wrong in ("cdl_" + "x" * 43, created.secret + "x", created.secret[:-1]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=wrong), metadata=INTERNAL)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    await auth_server.deps.pool.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1", uuid.UUID(created.api_key.id)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_authenticate_is_internal_only(auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub) -> None:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Authenticate(
            pb.AuthenticateRequest(api_key=created.secret), metadata=(("authorization", f"Bearer {created.secret}"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_keys_manage_only_their_own_organization(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours = await create_organization(auth_stub, "Ours")
    theirs = await create_organization(auth_stub, "Theirs")
    admin = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_ADMIN)
    reader = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_READ)

    def as_key(secret: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {secret}"),)

    made = await auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(organization_id=ours, name="made by admin", scopes=[pb.API_KEY_SCOPE_READ]),
        metadata=as_key(admin.secret),
    )
    assert made.api_key.organization_id == ours

    for secret, organization_id in ((admin.secret, theirs), (reader.secret, ours)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_stub.CreateApiKey(
                pb.CreateApiKeyRequest(organization_id=organization_id, name="x", scopes=[pb.API_KEY_SCOPE_READ]),
                metadata=as_key(secret),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_create_key_validation(auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.CreateApiKey(
            pb.CreateApiKeyRequest(organization_id="not-a-uuid", name="", scopes=[pb.ApiKeyScope.ValueType(99)]),
            metadata=INTERNAL,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    fields = {v.field for v in bad_request_violations(status)}
    assert fields == {"organization_id", "name", "scopes[0]"}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_key(auth_stub, str(uuid.uuid4()), pb.API_KEY_SCOPE_READ)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _as_key(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def _code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


async def _violations_of(call: Awaitable[object]) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_error_status(caught.value)
    assert status is not None
    return {v.field: v.description for v in bad_request_violations(status)}


async def test_get_organization_for_the_service_and_for_the_organization_keys(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours = await create_organization(auth_stub, "Ours")
    theirs = await create_organization(auth_stub, "Theirs")
    reader = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_READ)
    proxy_only = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_PROXY)

    internal = await auth_stub.GetOrganization(pb.GetOrganizationRequest(organization_id=ours), metadata=INTERNAL)
    assert (internal.organization.id, internal.organization.name) == (ours, "Ours")
    # New organizations are unlimited: the limits are absent, not zero.
    assert not internal.organization.HasField("max_stored_logs")
    assert not internal.organization.HasField("retention_days")
    own = await auth_stub.GetOrganization(pb.GetOrganizationRequest(), metadata=_as_key(reader.secret))
    assert own.organization.id == ours

    denied = auth_stub.GetOrganization(
        pb.GetOrganizationRequest(organization_id=theirs), metadata=_as_key(reader.secret)
    )
    assert await _code_of(denied) == grpc.StatusCode.PERMISSION_DENIED
    no_scope = auth_stub.GetOrganization(pb.GetOrganizationRequest(), metadata=_as_key(proxy_only.secret))
    assert await _code_of(no_scope) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code_of(auth_stub.GetOrganization(pb.GetOrganizationRequest())) == grpc.StatusCode.UNAUTHENTICATED
    missing = await _violations_of(auth_stub.GetOrganization(pb.GetOrganizationRequest(), metadata=INTERNAL))
    assert missing == {"organization_id": "is required"}
    unknown = auth_stub.GetOrganization(pb.GetOrganizationRequest(organization_id=str(uuid.uuid4())), metadata=INTERNAL)
    assert await _code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_update_organization_limits_are_stored_where_the_writers_read_them(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub, auth_server: AuthServer
) -> None:
    organization_id = await create_organization(auth_stub, "Limited")
    admin = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    reader = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_READ)

    updated = await auth_stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization=pb.Organization(max_stored_logs=1000, retention_days=30)),
        metadata=_as_key(admin.secret),
    )
    assert (updated.organization.max_stored_logs, updated.organization.retention_days) == (1000, 30)
    assert updated.organization.name == "Limited"
    row = await auth_server.deps.pool.fetchrow(
        "SELECT name, max_stored_logs, retention_days FROM organizations WHERE id = $1", uuid.UUID(organization_id)
    )
    assert row is not None
    assert tuple(row.values()) == ("Limited", 1000, 30)

    # A field named in the mask but left unset goes back to unlimited; the other one stays.
    cleared = await auth_stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=pb.Organization(name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "max_stored_logs"]),
        ),
        metadata=_as_key(admin.secret),
    )
    assert cleared.organization.name == "Renamed"
    assert not cleared.organization.HasField("max_stored_logs")
    assert cleared.organization.retention_days == 30

    # The service credential may change any organization, named in the request.
    internal = await auth_stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization_id=organization_id, organization=pb.Organization(retention_days=7)),
        metadata=INTERNAL,
    )
    assert internal.organization.retention_days == 7

    bad = await _violations_of(
        auth_stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(organization=pb.Organization(max_stored_logs=-1, retention_days=0)),
            metadata=_as_key(admin.secret),
        )
    )
    assert set(bad) == {"organization.max_stored_logs", "organization.retention_days"}
    bad_mask = await _violations_of(
        auth_stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(update_mask=field_mask_pb2.FieldMask(paths=["id"])),
            metadata=_as_key(admin.secret),
        )
    )
    assert "update_mask.paths[0]" in bad_mask
    nothing = await _violations_of(
        auth_stub.UpdateOrganization(pb.UpdateOrganizationRequest(), metadata=_as_key(admin.secret))
    )
    assert "organization" in nothing
    reader_call = auth_stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization=pb.Organization(retention_days=1)), metadata=_as_key(reader.secret)
    )
    assert await _code_of(reader_call) == grpc.StatusCode.PERMISSION_DENIED


async def test_list_keys_shows_prefix_and_metadata_never_the_secret(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours = await create_organization(auth_stub, "Ours")
    theirs = await create_organization(auth_stub, "Theirs")
    admin = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_ADMIN)
    expiring = await auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            name="expiring",
            scopes=[pb.API_KEY_SCOPE_READ],
            expire_time=timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600),
        ),
        metadata=_as_key(admin.secret),
    )
    # An admin key with no organization_id creates in its own organization.
    assert expiring.api_key.organization_id == ours
    assert expiring.api_key.expire_time.seconds > time.time()
    other = await create_key(auth_stub, theirs, pb.API_KEY_SCOPE_ADMIN)

    listed = await auth_stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=_as_key(admin.secret))
    assert [key.id for key in listed.api_keys] == [expiring.api_key.id, admin.api_key.id]
    assert listed.api_keys[0].prefix == expiring.secret[: len(listed.api_keys[0].prefix)]
    assert listed.api_keys[0].HasField("expire_time")
    text = str(listed)
    for secret in (admin.secret, expiring.secret, other.secret):
        assert secret not in text
        assert secret[len("cdl_") + 8 :] not in text
    internal = await auth_stub.ListApiKeys(pb.ListApiKeysRequest(organization_id=theirs), metadata=INTERNAL)
    assert [key.id for key in internal.api_keys] == [other.api_key.id]
    reader = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_READ)
    denied = auth_stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=_as_key(reader.secret))
    assert await _code_of(denied) == grpc.StatusCode.PERMISSION_DENIED
    cross = auth_stub.ListApiKeys(pb.ListApiKeysRequest(organization_id=theirs), metadata=_as_key(admin.secret))
    assert await _code_of(cross) == grpc.StatusCode.PERMISSION_DENIED


async def test_revoke_key_takes_effect_at_once_here_and_only_within_the_organization(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours = await create_organization(auth_stub, "Ours")
    theirs = await create_organization(auth_stub, "Theirs")
    admin = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_ADMIN)
    victim = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_PROXY)
    their_admin = await create_key(auth_stub, theirs, pb.API_KEY_SCOPE_ADMIN)

    cross = auth_stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=victim.api_key.id), metadata=_as_key(their_admin.secret)
    )
    assert await _code_of(cross) == grpc.StatusCode.NOT_FOUND
    still = await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=victim.secret), metadata=INTERNAL)
    assert still.api_key_id == victim.api_key.id

    revoked = await auth_stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=victim.api_key.id), metadata=_as_key(admin.secret)
    )
    assert revoked.api_key.HasField("revoke_time")
    refused = auth_stub.Authenticate(pb.AuthenticateRequest(api_key=victim.secret), metadata=INTERNAL)
    assert await _code_of(refused) == grpc.StatusCode.UNAUTHENTICATED
    again = await auth_stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=victim.api_key.id), metadata=INTERNAL)
    assert again.api_key.revoke_time == revoked.api_key.revoke_time

    listed = await auth_stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=_as_key(admin.secret))
    assert victim.api_key.id not in [key.id for key in listed.api_keys]
    with_revoked = await auth_stub.ListApiKeys(
        pb.ListApiKeysRequest(include_revoked=True), metadata=_as_key(admin.secret)
    )
    assert victim.api_key.id in [key.id for key in with_revoked.api_keys]

    bad = await _violations_of(auth_stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id="nope"), metadata=INTERNAL))
    assert set(bad) == {"api_key_id"}
    unknown = auth_stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=str(uuid.uuid4())), metadata=INTERNAL)
    assert await _code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_expired_keys_are_refused(auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub) -> None:
    organization_id = await create_organization(auth_stub)
    past = await _violations_of(
        auth_stub.CreateApiKey(
            pb.CreateApiKeyRequest(
                organization_id=organization_id,
                name="old",
                scopes=[pb.API_KEY_SCOPE_READ],
                expire_time=timestamp_pb2.Timestamp(seconds=int(time.time()) - 1),
            ),
            metadata=INTERNAL,
        )
    )
    assert past == {"expire_time": "must be in the future"}

    expires_at = time.time() + 1.0
    created = await auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            organization_id=organization_id,
            name="short-lived",
            scopes=[pb.API_KEY_SCOPE_READ],
            expire_time=timestamp_pb2.Timestamp(seconds=int(expires_at), nanos=int(expires_at % 1 * 1e9)),
        ),
        metadata=INTERNAL,
    )
    answer = await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert answer.expire_time == created.api_key.expire_time
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
    refused = auth_stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert await _code_of(refused) == grpc.StatusCode.UNAUTHENTICATED


async def test_user_keys_cannot_create_keys_for_another_organization_in_the_body(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours = await create_organization(auth_stub, "Ours")
    admin = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_ADMIN)
    bad = await _violations_of(
        auth_stub.CreateApiKey(
            pb.CreateApiKeyRequest(organization_id="not-a-uuid", name="x", scopes=[pb.API_KEY_SCOPE_READ]),
            metadata=_as_key(admin.secret),
        )
    )
    assert set(bad) == {"organization_id"}
    unknown = auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(organization_id=str(uuid.uuid4()), name="x", scopes=[pb.API_KEY_SCOPE_READ]),
        metadata=_as_key(admin.secret),
    )
    assert await _code_of(unknown) == grpc.StatusCode.PERMISSION_DENIED
    revoked = await create_key(auth_stub, ours, pb.API_KEY_SCOPE_ADMIN)
    await auth_stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=revoked.api_key.id), metadata=INTERNAL)
    with_revoked = auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="x", scopes=[pb.API_KEY_SCOPE_READ]), metadata=_as_key(revoked.secret)
    )
    assert await _code_of(with_revoked) == grpc.StatusCode.UNAUTHENTICATED


async def test_key_authenticator_sees_a_revocation_within_its_ttl(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    """What the proxy, query and prompts do: a cached answer, refused within ``ttl_s`` of revocation."""
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, pb.API_KEY_SCOPE_PROXY)
    ttl_s = 1.0
    authenticator = KeyAuthenticator(auth_stub, SERVICE_TOKEN, ttl_s=ttl_s)
    caller = await authenticator.authenticate(created.secret)
    assert caller.organization_id == organization_id
    await auth_stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=INTERNAL)
    revoked_at = time.monotonic()
    while True:
        try:
            await authenticator.authenticate(created.secret)
        except Unauthenticated:
            break
        assert time.monotonic() - revoked_at <= ttl_s + 0.5, "revocation not seen within the cache TTL"
        await asyncio.sleep(0.05)
    assert time.monotonic() - revoked_at <= ttl_s + 0.5


async def test_expire_times_outside_the_timestamp_range_name_the_range(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    organization_id = await create_organization(auth_stub)

    def request(expire_time: timestamp_pb2.Timestamp) -> pb.CreateApiKeyRequest:
        return pb.CreateApiKeyRequest(
            organization_id=organization_id, name="k", scopes=[pb.API_KEY_SCOPE_READ], expire_time=expire_time
        )

    # Once INTERNAL: protobuf's conversion raised before any check.
    too_late = await _violations_of(
        auth_stub.CreateApiKey(request(timestamp_pb2.Timestamp(seconds=2**62)), metadata=INTERNAL)
    )
    assert "between 0001-01-01T00:00:00Z and 9999-12-31T23:59:58Z" in too_late["expire_time"]
    bad_nanos = timestamp_pb2.Timestamp(seconds=int(time.time()) + 60, nanos=-1)
    assert await _violations_of(auth_stub.CreateApiKey(request(bad_nanos), metadata=INTERNAL)) == {
        "expire_time.nanos": "must be 0 to 999999999, got -1"
    }
    # The last instant accepted is a valid expiry, stored and read back as it was.
    last = timestamp_pb2.Timestamp(seconds=253_402_300_798, nanos=999_999_999)
    created = await auth_stub.CreateApiKey(request(last), metadata=INTERNAL)
    assert created.api_key.expire_time == timestamp_pb2.Timestamp(seconds=253_402_300_798, nanos=999_999_000)
    answer = await auth_stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert (answer.api_key_id, answer.expire_time) == (created.api_key.id, created.api_key.expire_time)


async def test_a_nul_in_a_name_is_invalid_argument_naming_the_field(
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    """Postgres text cannot hold U+0000: once INTERNAL, now refused before the store."""
    nul = "must not contain NUL (U+0000) characters"
    created = auth_stub.CreateOrganization(pb.CreateOrganizationRequest(name="Ac\x00me"), metadata=INTERNAL)
    assert await _violations_of(created) == {"name": nul}
    organization_id = await create_organization(auth_stub)
    renamed = auth_stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization_id=organization_id, organization=pb.Organization(name="x\x00")),
        metadata=INTERNAL,
    )
    assert await _violations_of(renamed) == {"organization.name": nul}
    key = auth_stub.CreateApiKey(
        pb.CreateApiKeyRequest(organization_id=organization_id, name="\x00", scopes=[pb.API_KEY_SCOPE_READ]),
        metadata=INTERNAL,
    )
    assert await _violations_of(key) == {"name": nul}
