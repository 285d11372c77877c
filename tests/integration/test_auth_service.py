"""AuthService on a real Postgres: organizations, keys stored only as hashes, authentication, authorization."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
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
