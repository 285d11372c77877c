"""Tenant isolation through the real gateway: for every RPC of AuthService, PromptsService and
QueryService, and for each one's REST route, a key of organization A can neither read nor change
anything of organization B; keys lacking the scope, revoked or expired are refused; internal RPCs need
the service credential; and keys never reach logs, Kafka or ClickHouse.

The matrix is checked against the service descriptors: an RPC without an entry fails
``test_every_rpc_has_an_isolation_entry`` and its own parametrized cases, so a new RPC cannot ship
without saying how it keeps organizations apart.

Tests run in file order and share three tenants: the positive controls, the attacks, the scope checks,
then ``test_the_other_organization_is_unchanged`` checks B after all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from google.api.httpbody_pb2 import HttpBody
from google.protobuf import descriptor, json_format, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.ingest.v1 import ingest_service_pb2 as ingest_pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as query_pb
from candela_runtime.security import service_metadata
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, topic_payloads
from tests.e2e.tenancy_support import Tenant, http_rule, make_tenant, rest_call

pytestmark = pytest.mark.e2e

SERVICES = (
    auth_pb.DESCRIPTOR.services_by_name["AuthService"],
    prompts_pb.DESCRIPTOR.services_by_name["PromptsService"],
    query_pb.DESCRIPTOR.services_by_name["QueryService"],
)
METHODS = {method.full_name: method for service in SERVICES for method in service.methods}
DENIED = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED})
DENIED_HTTP = frozenset({403, 404})
INTERNAL = "internal"
KEY_CACHE_TTL_S = 5.0
"""KeyAuthenticator's default: how long query, prompts and the proxy may still accept a revoked key."""

Build = Callable[["Tenant", "Tenant"], list[Message]]
Check = Callable[[Message, "Tenant"], None]


@dataclass(frozen=True)
class Entry:
    """How one RPC keeps organizations apart.

    ``own(a)`` is a request of A on A's own things, made with ``a.keys[key]`` (or the service credential
    for internal RPCs): it must succeed, so the refusals below are not refusals of everything.
    ``cross(a, b)`` are requests of A aimed at B's things: each must be NOT_FOUND or PERMISSION_DENIED
    (UNAUTHENTICATED for internal RPCs), unless ``cross_may_succeed`` (RPCs that only ever see the
    caller's own organization): then the answer must hold nothing of B's and pass ``cross_check``.
    ``lacking`` names a key of A without the needed scope: PERMISSION_DENIED.
    """

    key: str
    own: Callable[[Tenant], Message]
    cross: Build
    lacking: str | None = None
    cross_may_succeed: bool = False
    own_check: Check | None = None
    cross_check: Check | None = None
    attacker: str = "a"
    """Which tenant attacks ("c" when the attack would leave A with data named like B's)."""


DAY_S = 86_400


def _ago(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time() - seconds))


def _one(build: Callable[[Tenant, Tenant], Message]) -> Build:
    return lambda a, b: [build(a, b)]


def _mentions(identifier: str) -> Check:
    def check(response: Message, _: Tenant) -> None:
        assert identifier in str(response), f"{identifier} is missing: the positive control proves nothing"

    return check


def _own_query_check(response: Message, tenant: Tenant) -> None:
    assert tenant.request_id in str(response), "A's own request is missing: the positive control proves nothing"


def _stolen_prompt_is_attackers_own(response: Message, _: Tenant) -> None:
    assert isinstance(response, prompts_pb.CreatePromptResponse)
    assert response.prompt.template == "stolen {{x}}"


def _spare_model() -> Callable[[Tenant], str]:
    """Each call names the next of the tenant's first two spare priced models, so the gRPC and the REST call
    each delete one (the last stays for the listings to show)."""
    calls: dict[str, int] = {}

    def pick(tenant: Tenant) -> str:
        index = calls.get(tenant.organization_id, 0)
        calls[tenant.organization_id] = index + 1
        return tenant.spare_models[index % 2]

    return pick


_SPARE_OVERRIDE = _spare_model()
_SPARE_ALIAS = _spare_model()
_OVERRIDE = auth_pb.PriceOverride(
    provider="openai", model="own-model", input_price_per_mtok="3", output_price_per_mtok="4"
)
_ALIAS = auth_pb.ModelAlias(model="own-model", target_provider="openai", target_model="gpt-4o")


