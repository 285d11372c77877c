"""The AuthService servicer, RPC by RPC, in-process on the test Postgres: for each RPC its answer, bad input
(INVALID_ARGUMENT naming the fields), a missing or wrong credential, a missing thing, and permission.
tests/integration/test_auth_service.py follows the flows across RPCs (a key's life, tenancy).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_auth.service import MAX_NAME_LENGTH, MAX_RETENTION_DAYS
from candela_auth.store import AuthStore
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer

pytestmark = pytest.mark.integration

INTERNAL = service_metadata(SERVICE_TOKEN)
Stub: TypeAlias = "auth_service_pb2_grpc.AuthServiceAsyncStub"  # the async stub exists in the type stubs only


@pytest.fixture(scope="module")
def store(auth_server: AuthServer) -> AuthStore:
    """The service's own store on the test database, to look at what an RPC wrote."""
    return AuthStore(auth_server.deps.pool)


@pytest.fixture(scope="module")
def stub(auth_stub: Stub) -> Stub:
    return auth_stub


def as_key(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    code: grpc.StatusCode = (await failure(call)).code()
    return code


async def violations_of(call: Awaitable[object]) -> dict[str, str]:
    """The BadRequest field violations of a call that must fail with INVALID_ARGUMENT."""
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_error_status(error)
    assert status is not None
    return {violation.field: violation.description for violation in bad_request_violations(status)}


async def unauthenticated_reason(call: Awaitable[object]) -> str:
    """The ErrorInfo reason of a call that must fail with UNAUTHENTICATED."""
    error = await failure(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    status = rpc_error_status(error)
    assert status is not None
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    reason: str = info.reason
    return reason


async def organization(stub: Stub, name: str = "Acme") -> str:
    response = await stub.CreateOrganization(pb.CreateOrganizationRequest(name=name), metadata=INTERNAL)
    organization_id: str = response.organization.id
    return organization_id


async def key(stub: Stub, organization_id: str, *scopes: pb.ApiKeyScope.ValueType) -> pb.CreateApiKeyResponse:
    request = pb.CreateApiKeyRequest(organization_id=organization_id, name="key", scopes=list(scopes))
    response: pb.CreateApiKeyResponse = await stub.CreateApiKey(request, metadata=INTERNAL)
    return response


def past(seconds: int = 60) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=seconds))
    return stamp


# --- CreateOrganization ------------------------------------------------------------------------------


async def test_create_organization(stub: Stub, store: AuthStore) -> None:
    created = (
        await stub.CreateOrganization(pb.CreateOrganizationRequest(name="  Acme  "), metadata=INTERNAL)
    ).organization
    assert created.name == "Acme", "the name is stored trimmed"
    stored = await store.get_organization(uuid.UUID(created.id))
    assert stored is not None
    assert stored.name == "Acme"
    assert not created.HasField("max_stored_logs"), "a new organization is unlimited"
    assert created.create_time.seconds > 0


async def test_create_organization_refuses_bad_names(stub: Stub) -> None:
    def create(name: str) -> Awaitable[object]:
        return stub.CreateOrganization(pb.CreateOrganizationRequest(name=name), metadata=INTERNAL)

    assert await violations_of(create(" ")) == {"name": "is required"}
    assert await violations_of(create("x" * (MAX_NAME_LENGTH + 1))) == {
        "name": f"must be at most {MAX_NAME_LENGTH} characters"
    }
    assert await violations_of(create("a\x00b")) == {"name": "must not contain NUL (U+0000) characters"}


async def test_create_organization_needs_the_service_credential(stub: Stub) -> None:
    admin = await key(stub, await organization(stub), pb.API_KEY_SCOPE_ADMIN)
    request = pb.CreateOrganizationRequest(name="Acme")
    for metadata in ((), service_metadata("wrong"), as_key(admin.secret)):
        assert await unauthenticated_reason(stub.CreateOrganization(request, metadata=metadata)) == "SERVICE_CREDENTIAL"


