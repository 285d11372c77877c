"""PromptsService on a real Postgres behind real key authentication: versions, scopes, tenant isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2 as pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_prompts.app import build_deps, create_server
from candela_prompts.config import PromptsConfig
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, bearer, create_key, create_organization

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def prompts_stub(
    postgres_dsn: str, auth_server: AuthServer
) -> AsyncIterator[prompts_service_pb2_grpc.PromptsServiceAsyncStub]:
    config = PromptsConfig(
        service_token=SERVICE_TOKEN, postgres_dsn=postgres_dsn, auth_addr=auth_server.address, grpc_port=0
    )
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await server.set_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield prompts_service_pb2_grpc.PromptsServiceStub(channel)
        await server.stop(1)


async def _writer_key(auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub) -> str:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_WRITE)
    return created.secret


async def test_versions_increase_and_each_can_be_read(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    first = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="support-reply", template="Hello {{name}}"), metadata=bearer(key)
    )
    second = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="support-reply", template="Hi {{name}}!"), metadata=bearer(key)
    )
    assert (first.prompt.version, second.prompt.version) == (1, 2)

    latest = await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="support-reply"), metadata=bearer(key))
    assert (latest.prompt.version, latest.prompt.template) == (2, "Hi {{name}}!")
    old = await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="support-reply", version=1), metadata=bearer(key))
    assert old.prompt.template == "Hello {{name}}"


async def test_another_organization_cannot_see_the_prompt(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours, theirs = await _writer_key(auth_stub), await _writer_key(auth_stub)
    await prompts_stub.CreatePrompt(pb.CreatePromptRequest(prompt_id="secret", template="t"), metadata=bearer(ours))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="secret"), metadata=bearer(theirs))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Their own prompt of the same name starts at version 1.
    created = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="secret", template="theirs"), metadata=bearer(theirs)
    )
    assert created.prompt.version == 1


async def test_scopes_and_credentials_are_enforced(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    organization_id = await create_organization(auth_stub)
    reader = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ)
    request = pb.CreatePromptRequest(prompt_id="p", template="t")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request, metadata=bearer(reader.secret))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request, metadata=bearer("cdl_not-a-real-key"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_prompt_requests_are_invalid_argument(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    for request in (
        pb.CreatePromptRequest(prompt_id="", template="t"),
        pb.CreatePromptRequest(prompt_id="has spaces", template="t"),
        pb.CreatePromptRequest(prompt_id="ok", template=""),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prompts_stub.CreatePrompt(request, metadata=bearer(key))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="missing"), metadata=bearer(key))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