MATRIX: dict[str, Entry] = {
    # --- AuthService -----------------------------------------------------------------------------
    "candela.auth.v1.AuthService.CreateOrganization": Entry(
        key=INTERNAL,
        own=lambda a: auth_pb.CreateOrganizationRequest(name="isolation"),
        cross=_one(lambda a, b: auth_pb.CreateOrganizationRequest(name="isolation")),
    ),
    "candela.auth.v1.AuthService.Authenticate": Entry(
        key=INTERNAL,
        own=lambda a: auth_pb.AuthenticateRequest(api_key=a.keys["read"]),
        cross=_one(lambda a, b: auth_pb.AuthenticateRequest(api_key=b.keys["read"])),
    ),
    "candela.auth.v1.AuthService.CreateApiKey": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.CreateApiKeyRequest(name="own", scopes=[auth_pb.API_KEY_SCOPE_READ]),
        cross=_one(
            lambda a, b: auth_pb.CreateApiKeyRequest(
                organization_id=b.organization_id, name="stolen", scopes=[auth_pb.API_KEY_SCOPE_ADMIN]
            )
        ),
    ),
    "candela.auth.v1.AuthService.GetOrganization": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: auth_pb.GetOrganizationRequest(),
        own_check=lambda response, a: _mentions(a.organization_id)(response, a),
        cross=_one(lambda a, b: auth_pb.GetOrganizationRequest(organization_id=b.organization_id)),
    ),
    "candela.auth.v1.AuthService.UpdateOrganization": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.UpdateOrganizationRequest(organization=auth_pb.Organization(retention_days=30)),
        cross=lambda a, b: [
            auth_pb.UpdateOrganizationRequest(
                organization_id=b.organization_id, organization=auth_pb.Organization(retention_days=1)
            ),
            auth_pb.UpdateOrganizationRequest(
                organization=auth_pb.Organization(id=b.organization_id, retention_days=1)
            ),
        ],
    ),
    "candela.auth.v1.AuthService.ListApiKeys": Entry(
        key="admin",
        lacking="read",
        own=lambda a: auth_pb.ListApiKeysRequest(include_revoked=True),
        cross=lambda a, b: [
            auth_pb.ListApiKeysRequest(organization_id=b.organization_id),
            auth_pb.ListApiKeysRequest(organization_id=b.organization_id, include_revoked=True),
        ],
        own_check=lambda response, a: _mentions(a.key_ids["admin"])(response, a),
    ),
    "candela.auth.v1.AuthService.RevokeApiKey": Entry(
        key="admin",
        lacking="read",
        own=lambda a: auth_pb.RevokeApiKeyRequest(api_key_id=a.spare_key_id),
        cross=lambda a, b: [
            auth_pb.RevokeApiKeyRequest(api_key_id=b.spare_key_id),
            auth_pb.RevokeApiKeyRequest(api_key_id=b.key_ids["admin"]),
        ],
    ),
    "candela.auth.v1.AuthService.SetPriceOverride": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.SetPriceOverrideRequest(price_override=_OVERRIDE),
        cross=_one(
            lambda a, b: auth_pb.SetPriceOverrideRequest(organization_id=b.organization_id, price_override=_OVERRIDE)
        ),
    ),
    "candela.auth.v1.AuthService.ListPriceOverrides": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: auth_pb.ListPriceOverridesRequest(),
        own_check=lambda response, a: _mentions(a.spare_models[-1])(response, a),
        cross=_one(lambda a, b: auth_pb.ListPriceOverridesRequest(organization_id=b.organization_id)),
    ),
    "candela.auth.v1.AuthService.DeletePriceOverride": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.DeletePriceOverrideRequest(provider="openai", model=_SPARE_OVERRIDE(a)),
        cross=lambda a, b: [
            auth_pb.DeletePriceOverrideRequest(organization_id=b.organization_id, provider="openai", model=model)
            for model in b.spare_models
        ],
    ),
    "candela.auth.v1.AuthService.SetModelAlias": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.SetModelAliasRequest(model_alias=_ALIAS),
        cross=_one(lambda a, b: auth_pb.SetModelAliasRequest(organization_id=b.organization_id, model_alias=_ALIAS)),
    ),
    "candela.auth.v1.AuthService.ListModelAliases": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: auth_pb.ListModelAliasesRequest(),
        own_check=lambda response, a: _mentions(a.spare_models[-1])(response, a),
        cross=_one(lambda a, b: auth_pb.ListModelAliasesRequest(organization_id=b.organization_id)),
    ),
    "candela.auth.v1.AuthService.DeleteModelAlias": Entry(
        key="admin",
        lacking="write",
        own=lambda a: auth_pb.DeleteModelAliasRequest(model=_SPARE_ALIAS(a)),
        cross=lambda a, b: [
            auth_pb.DeleteModelAliasRequest(organization_id=b.organization_id, model=model) for model in b.spare_models
        ],
    ),
    "candela.auth.v1.AuthService.WatchPricing": Entry(
        key=INTERNAL,
        own=lambda a: auth_pb.WatchPricingRequest(),
        cross=_one(lambda a, b: auth_pb.WatchPricingRequest()),
    ),
    "candela.auth.v1.AuthService.FollowPricing": Entry(
        key=INTERNAL,
        own=lambda a: auth_pb.FollowPricingRequest(),
        cross=_one(lambda a, b: auth_pb.FollowPricingRequest()),
    ),
    # --- PromptsService --------------------------------------------------------------------------
    "candela.prompts.v1.PromptsService.CreatePrompt": Entry(
        key="write",
        lacking="read",
        own=lambda a: prompts_pb.CreatePromptRequest(prompt_id=f"{a.prompt_id}-own", template="own"),
        # Same name as B's prompt: the attacker gets a prompt of its own, B's is untouched (checked at the end).
        cross=_one(
            lambda a, b: prompts_pb.CreatePromptRequest(
                prompt_id=b.prompt_id, template="stolen {{x}}", environment="production"
            )
        ),
        cross_may_succeed=True,
        cross_check=_stolen_prompt_is_attackers_own,
        attacker="c",
    ),
    "candela.prompts.v1.PromptsService.GetPrompt": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: prompts_pb.GetPromptRequest(prompt_id=a.prompt_id, environment="production"),
        own_check=lambda response, a: _mentions(a.marker)(response, a),
        cross=lambda a, b: [
            prompts_pb.GetPromptRequest(prompt_id=b.prompt_id),
            prompts_pb.GetPromptRequest(prompt_id=b.prompt_id, version=1),
            prompts_pb.GetPromptRequest(prompt_id=b.prompt_id, environment="production"),
        ],
    ),
    "candela.prompts.v1.PromptsService.ListPrompts": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: prompts_pb.ListPromptsRequest(),
        own_check=lambda response, a: _mentions(a.prompt_id)(response, a),
        cross=_one(lambda a, b: prompts_pb.ListPromptsRequest(page_size=1000)),
        cross_may_succeed=True,
    ),
    "candela.prompts.v1.PromptsService.ListPromptVersions": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: prompts_pb.ListPromptVersionsRequest(prompt_id=a.prompt_id),
        own_check=lambda response, a: _mentions(a.marker)(response, a),
        cross=_one(lambda a, b: prompts_pb.ListPromptVersionsRequest(prompt_id=b.prompt_id)),
    ),
    "candela.prompts.v1.PromptsService.SetEnvironment": Entry(
        key="write",
        lacking="read",
        own=lambda a: prompts_pb.SetEnvironmentRequest(prompt_id=a.prompt_id, environment="staging", version=2),
        cross=_one(
            lambda a, b: prompts_pb.SetEnvironmentRequest(prompt_id=b.prompt_id, environment="production", version=2)
        ),
    ),
    "candela.prompts.v1.PromptsService.ComparePromptVersions": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: prompts_pb.ComparePromptVersionsRequest(prompt_id=a.prompt_id, base_version=1, target_version=2),
        cross=_one(
            lambda a, b: prompts_pb.ComparePromptVersionsRequest(
                prompt_id=b.prompt_id, base_version=1, target_version=2
            )
        ),
    ),
    "candela.prompts.v1.PromptsService.RenderPrompt": Entry(
        key="proxy",
        lacking="write",
        own=lambda a: prompts_pb.RenderPromptRequest(
            prompt_id=a.prompt_id, environment="production", inputs={"name": "x"}
        ),
        own_check=lambda response, a: _mentions(f"Hello x {a.marker}")(response, a),
        cross=lambda a, b: [
            prompts_pb.RenderPromptRequest(prompt_id=b.prompt_id, inputs={"name": "x"}),
            prompts_pb.RenderPromptRequest(
                prompt_id=b.prompt_id, inputs={"name": "x"}, organization_id=b.organization_id
            ),
        ],
    ),
    # --- QueryService ----------------------------------------------------------------------------
    "candela.query.v1.QueryService.QueryRequests": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.QueryRequestsRequest(filter=query_pb.RequestFilter(user_id=a.user_id)),
        own_check=_own_query_check,
        cross=lambda a, b: [
            query_pb.QueryRequestsRequest(filter=query_pb.RequestFilter(user_id=b.user_id)),
            query_pb.QueryRequestsRequest(limit=100),
        ],
        cross_may_succeed=True,
    ),
    "candela.query.v1.QueryService.GetRequest": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.GetRequestRequest(request_id=a.request_id),
        own_check=lambda response, a: _mentions(a.marker)(response, a),
        cross=_one(lambda a, b: query_pb.GetRequestRequest(request_id=b.request_id)),
    ),
    # A WRITE key alone may score (it needs no READ); A's key on B's request id is NOT_FOUND.
    "candela.query.v1.QueryService.SubmitFeedback": Entry(
        key="write",
        lacking="read",
        own=lambda a: query_pb.SubmitFeedbackRequest(request_id=a.request_id, rating=True),
        cross=_one(lambda a, b: query_pb.SubmitFeedbackRequest(request_id=b.request_id, rating=False)),
    ),
    "candela.query.v1.QueryService.SubmitScores": Entry(
        key="write",
        lacking="read",
        own=lambda a: query_pb.SubmitScoresRequest(
            request_id=a.request_id, scores={"isolation": struct_pb2.Value(number_value=1)}
        ),
        cross=_one(
            lambda a, b: query_pb.SubmitScoresRequest(
                request_id=b.request_id, scores={"isolation": struct_pb2.Value(number_value=0)}
            )
        ),
    ),
    "candela.query.v1.QueryService.AggregateRequests": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.AggregateRequestsRequest(
            start=_ago(DAY_S), end=_ago(-DAY_S), group_by=[query_pb.GROUP_BY_USER]
        ),
        own_check=lambda response, a: _mentions(a.user_id)(response, a),
        cross=lambda a, b: [
            query_pb.AggregateRequestsRequest(start=_ago(DAY_S), end=_ago(-DAY_S), group_by=[query_pb.GROUP_BY_USER]),
            query_pb.AggregateRequestsRequest(
                start=_ago(DAY_S), end=_ago(-DAY_S), filter=query_pb.RequestFilter(user_id=b.user_id)
            ),
        ],
        cross_may_succeed=True,
    ),
    "candela.query.v1.QueryService.QuerySessions": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.QuerySessionsRequest(start=_ago(DAY_S), end=_ago(-DAY_S)),
        own_check=lambda response, a: _mentions(a.session_id)(response, a),
        cross=lambda a, b: [
            query_pb.QuerySessionsRequest(limit=100),
            query_pb.QuerySessionsRequest(filter=query_pb.RequestFilter(session_id=b.session_id)),
        ],
        cross_may_succeed=True,
    ),
    "candela.query.v1.QueryService.GetSession": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.GetSessionRequest(session_id=a.session_id),
        own_check=lambda response, a: _mentions(a.request_id)(response, a),
        cross=_one(lambda a, b: query_pb.GetSessionRequest(session_id=b.session_id)),
    ),
    "candela.query.v1.QueryService.QueryUserMetrics": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.QueryUserMetricsRequest(start=_ago(DAY_S), end=_ago(-DAY_S)),
        own_check=lambda response, a: _mentions(a.user_id)(response, a),
        cross=lambda a, b: [
            query_pb.QueryUserMetricsRequest(limit=100),
            query_pb.QueryUserMetricsRequest(filter=query_pb.RequestFilter(user_id=b.user_id)),
        ],
        cross_may_succeed=True,
    ),
    "candela.query.v1.QueryService.GetOrganizationUsage": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.GetOrganizationUsageRequest(),
        # There is no way to name another organization: the answer must simply hold nothing of B's.
        cross=_one(lambda a, b: query_pb.GetOrganizationUsageRequest(days=365)),
        cross_may_succeed=True,
    ),
    "candela.query.v1.QueryService.ExportRequests": Entry(
        key="read",
        lacking="proxy",
        own=lambda a: query_pb.ExportRequestsRequest(
            format=query_pb.EXPORT_FORMAT_CSV, filter=query_pb.RequestFilter(user_id=a.user_id)
        ),
        own_check=_own_query_check,
        cross=lambda a, b: [
            query_pb.ExportRequestsRequest(
                format=query_pb.EXPORT_FORMAT_JSONL, filter=query_pb.RequestFilter(user_id=b.user_id)
            ),
            query_pb.ExportRequestsRequest(format=query_pb.EXPORT_FORMAT_CSV),
        ],
        cross_may_succeed=True,
    ),
}