# --- GetOrganization ---------------------------------------------------------------------------------


async def test_get_organization_for_the_service_and_for_its_own_keys(stub: Stub) -> None:
    ours = await organization(stub, "Ours")
    reader = await key(stub, ours, pb.API_KEY_SCOPE_READ)
    internal = await stub.GetOrganization(pb.GetOrganizationRequest(organization_id=ours), metadata=INTERNAL)
    assert (internal.organization.id, internal.organization.name) == (ours, "Ours")
    own = await stub.GetOrganization(pb.GetOrganizationRequest(), metadata=as_key(reader.secret))
    assert own.organization.id == ours, "a key's call without an organization acts on its own"
    named = await stub.GetOrganization(pb.GetOrganizationRequest(organization_id=ours), metadata=as_key(reader.secret))
    assert named.organization.id == ours


async def test_get_organization_bad_input_and_not_found(stub: Stub) -> None:
    get = stub.GetOrganization
    assert await violations_of(get(pb.GetOrganizationRequest(), metadata=INTERNAL)) == {
        "organization_id": "is required"
    }
    assert await violations_of(get(pb.GetOrganizationRequest(organization_id="acme"), metadata=INTERNAL)) == {
        "organization_id": "must be a UUID, got 'acme'"
    }
    unknown = pb.GetOrganizationRequest(organization_id=str(uuid.uuid4()))
    assert await code_of(get(unknown, metadata=INTERNAL)) == grpc.StatusCode.NOT_FOUND


async def test_get_organization_permission(stub: Stub) -> None:
    ours, theirs = await organization(stub, "Ours"), await organization(stub, "Theirs")
    reader = await key(stub, ours, pb.API_KEY_SCOPE_READ)
    proxy_only = await key(stub, ours, pb.API_KEY_SCOPE_PROXY)
    other = pb.GetOrganizationRequest(organization_id=theirs)
    assert await code_of(stub.GetOrganization(other, metadata=as_key(reader.secret))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    no_scope = await failure(stub.GetOrganization(pb.GetOrganizationRequest(), metadata=as_key(proxy_only.secret)))
    assert no_scope.code() == grpc.StatusCode.PERMISSION_DENIED
    assert no_scope.details() == "this API key lacks the API_KEY_SCOPE_READ scope"


async def test_get_organization_needs_a_credential(stub: Stub) -> None:
    request = pb.GetOrganizationRequest()
    assert await unauthenticated_reason(stub.GetOrganization(request)) == "MISSING_API_KEY"
    assert await unauthenticated_reason(stub.GetOrganization(request, metadata=as_key("cdl_nope"))) == (
        "INVALID_API_KEY"
    )
    wrong_token = service_metadata("wrong")  # not the service credential, and no key either
    assert await unauthenticated_reason(stub.GetOrganization(request, metadata=wrong_token)) == "MISSING_API_KEY"


# --- UpdateOrganization ------------------------------------------------------------------------------


async def test_update_organization_by_mask_and_by_the_fields_present(stub: Stub) -> None:
    organization_id = await organization(stub, "Before")
    admin = await key(stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    masked = await stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization_id=organization_id,
            organization=pb.Organization(name="ignored", max_stored_logs=10, retention_days=30),
            update_mask=field_mask_pb2.FieldMask(paths=["max_stored_logs"]),
        ),
        metadata=INTERNAL,
    )
    assert (masked.organization.name, masked.organization.max_stored_logs) == ("Before", 10)
    assert not masked.organization.HasField("retention_days"), "only the masked field changes"
    present = await stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization=pb.Organization(name=" After ", retention_days=7)),
        metadata=as_key(admin.secret),
    )
    assert (present.organization.name, present.organization.retention_days) == ("After", 7)
    assert present.organization.max_stored_logs == 10
    cleared = await stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization_id=organization_id, update_mask=field_mask_pb2.FieldMask(paths=["max_stored_logs"])
        ),
        metadata=INTERNAL,
    )
    assert not cleared.organization.HasField("max_stored_logs"), "a masked field left unset means unlimited"


