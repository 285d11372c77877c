"""AuthService's per-organization pricing RPCs on the test Postgres: price overrides and model aliases set,
listed and deleted with exact decimals, bad input (INVALID_ARGUMENT naming the fields), scopes, tenancy,
and the FollowPricing (and older WatchPricing) notices a proxy drops its cache on: a change is answered only once
every proxy following has applied it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_auth.app import build_deps as build_auth_deps
from candela_auth.app import create_server as create_auth_server
from candela_auth.config import AuthConfig
from candela_proxy.org_pricing import PricingDirectory, queued
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer
from tests.integration.test_auth_servicer import INTERNAL, Stub, as_key, code_of, key, organization, violations_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(auth_stub: Stub) -> Stub:
    return auth_stub


ADMIN = pb.API_KEY_SCOPE_ADMIN
READ = pb.API_KEY_SCOPE_READ
PROXY = pb.API_KEY_SCOPE_PROXY


def override(**fields: str) -> pb.PriceOverride:
    message = pb.PriceOverride(
        provider="openai", model="gpt-4o", input_price_per_mtok="2.5", output_price_per_mtok="10"
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


async def test_overrides_are_set_replaced_listed_and_deleted_exactly(stub: Stub) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    reader = as_key((await key(stub, org, READ)).secret)
    set_ = await stub.SetPriceOverride(
        pb.SetPriceOverrideRequest(
            price_override=override(input_price_per_mtok="0.100001", cached_input_price_per_mtok="0.05")
        ),
        metadata=admin,
    )
    saved = set_.price_override
    assert (saved.input_price_per_mtok, saved.output_price_per_mtok) == ("0.100001", "10")
    assert saved.cached_input_price_per_mtok == "0.05"
    assert not saved.HasField("cache_write_price_per_mtok")
    # Setting again replaces; another model is a second override.
    await stub.SetPriceOverride(
        pb.SetPriceOverrideRequest(price_override=override(output_price_per_mtok="12.75")), metadata=admin
    )
    await stub.SetPriceOverride(
        pb.SetPriceOverrideRequest(price_override=override(provider="anthropic", model="claude-opus-4-1")),
        metadata=admin,
    )
    listed = (await stub.ListPriceOverrides(pb.ListPriceOverridesRequest(), metadata=reader)).price_overrides
    assert [(o.provider, o.model, o.input_price_per_mtok, o.output_price_per_mtok) for o in listed] == [
        ("anthropic", "claude-opus-4-1", "2.5", "10"),
        ("openai", "gpt-4o", "2.5", "12.75"),
    ]
    assert not listed[1].HasField("cached_input_price_per_mtok"), "a replaced override keeps only what was sent"
    await stub.DeletePriceOverride(pb.DeletePriceOverrideRequest(provider="openai", model="gpt-4o"), metadata=admin)
    listed = (await stub.ListPriceOverrides(pb.ListPriceOverridesRequest(), metadata=reader)).price_overrides
    assert [o.model for o in listed] == ["claude-opus-4-1"]
    missing = stub.DeletePriceOverride(pb.DeletePriceOverrideRequest(provider="openai", model="gpt-4o"), metadata=admin)
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_override_bad_input_names_each_field(stub: Stub) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    bad = override(
        provider="Open AI",
        model="",
        input_price_per_mtok="-1",
        output_price_per_mtok="1e-6",
        cached_input_price_per_mtok="0.1234567",
        cache_write_price_per_mtok="2000000",
    )
    violations = await violations_of(
        stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=bad), metadata=admin)
    )
    assert set(violations) == {
        "price_override.provider",
        "price_override.model",
        "price_override.input_price_per_mtok",
        "price_override.output_price_per_mtok",
        "price_override.cached_input_price_per_mtok",
        "price_override.cache_write_price_per_mtok",
    }
    assert "decimal string" in violations["price_override.input_price_per_mtok"]
    violations = await violations_of(
        stub.SetPriceOverride(
            pb.SetPriceOverrideRequest(price_override=override(output_price_per_mtok="")), metadata=admin
        )
    )
    assert set(violations) == {"price_override.output_price_per_mtok"}


async def test_aliases_must_point_at_a_model_genai_prices_knows(stub: Stub) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    alias = pb.ModelAlias(model="ft:gpt-4o-mini:acme::x1", target_provider="openai", target_model="gpt-4o-mini")
    saved = (await stub.SetModelAlias(pb.SetModelAliasRequest(model_alias=alias), metadata=admin)).model_alias
    assert (saved.model, saved.target_provider, saved.target_model) == (alias.model, "openai", "gpt-4o-mini")
    unknown = pb.ModelAlias(model="mine", target_provider="openai", target_model="no-such-model-anywhere")
    violations = await violations_of(stub.SetModelAlias(pb.SetModelAliasRequest(model_alias=unknown), metadata=admin))
    assert "genai-prices has no price" in violations["model_alias.target_model"]
    listed = await stub.ListModelAliases(pb.ListModelAliasesRequest(), metadata=admin)
    assert [a.model for a in listed.model_aliases] == [alias.model]
    await stub.DeleteModelAlias(pb.DeleteModelAliasRequest(model=alias.model), metadata=admin)
    assert await code_of(stub.DeleteModelAlias(pb.DeleteModelAliasRequest(model=alias.model), metadata=admin)) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_writing_needs_admin_reading_needs_read_and_each_organization_sees_its_own(stub: Stub) -> None:
    org, other = await organization(stub), await organization(stub, "Other")
    reader = as_key((await key(stub, org, READ)).secret)
    proxy_only = as_key((await key(stub, org, PROXY)).secret)
    other_admin = as_key((await key(stub, other, ADMIN)).secret)
    set_request = pb.SetPriceOverrideRequest(price_override=override())
    assert await code_of(stub.SetPriceOverride(set_request, metadata=reader)) == grpc.StatusCode.PERMISSION_DENIED
    alias_request = pb.SetModelAliasRequest(
        model_alias=pb.ModelAlias(model="x", target_provider="openai", target_model="gpt-4o")
    )
    assert await code_of(stub.SetModelAlias(alias_request, metadata=reader)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(stub.ListPriceOverrides(pb.ListPriceOverridesRequest(), metadata=proxy_only)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Naming another organization is refused; the other organization's own writes stay its own.
    foreign = pb.SetPriceOverrideRequest(organization_id=org, price_override=override())
    assert await code_of(stub.SetPriceOverride(foreign, metadata=other_admin)) == grpc.StatusCode.PERMISSION_DENIED
    await stub.SetPriceOverride(set_request, metadata=other_admin)
    assert not (await stub.ListPriceOverrides(pb.ListPriceOverridesRequest(), metadata=reader)).price_overrides
    assert await code_of(stub.ListPriceOverrides(pb.ListPriceOverridesRequest())) == grpc.StatusCode.UNAUTHENTICATED
    # The service credential names any organization.
    internal = await stub.ListPriceOverrides(pb.ListPriceOverridesRequest(organization_id=other), metadata=INTERNAL)
    assert [Decimal(o.input_price_per_mtok) for o in internal.price_overrides] == [Decimal("2.5")]


async def test_watch_pricing_names_each_changed_organization(stub: Stub) -> None:
    assert await code_of(_first_notice(stub, ())) == grpc.StatusCode.UNAUTHENTICATED
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    call = stub.WatchPricing(pb.WatchPricingRequest(), metadata=INTERNAL)
    notices = call.__aiter__()
    first = await asyncio.wait_for(notices.__anext__(), 10)
    assert first.organization_id == "", "a new stream starts with 'anything may have changed'"
    await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
    changed = await asyncio.wait_for(notices.__anext__(), 10)
    assert changed.organization_id == org
    call.cancel()


async def _first_notice(stub: Stub, metadata: tuple[tuple[str, str], ...]) -> pb.WatchPricingResponse:
    async for notice in stub.WatchPricing(pb.WatchPricingRequest(), metadata=metadata):
        return notice
    raise AssertionError("the stream ended without a notice")


async def test_the_proxy_pricing_cache_drops_an_organization_when_told_and_fails_unpriced(
    stub: Stub, auth_server: AuthServer
) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        directory = PricingDirectory(auth_service_pb2_grpc.AuthServiceStub(channel), SERVICE_TOKEN)
        directory.start()
        try:
            await asyncio.wait_for(directory.until_watching(), 5)
            # Cached for an hour while watched: only the notice can make the next get see the override.
            assert (await directory.get(org)).overrides == {}
            await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
            # Answered only once this proxy applied the notice: the very next get sees the override.
            pricing = await directory.get(org)
            assert pricing.overrides[("openai", "gpt-4o")].output_per_mtok == Decimal(10)
        finally:
            await directory.close()
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        wrong = PricingDirectory(auth_service_pb2_grpc.AuthServiceStub(channel), "not-the-service-token")
        assert not (await wrong.get(org)).available, "pricing it cannot learn leaves requests unpriced"


async def test_a_change_through_one_replica_reaches_the_watchers_of_another(stub: Stub, postgres_dsn: str) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    config = AuthConfig(service_token=SERVICE_TOKEN, postgres_dsn=postgres_dsn, grpc_port=0)
    async with build_auth_deps(config) as deps:
        other = await create_auth_server(config, deps)
        await other.set_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
                call = auth_service_pb2_grpc.AuthServiceStub(channel).WatchPricing(
                    pb.WatchPricingRequest(), metadata=INTERNAL
                )
                notices = call.__aiter__()
                assert (await asyncio.wait_for(notices.__anext__(), 10)).organization_id == ""
                # Written through the first replica; heard by the second through Postgres NOTIFY.
                await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
                assert (await asyncio.wait_for(notices.__anext__(), 10)).organization_id == org
                call.cancel()
        finally:
            await other.stop(1)


async def test_concurrent_requests_share_one_fetch_that_a_cancelled_one_does_not_stop(
    stub: Stub, auth_server: AuthServer
) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        directory = PricingDirectory(auth_service_pb2_grpc.AuthServiceStub(channel), SERVICE_TOKEN)
        first = asyncio.get_running_loop().create_task(directory.get(org))
        others = [asyncio.get_running_loop().create_task(directory.get(org)) for _ in range(5)]
        await asyncio.sleep(0)
        first.cancel()
        answers = await asyncio.wait_for(asyncio.gather(*others), 10)
        assert all(answer is answers[0] for answer in answers), "one fetch served them all"
        assert ("openai", "gpt-4o") in answers[0].overrides
        await directory.close()


async def test_a_change_is_answered_only_once_every_follower_has_applied_it(stub: Stub) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    applied: asyncio.Queue[pb.FollowPricingRequest] = asyncio.Queue()
    call = stub.FollowPricing(queued(applied), metadata=INTERNAL)
    notices = call.__aiter__()
    first = await asyncio.wait_for(notices.__anext__(), 10)
    assert first.organization_id == "", "a new stream starts with 'anything may have changed'"
    applied.put_nowait(pb.FollowPricingRequest(applied_sequence=first.sequence))

    change = asyncio.ensure_future(
        stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
    )
    notice = await asyncio.wait_for(notices.__anext__(), 10)
    assert notice.organization_id == org
    assert notice.sequence > first.sequence
    await asyncio.sleep(0.5)
    assert not change.done(), "the change was answered before the follower applied it"
    applied.put_nowait(pb.FollowPricingRequest(applied_sequence=notice.sequence))
    await asyncio.wait_for(change, 5)

    # A follower that never acknowledges delays a change by at most DELIVERY_TIMEOUT_S (2 s), no longer.
    started = asyncio.get_running_loop().time()
    await stub.DeletePriceOverride(pb.DeletePriceOverrideRequest(provider="openai", model="gpt-4o"), metadata=admin)
    assert 1.5 < asyncio.get_running_loop().time() - started < 10
    assert (await asyncio.wait_for(notices.__anext__(), 10)).organization_id == org
    call.cancel()
    # With no follower left, a change is answered at once.
    started = asyncio.get_running_loop().time()
    await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
    assert asyncio.get_running_loop().time() - started < 1.5


class _SlowAnswers:
    """AuthService's stub whose ListPriceOverrides answers are held back until ``release`` is set: what a
    fetch read before a change arrives after it."""

    def __init__(self, stub: Stub) -> None:
        self._stub = stub
        self.release = asyncio.Event()
        self.FollowPricing = stub.FollowPricing
        self.ListModelAliases = stub.ListModelAliases

    async def ListPriceOverrides(self, *args: object, **kwargs: object) -> pb.ListPriceOverridesResponse:
        answer = await self._stub.ListPriceOverrides(*args, **kwargs)  # type: ignore[arg-type]
        await self.release.wait()
        return answer


async def test_a_fetch_under_way_when_a_notice_arrives_serves_no_later_request(
    stub: Stub, auth_server: AuthServer
) -> None:
    org = await organization(stub)
    admin = as_key((await key(stub, org, ADMIN)).secret)
    async with grpc.aio.insecure_channel(auth_server.address) as channel:
        slow = _SlowAnswers(auth_service_pb2_grpc.AuthServiceStub(channel))
        directory = PricingDirectory(slow, SERVICE_TOKEN)  # type: ignore[arg-type]
        directory.start()
        try:
            await asyncio.wait_for(directory.until_watching(), 5)
            before = asyncio.get_running_loop().create_task(directory.get(org))
            await asyncio.sleep(0.3)  # its fetch has read "no overrides" and is held back
            await stub.SetPriceOverride(pb.SetPriceOverrideRequest(price_override=override()), metadata=admin)
            after = asyncio.get_running_loop().create_task(directory.get(org))
            slow.release.set()
            assert (await asyncio.wait_for(before, 5)).overrides == {}, "read before the change"
            assert ("openai", "gpt-4o") in (await asyncio.wait_for(after, 5)).overrides
            assert ("openai", "gpt-4o") in (await directory.get(org)).overrides, "the old answer was not kept"
        finally:
            await directory.close()