@dataclass
class Tenants:
    """A (the attacker), B (the victim) and C (a second attacker for name-reusing writes)."""

    a: Tenant
    b: Tenant
    c: Tenant
    extra_secrets: list[str] = field(default_factory=list)

    def attacker(self, entry: Entry) -> Tenant:
        return self.c if entry.attacker == "c" else self.a

    def all_secrets(self) -> list[str]:
        return [*self.a.secrets_seen, *self.b.secrets_seen, *self.c.secrets_seen, *self.extra_secrets]


@pytest.fixture(scope="module")
def tenants(stack: Stack, gateway_channel: grpc.Channel) -> Tenants:
    return Tenants(
        a=make_tenant(stack, gateway_channel, "A"),
        b=make_tenant(stack, gateway_channel, "B"),
        c=make_tenant(stack, gateway_channel, "C"),
    )


@pytest.fixture(scope="module")
def rest(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        yield client


def _metadata(stack: Stack, tenant: Tenant, key: str) -> tuple[tuple[str, str], ...]:
    return service_metadata(stack.service_token) if key == INTERNAL else bearer(tenant.keys[key])


def _headers(stack: Stack, tenant: Tenant, key: str) -> dict[str, str]:
    name, value = _metadata(stack, tenant, key)[0]
    return {name: value, "content-type": "application/json"}


def _output_class(method: descriptor.MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.output_type)


def _grpc_call(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Message, metadata: tuple[tuple[str, str], ...]
) -> Message:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming and method.output_type.full_name != HttpBody.DESCRIPTOR.full_name:
        # A stream of notices that never ends (WatchPricing, FollowPricing): its first message is the answer.
        serializers = {
            "request_serializer": lambda message: message.SerializeToString(),
            "response_deserializer": _output_class(method).FromString,
        }
        notices = (
            channel.stream_stream(path, **serializers)(iter([request]), metadata=metadata, timeout=10)
            if method.client_streaming
            else channel.unary_stream(path, **serializers)(request, metadata=metadata, timeout=10)
        )
        first: Message = next(iter(notices))
        notices.cancel()  # type: ignore[no-untyped-call]  # grpc's stubs leave it untyped
        return first
    if method.server_streaming:
        # A streamed file (ExportRequests): its chunks joined, as the client saves them.
        stream = channel.unary_stream(
            path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=HttpBody.FromString,
        )
        chunks: list[HttpBody] = list(stream(request, metadata=metadata, timeout=10))
        joined: Message = HttpBody(content_type=chunks[0].content_type, data=b"".join(chunk.data for chunk in chunks))
        return joined
    call = channel.unary_unary(
        path,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=_output_class(method).FromString,
    )
    response: Message = call(request, metadata=metadata, timeout=10)
    return response


def _assert_nothing_of(victim: Tenant, text: str, request: Message | None = None) -> None:
    """No identifier of the victim's in ``text``, except those the request itself sent (echoed in errors)."""
    sent = str(request) if request is not None else ""
    leaked = [identifier for identifier in victim.identifiers() if identifier in text and identifier not in sent]
    assert not leaked, f"the answer holds the other organization's {leaked}"


def _params() -> list[object]:
    found: list[object] = []
    for name, method in sorted(METHODS.items()):
        for transport in ("grpc", "rest"):
            if transport == "rest" and http_rule(method) is None:
                continue
            found.append(pytest.param(name, transport, id=f"{method.name}-{transport}"))
    return found


def _entry(name: str) -> Entry:
    entry = MATRIX.get(name)
    if entry is None:
        pytest.fail(f"{name} has no isolation matrix entry: add one to MATRIX in {__name__}")
    return entry


def _invoke(
    stack: Stack,
    channel: grpc.Channel,
    rest: httpx.Client,
    transport: str,
    method: descriptor.MethodDescriptor,
    request: Message,
    tenant: Tenant,
    key: str,
) -> tuple[Message | None, grpc.StatusCode | int, str]:
    """(response or None, status, text of whatever came back) over gRPC or REST."""
    if transport == "grpc":
        try:
            response = _grpc_call(channel, method, request, _metadata(stack, tenant, key))
        except grpc.RpcError as err:
            return None, err.code(), f"{err.details()}"
        return response, grpc.StatusCode.OK, str(response)
    answer = rest_call(rest, method, request, _headers(stack, tenant, key))
    if answer.status_code != 200:
        return None, answer.status_code, answer.text
    if method.output_type.full_name == HttpBody.DESCRIPTOR.full_name:
        return HttpBody(content_type=answer.headers["content-type"], data=answer.content), 200, answer.text
    parsed = json_format.Parse(answer.text, _output_class(method)(), ignore_unknown_fields=False)
    return parsed, 200, answer.text


def test_every_rpc_has_an_isolation_entry() -> None:
    missing = sorted(set(METHODS) - set(MATRIX))
    stale = sorted(set(MATRIX) - set(METHODS))
    assert not missing, f"RPCs without an isolation matrix entry: {missing}"
    assert not stale, f"matrix entries for RPCs that no longer exist: {stale}"


@pytest.mark.parametrize(("name", "transport"), _params())
def test_own_organization_call_succeeds(
    stack: Stack, gateway_channel: grpc.Channel, rest: httpx.Client, tenants: Tenants, name: str, transport: str
) -> None:
    """The positive control: the same RPC on A's own things works, so the refusals below mean something."""
    entry = _entry(name)
    a = tenants.attacker(entry)
    response, status, text = _invoke(stack, gateway_channel, rest, transport, METHODS[name], entry.own(a), a, entry.key)
    assert status in (grpc.StatusCode.OK, 200), text
    assert response is not None
    _assert_nothing_of(tenants.b, text)
    if entry.own_check is not None:
        entry.own_check(response, a)
    if isinstance(response, auth_pb.CreateApiKeyResponse):
        tenants.extra_secrets.append(response.secret)


@pytest.mark.parametrize(("name", "transport"), _params())
def test_another_organization_is_neither_read_nor_changed(
    stack: Stack, gateway_channel: grpc.Channel, rest: httpx.Client, tenants: Tenants, name: str, transport: str
) -> None:
    entry = _entry(name)
    a, b = tenants.attacker(entry), tenants.b
    # Internal RPCs are attacked with A's admin key in place of the service credential.
    key = "admin" if entry.key == INTERNAL else entry.key
    for request in entry.cross(a, b):
        response, status, text = _invoke(stack, gateway_channel, rest, transport, METHODS[name], request, a, key)
        _assert_nothing_of(b, text, request)
        if entry.key == INTERNAL:
            # Internal RPCs called with A's key (instead of the service credential): refused outright.
            assert status in (grpc.StatusCode.UNAUTHENTICATED, 401), (request, status, text)
        elif entry.cross_may_succeed and response is not None:
            if entry.cross_check is not None:
                entry.cross_check(response, a)
        else:
            assert status in DENIED | DENIED_HTTP, (request, status, text)


@pytest.mark.parametrize(("name", "transport"), _params())
def test_key_without_the_scope_is_refused(
    stack: Stack, gateway_channel: grpc.Channel, rest: httpx.Client, tenants: Tenants, name: str, transport: str
) -> None:
    entry = _entry(name)
    if entry.lacking is None:
        assert entry.key == INTERNAL, f"{name}: say which key lacks the scope it needs"
        return
    a = tenants.attacker(entry)
    _, status, text = _invoke(stack, gateway_channel, rest, transport, METHODS[name], entry.own(a), a, entry.lacking)
    assert status in (grpc.StatusCode.PERMISSION_DENIED, 403), text


def test_internal_rpcs_refuse_calls_without_the_service_credential(
    stack: Stack, gateway_channel: grpc.Channel, tenants: Tenants
) -> None:
    admin_key = bearer(tenants.a.keys["admin"])
    wrong = service_metadata("not-the-service-token")
    for target in (stack.gateway_addr, stack.auth_addr):
        with grpc.insecure_channel(target) as channel:
            auth = auth_service_pb2_grpc.AuthServiceStub(channel)
            calls: list[tuple[Callable[..., object], Message]] = [
                (auth.Authenticate, auth_pb.AuthenticateRequest(api_key=tenants.a.keys["read"])),
                (auth.CreateOrganization, auth_pb.CreateOrganizationRequest(name="x")),
            ]
            for metadata in ((), admin_key, wrong):
                for rpc, request in calls:
                    with pytest.raises(grpc.RpcError) as caught:
                        rpc(request, metadata=metadata, timeout=5)
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for target in (stack.gateway_addr, stack.ingest_addr):
        with grpc.insecure_channel(target) as channel:
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            for metadata in ((), admin_key, wrong):
                with pytest.raises(grpc.RpcError) as caught:
                    ingest.Ingest(ingest_pb.IngestRequest(), metadata=metadata, timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_revoked_and_expired_keys_are_refused_within_the_cache_ttl(
    stack: Stack, gateway_channel: grpc.Channel, rest: httpx.Client, tenants: Tenants
) -> None:
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    admin = bearer(tenants.a.keys["admin"])
    # Long enough for both keys to be created and used six times on a loaded machine before it expires.
    expires_at = time.time() + 5.0
    revoked = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(name="to revoke", scopes=[auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_PROXY]),
        metadata=admin,
        timeout=5,
    )
    expiring = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            name="to expire",
            scopes=[auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_PROXY],
            expire_time=timestamp_pb2.Timestamp(seconds=int(expires_at), nanos=int(expires_at % 1 * 1e9)),
        ),
        metadata=admin,
        timeout=5,
    )
    tenants.extra_secrets += [revoked.secret, expiring.secret]

    def accepted_by(secret: str) -> dict[str, bool]:
        """Whether query (REST), prompts (gRPC) and the proxy accept the key (each caches for 5 s)."""
        listed = rest.post(
            "/v1/request/query", json={"limit": 1}, headers={"authorization": f"Bearer {secret}"}
        ).status_code
        prompts = prompts_service_pb2_grpc.PromptsServiceStub(gateway_channel)
        prompts_status = grpc.StatusCode.OK
        try:
            prompts.ListPrompts(prompts_pb.ListPromptsRequest(), metadata=bearer(secret), timeout=5)
        except grpc.RpcError as err:
            prompts_status = err.code()
        assert prompts_status in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED), prompts_status
        prompts_ok = prompts_status == grpc.StatusCode.OK
        proxied = rest.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Candela-Auth": f"Bearer {secret}", "Authorization": "Bearer sk-x"},
        ).status_code
        assert listed in (200, 401), listed
        assert proxied in (200, 401), proxied
        return {"query": listed == 200, "prompts": prompts_ok, "proxy": proxied == 200}

    for secret in (revoked.secret, expiring.secret):
        assert accepted_by(secret) == {"query": True, "prompts": True, "proxy": True}  # and now cached
    auth.RevokeApiKey(auth_pb.RevokeApiKeyRequest(api_key_id=revoked.api_key.id), metadata=admin, timeout=5)
    revoked_at = time.monotonic()
    pending = {revoked.secret: revoked_at, expiring.secret: revoked_at + max(0.0, expires_at - time.time())}
    while pending:
        for secret, since in list(pending.items()):
            if not any(accepted_by(secret).values()):
                del pending[secret]
            else:
                assert time.monotonic() - since <= KEY_CACHE_TTL_S + 1.0, "a dead key still works after the TTL"
        time.sleep(0.2)