async def test_update_organization_bad_input_and_not_found(stub: Stub) -> None:
    organization_id = await organization(stub)

    def update(**fields: object) -> Awaitable[object]:
        return stub.UpdateOrganization(pb.UpdateOrganizationRequest(**fields), metadata=INTERNAL)  # type: ignore[arg-type]

    assert await violations_of(update(organization_id=organization_id)) == {
        "organization": "nothing to update: set name, max_stored_logs or retention_days"
    }
    bad = await violations_of(
        update(
            organization_id=organization_id,
            organization=pb.Organization(id=str(uuid.uuid4()), max_stored_logs=-1, retention_days=0),
            update_mask=field_mask_pb2.FieldMask(paths=["max_stored_logs", "retention_days", "id"]),
        )
    )
    assert bad == {
        "organization.id": "must be empty or equal to organization_id",
        "update_mask.paths[2]": "cannot update 'id'; use name, max_stored_logs, retention_days",
        "organization.max_stored_logs": "must be 0 or more (unset for unlimited)",
        "organization.retention_days": f"must be 1-{MAX_RETENTION_DAYS} (unset for forever)",
    }
    unknown = update(organization_id=str(uuid.uuid4()), organization=pb.Organization(name="x"))
    assert await code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_update_organization_needs_admin_of_that_organization(stub: Stub) -> None:
    ours, theirs = await organization(stub, "Ours"), await organization(stub, "Theirs")
    admin = await key(stub, ours, pb.API_KEY_SCOPE_ADMIN)
    reader = await key(stub, ours, pb.API_KEY_SCOPE_READ)
    rename = pb.Organization(name="x")
    for secret, target in ((reader.secret, ours), (admin.secret, theirs)):
        call = stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(organization_id=target, organization=rename), metadata=as_key(secret)
        )
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    anonymous = stub.UpdateOrganization(pb.UpdateOrganizationRequest(organization_id=ours, organization=rename))
    assert await unauthenticated_reason(anonymous) == "MISSING_API_KEY"


# --- CreateApiKey ------------------------------------------------------------------------------------


async def test_create_api_key_returns_the_secret_once_and_stores_its_hash(stub: Stub, store: AuthStore) -> None:
    organization_id = await organization(stub)
    created = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            organization_id=organization_id,
            name=" ci ",
            scopes=[pb.API_KEY_SCOPE_READ, pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ],
        ),
        metadata=INTERNAL,
    )
    assert created.secret.startswith("cdl_")
    assert created.secret.startswith(created.api_key.prefix)
    assert created.api_key.name == "ci"
    assert list(created.api_key.scopes) == [pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ], "sorted, once each"
    stored = await store.get_api_key(uuid.UUID(created.api_key.id))
    assert stored is not None
    assert stored.key_hash == hashlib.sha256(created.secret.encode()).digest()
    assert created.secret not in repr(stored)
    admin = await key(stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    by_admin = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="by admin", scopes=[pb.API_KEY_SCOPE_READ]), metadata=as_key(admin.secret)
    )
    assert by_admin.api_key.organization_id == organization_id


async def test_create_api_key_bad_input_and_not_found(stub: Stub) -> None:
    bad = pb.CreateApiKeyRequest(
        organization_id="not-a-uuid", name="", scopes=[pb.ApiKeyScope.ValueType(99)], expire_time=past()
    )
    assert await violations_of(stub.CreateApiKey(bad, metadata=INTERNAL)) == {
        "organization_id": "must be a UUID, got 'not-a-uuid'",
        "name": "is required",
        "scopes[0]": "unknown scope 99",
        "expire_time": "must be in the future",
    }
    no_scopes = pb.CreateApiKeyRequest(organization_id=str(uuid.uuid4()), name="k")
    assert await violations_of(stub.CreateApiKey(no_scopes, metadata=INTERNAL)) == {
        "scopes": "at least one scope is required"
    }
    orphan = pb.CreateApiKeyRequest(organization_id=str(uuid.uuid4()), name="k", scopes=[pb.API_KEY_SCOPE_READ])
    assert await code_of(stub.CreateApiKey(orphan, metadata=INTERNAL)) == grpc.StatusCode.NOT_FOUND


