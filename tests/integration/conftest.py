"""In-process Candela services on real stores, shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_auth.app import AuthDeps
from candela_auth.app import build_deps as build_auth_deps
from candela_auth.app import create_server as create_auth_server
from candela_auth.config import AuthConfig
from candela_runtime.grpc_server import GrpcServer
from candela_runtime.security import service_metadata
from tests.conftest import SERVICE_TOKEN


@dataclass(frozen=True)
class AuthServer:
    """A running auth service and its dependencies."""

    server: GrpcServer
    deps: AuthDeps

    @property
    def address(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(scope="session")
async def auth_server(postgres_dsn: str) -> AsyncIterator[AuthServer]:
    """The auth service on the test database."""
    config = AuthConfig(service_token=SERVICE_TOKEN, postgres_dsn=postgres_dsn, grpc_port=0)
    async with build_auth_deps(config) as deps:
        server = await create_auth_server(config, deps)
        await server.set_serving()
        yield AuthServer(server, deps)
        await server.stop(1)


@pytest.fixture(scope="session")
async def auth_stub(auth_server: AuthServer) -> AsyncIterator[auth_service_pb2_grpc.AuthServiceAsyncStub]:
    """A client of the auth service."""
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        yield auth_service_pb2_grpc.AuthServiceStub(channel)


async def create_organization(stub: auth_service_pb2_grpc.AuthServiceAsyncStub, name: str = "Acme") -> str:
    """A new organization's id (made with the service credential)."""
    response = await stub.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name=name), metadata=service_metadata(SERVICE_TOKEN)
    )
    organization_id: str = response.organization.id
    return organization_id


async def create_key(
    stub: auth_service_pb2_grpc.AuthServiceAsyncStub, organization_id: str, *scopes: auth_pb.ApiKeyScope.ValueType
) -> auth_pb.CreateApiKeyResponse:
    """A new API key of the organization (made with the service credential)."""
    request = auth_pb.CreateApiKeyRequest(organization_id=organization_id, name="test key", scopes=list(scopes))
    response: auth_pb.CreateApiKeyResponse = await stub.CreateApiKey(request, metadata=service_metadata(SERVICE_TOKEN))
    return response


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting an API key."""
    return (("authorization", f"Bearer {secret}"),)