def test_the_other_organization_is_unchanged(stack: Stack, gateway_channel: grpc.Channel, tenants: Tenants) -> None:
    """After every attack above: B's keys, limits, prompt versions and labels are as B left them."""
    b = tenants.b
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    for scope_name, secret in b.keys.items():
        answer = auth.Authenticate(auth_pb.AuthenticateRequest(api_key=secret), metadata=internal, timeout=5)
        assert answer.api_key_id == b.key_ids[scope_name]
    listed = auth.ListApiKeys(auth_pb.ListApiKeysRequest(include_revoked=True), metadata=bearer(b.keys["admin"]))
    assert sorted(key.id for key in listed.api_keys) == sorted(b.key_ids.values())
    organization = auth.GetOrganization(auth_pb.GetOrganizationRequest(), metadata=bearer(b.keys["read"])).organization
    assert not organization.HasField("retention_days")
    prompts = prompts_service_pb2_grpc.PromptsServiceStub(gateway_channel)
    versions = prompts.ListPromptVersions(
        prompts_pb.ListPromptVersionsRequest(prompt_id=b.prompt_id), metadata=bearer(b.keys["read"]), timeout=5
    )
    assert [(v.version, list(v.environments)) for v in versions.versions] == [(2, []), (1, ["production"])]
    assert b.marker in versions.versions[1].template
    overrides = auth.ListPriceOverrides(auth_pb.ListPriceOverridesRequest(), metadata=bearer(b.keys["read"]))
    assert [(o.model, o.input_price_per_mtok) for o in overrides.price_overrides] == [(m, "1") for m in b.spare_models]
    aliases = auth.ListModelAliases(auth_pb.ListModelAliasesRequest(), metadata=bearer(b.keys["read"]))
    assert [(alias.model, alias.target_model) for alias in aliases.model_aliases] == [
        (model, "gpt-4o-mini") for model in b.spare_models
    ]