async def test_create_api_key_needs_admin_of_that_organization(stub: Stub) -> None:
    ours, theirs = await organization(stub, "Ours"), await organization(stub, "Theirs")
    admin = await key(stub, ours, pb.API_KEY_SCOPE_ADMIN)
    writer = await key(stub, ours, pb.API_KEY_SCOPE_WRITE)
    for secret, target in ((writer.secret, ours), (admin.secret, theirs)):
        request = pb.CreateApiKeyRequest(organization_id=target, name="k", scopes=[pb.API_KEY_SCOPE_READ])
        assert await code_of(stub.CreateApiKey(request, metadata=as_key(secret))) == grpc.StatusCode.PERMISSION_DENIED
    request = pb.CreateApiKeyRequest(organization_id=ours, name="k", scopes=[pb.API_KEY_SCOPE_READ])
    assert await unauthenticated_reason(stub.CreateApiKey(request, metadata=service_metadata("wrong"))) == (
        "MISSING_API_KEY"
    )


# --- ListApiKeys -------------------------------------------------------------------------------------


async def test_list_api_keys_newest_first_without_secrets(stub: Stub) -> None:
    organization_id = await organization(stub)
    first = await key(stub, organization_id, pb.API_KEY_SCOPE_READ)
    second = await key(stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    await stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=first.api_key.id), metadata=INTERNAL)
    listed = await stub.ListApiKeys(pb.ListApiKeysRequest(organization_id=organization_id), metadata=INTERNAL)
    assert [item.id for item in listed.api_keys] == [second.api_key.id], "revoked keys are left out by default"
    everything = await stub.ListApiKeys(pb.ListApiKeysRequest(include_revoked=True), metadata=as_key(second.secret))
    assert [item.id for item in everything.api_keys] == [second.api_key.id, first.api_key.id]
    assert everything.api_keys[1].HasField("revoke_time")
    for secret in (first.secret, second.secret):
        assert secret not in str(everything)


async def test_list_api_keys_bad_input_permission_and_credential(stub: Stub) -> None:
    ours, theirs = await organization(stub, "Ours"), await organization(stub, "Theirs")
    admin = await key(stub, ours, pb.API_KEY_SCOPE_ADMIN)
    reader = await key(stub, ours, pb.API_KEY_SCOPE_READ)
    assert await violations_of(stub.ListApiKeys(pb.ListApiKeysRequest(organization_id="x"), metadata=INTERNAL)) == {
        "organization_id": "must be a UUID, got 'x'"
    }
    for secret, target in ((reader.secret, ours), (admin.secret, theirs)):
        call = stub.ListApiKeys(pb.ListApiKeysRequest(organization_id=target), metadata=as_key(secret))
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    assert await unauthenticated_reason(stub.ListApiKeys(pb.ListApiKeysRequest(organization_id=ours))) == (
        "MISSING_API_KEY"
    )


# --- RevokeApiKey ------------------------------------------------------------------------------------


