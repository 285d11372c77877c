"""KeyAuthenticator against an in-process AuthService: requests that miss the cache together make one call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_runtime.errors import Unauthenticated, Unavailable
from candela_runtime.security import KeyAuthenticator

pytestmark = pytest.mark.unit

GOOD, BAD, BROKEN = "cdl-good", "cdl-bad", "cdl-broken"


class _Auth(auth_service_pb2_grpc.AuthServiceServicer):
    """Knows one key; counts Authenticate calls, each answered after a while (a call in flight)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.AuthenticateResponse:
        self.calls.append(request.api_key)
        await asyncio.sleep(0.2)
        if request.api_key == BROKEN:
            await context.abort(grpc.StatusCode.INTERNAL, "database down")
        if request.api_key != GOOD:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown key")
        return pb.AuthenticateResponse(organization_id="org-1", api_key_id="key-1", scopes=[pb.API_KEY_SCOPE_PROXY])


@pytest.fixture
async def auth() -> AsyncIterator[tuple[_Auth, grpc.aio.Channel]]:
    servicer = _Auth()  # type: ignore[abstract]
    server = grpc.aio.server()
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close(None)
        await server.stop(None)


async def test_concurrent_misses_share_one_call_and_its_answer(auth: tuple[_Auth, grpc.aio.Channel]) -> None:
    servicer, channel = auth
    authenticator = KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(channel), "token", ttl_s=0.5)
    callers = await asyncio.gather(*(authenticator.authenticate(GOOD) for _ in range(64)))
    assert servicer.calls == [GOOD]
    assert {(caller.organization_id, caller.api_key_id) for caller in callers} == {("org-1", "key-1")}

    await asyncio.sleep(0.6)  # the entry expires: the next wave of misses shares one call again
    await asyncio.gather(*(authenticator.authenticate(GOOD) for _ in range(64)))
    assert servicer.calls == [GOOD, GOOD]

    # A refusal is shared (and cached) too; an unavailable auth service fails every waiter and is not cached.
    refused = await asyncio.gather(*(authenticator.authenticate(BAD) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(outcome, Unauthenticated) for outcome in refused)
    failed = await asyncio.gather(*(authenticator.authenticate(BROKEN) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(outcome, Unavailable) for outcome in failed)
    with pytest.raises(Unavailable):
        await authenticator.authenticate(BROKEN)
    assert servicer.calls == [GOOD, GOOD, BAD, BROKEN, BROKEN]


async def test_a_cancelled_waiter_leaves_the_call_to_the_others(auth: tuple[_Auth, grpc.aio.Channel]) -> None:
    servicer, channel = auth
    authenticator = KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(channel), "token")
    first = asyncio.create_task(authenticator.authenticate(GOOD))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(authenticator.authenticate(GOOD))
    await asyncio.sleep(0.05)
    first.cancel()
    caller = await second
    assert caller.organization_id == "org-1"
    assert first.cancelled()
    assert servicer.calls == [GOOD]