def test_keys_never_reach_logs_kafka_or_clickhouse(stack: Stack, tenants: Tenants, admin: Bootstrap) -> None:
    """Every key made here (and the bootstrap key) is absent from every process log, Kafka and ClickHouse."""
    # The part after the visible prefix (which listings show) is what must never appear anywhere.
    secrets_made = [secret[12:] for secret in (*tenants.all_secrets(), admin.api_key)]
    assert len(secrets_made) > 15
    # Bodies the proxy could have forwarded carry no key, so any key found is a leak of ours.
    logs = {path.name for path in stack.log_dir.rglob("*.log")}
    assert {"auth.log", "proxy.log", "prompts.log", "query.log", "envoy-access.log"} <= logs, logs
    assert "created API key" in (stack.log_dir / "auth.log").read_text(), "auth logs nothing: checked nothing"
    for log_file in sorted(stack.log_dir.rglob("*")):
        if log_file.is_file():
            text = log_file.read_text(errors="replace")
            found = [secret[:6] for secret in secrets_made if secret in text]
            assert not found, f"{log_file.name} holds API keys {found}"
            assert stack.service_token not in text, f"{log_file.name} holds the service credential"

    rows = httpx.get(
        stack.clickhouse_http_url,
        params={"query": f"SELECT * FROM {stack.clickhouse_database}.requests FORMAT TabSeparated"},
        auth=(stack.clickhouse_user, stack.clickhouse_password),
        timeout=30,
    )
    assert rows.status_code == 200, rows.text
    assert tenants.a.request_id in rows.text, "ClickHouse holds none of the test's requests: checked nothing"
    assert not [secret[:6] for secret in secrets_made if secret in rows.text]

    messages = asyncio.run(topic_payloads(stack, {tenants.a.request_id, tenants.b.request_id}))
    for payload in messages:
        assert not [secret[:6] for secret in secrets_made if secret.encode() in payload]