async def test_revoke_api_key_keeps_the_first_revocation(stub: Stub) -> None:
    organization_id = await organization(stub)
    admin = await key(stub, organization_id, pb.API_KEY_SCOPE_ADMIN)
    victim = await key(stub, organization_id, pb.API_KEY_SCOPE_PROXY)
    request = pb.RevokeApiKeyRequest(api_key_id=victim.api_key.id)
    revoked = await stub.RevokeApiKey(request, metadata=as_key(admin.secret))
    assert revoked.api_key.HasField("revoke_time")
    again = await stub.RevokeApiKey(request, metadata=INTERNAL)
    assert again.api_key.revoke_time == revoked.api_key.revoke_time
    authenticate = stub.Authenticate(pb.AuthenticateRequest(api_key=victim.secret), metadata=INTERNAL)
    assert await unauthenticated_reason(authenticate) == "INVALID_API_KEY", "revoked at once"


async def test_revoke_api_key_bad_input_not_found_permission_and_credential(stub: Stub) -> None:
    ours, theirs = await organization(stub, "Ours"), await organization(stub, "Theirs")
    admin = await key(stub, ours, pb.API_KEY_SCOPE_ADMIN)
    reader = await key(stub, ours, pb.API_KEY_SCOPE_READ)
    their_key = await key(stub, theirs, pb.API_KEY_SCOPE_READ)
    assert await violations_of(stub.RevokeApiKey(pb.RevokeApiKeyRequest(), metadata=INTERNAL)) == {
        "api_key_id": "is required"
    }
    assert await violations_of(stub.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id="k"), metadata=INTERNAL)) == {
        "api_key_id": "must be a UUID, got 'k'"
    }
    unknown = pb.RevokeApiKeyRequest(api_key_id=str(uuid.uuid4()))
    assert await code_of(stub.RevokeApiKey(unknown, metadata=INTERNAL)) == grpc.StatusCode.NOT_FOUND
    theirs_request = pb.RevokeApiKeyRequest(api_key_id=their_key.api_key.id)
    assert await code_of(stub.RevokeApiKey(theirs_request, metadata=as_key(admin.secret))) == (
        grpc.StatusCode.NOT_FOUND
    ), "another organization's key is not found, exactly like one that does not exist"
    ours_request = pb.RevokeApiKeyRequest(api_key_id=reader.api_key.id)
    assert await code_of(stub.RevokeApiKey(ours_request, metadata=as_key(reader.secret))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await unauthenticated_reason(stub.RevokeApiKey(ours_request)) == "MISSING_API_KEY"


# --- Authenticate ------------------------------------------------------------------------------------


async def test_authenticate_a_usable_key(stub: Stub) -> None:
    organization_id = await organization(stub)
    created = await key(stub, organization_id, pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ)
    answer = await stub.Authenticate(pb.AuthenticateRequest(api_key=created.secret), metadata=INTERNAL)
    assert (answer.organization_id, answer.api_key_id) == (organization_id, created.api_key.id)
    assert list(answer.scopes) == [pb.API_KEY_SCOPE_PROXY, pb.API_KEY_SCOPE_READ]
    assert not answer.HasField("expire_time")


async def test_authenticate_refuses_unknown_and_expired_keys(stub: Stub, auth_server: AuthServer) -> None:
    organization_id = await organization(stub)
    created = await key(stub, organization_id, pb.API_KEY_SCOPE_PROXY)
    await auth_server.deps.pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(created.api_key.id)
    )
    for secret in (created.secret, created.secret + "x", "cdl_" + "x" * 43):
        call = stub.Authenticate(pb.AuthenticateRequest(api_key=secret), metadata=INTERNAL)
        assert await unauthenticated_reason(call) == "INVALID_API_KEY"
    assert await violations_of(stub.Authenticate(pb.AuthenticateRequest(), metadata=INTERNAL)) == {
        "api_key": "is required"
    }


async def test_authenticate_is_for_services_only(stub: Stub) -> None:
    created = await key(stub, await organization(stub), pb.API_KEY_SCOPE_ADMIN)
    request = pb.AuthenticateRequest(api_key=created.secret)
    for metadata in ((), service_metadata("wrong"), as_key(created.secret)):
        assert await unauthenticated_reason(stub.Authenticate(request, metadata=metadata)) == "SERVICE_CREDENTIAL"
