"""Any input to any REST route through the gateway: a caller's mistake is a 4xx, never a 5xx.

Every route comes from the ``google.api.http`` annotations in the ``candela`` package's descriptors (a new
annotated RPC is fuzzed without editing this file). Hypothesis sends each arbitrary path parameters
(percent-encoded bytes that are not UTF-8 included), query parameters and JSON bodies (or bodies that are
not JSON), through the real Envoy transcoder to the real services, with the fuzzing organization's admin
key, another key or none. No answer may be a 5xx, and the gateway and the services still answer after.
The fuzzing organization is its own, so what it changes (limits, keys) touches no other test's data.
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candela_stack.stack import Stack
from tests.e2e.tenancy_support import Tenant, make_tenant
from tests.rpc_strategies import RestCall, RestRoute, Vocabulary, candela_services, rest_calls, rest_routes

pytestmark = [
    pytest.mark.e2e,
    # A falsifying example may hold a 100 kB body; Hypothesis warns that printing it is costly.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

ROUTES: list[RestRoute] = rest_routes(candela_services())
EXAMPLES_PER_ROUTE = 100
# Most calls present the organization's admin key, so most reach the code behind authentication.
CREDENTIALS = ("admin key",) * 4 + ("read key", "none", "unknown key")


@pytest.fixture(scope="module")
def tenant(stack: Stack, gateway_channel: grpc.Channel) -> Tenant:
    """An organization of the fuzzer's own, with keys, prompts and a logged request."""
    return make_tenant(stack, gateway_channel, "RestFuzz")


def _vocabulary(tenant: Tenant) -> Vocabulary:
    return {
        "organization_id": [tenant.organization_id],
        "api_key_id": [tenant.spare_key_id],
        "prompt_id": [tenant.prompt_id],
        "environment": ["production"],
        "request_id": [tenant.request_id],
        "session_id": [tenant.session_id],
        "user_id": [tenant.user_id],
        "key": ["name"],
        "name": ["Acme"],
        "version": [1, 2],
        "base_version": [1, 2],
        "target_version": [1, 2],
        "page_size": [1, 2],
        "limit": [1, 10],
        "days": [1, 30],
        "seconds": [1_767_225_600, 0, 2**32 - 1, 253_402_300_799],
    }


def _headers(tenant: Tenant, credential: str) -> dict[str, str]:
    secret = {
        "admin key": tenant.keys["admin"],
        "read key": tenant.keys["read"],
        "unknown key": "cdl_" + "x" * 40,
    }.get(credential)
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


def _still_answers(stack: Stack, tenant: Tenant) -> None:
    for address in (stack.auth_addr, stack.query_addr, stack.prompts_addr):
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, address
    organization = httpx.get(f"{stack.gateway_url}/v1/organization", headers=_headers(tenant, "admin key"), timeout=10)
    assert organization.status_code == 200, organization.text
    assert organization.json()["organization"]["id"] == tenant.organization_id


@pytest.mark.parametrize("route", ROUTES, ids=[f"{route.verb} {route.template}" for route in ROUTES])
def test_no_rest_call_is_answered_with_a_server_error(stack: Stack, tenant: Tenant, route: RestRoute) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:

        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(call=rest_calls(route, _vocabulary(tenant)), credential=st.sampled_from(CREDENTIALS))
        def answers_below_500(call: RestCall, credential: str) -> None:
            url = f"{call.path}?{call.query}" if call.query else call.path
            response = client.request(route.verb, url, content=call.body, headers=_headers(tenant, credential))
            body = call.body if call.body is None or len(call.body) <= 300 else call.body[:300] + b"..."
            said = f"{route.verb} {url} with {credential}, body {body!r}"
            assert response.status_code < 500, f"{response.status_code} {response.text[:500]!r} for {said}"

        answers_below_500()
    _still_answers(stack, tenant)


def test_a_path_parameter_that_is_not_utf8_is_a_400_naming_it(stack: Stack, tenant: Tenant) -> None:
    """Envoy's transcoder passes the decoded bytes ff fe on as the string request_id, which the service
    cannot parse: once a 500 naming DecodeError, now a 400 with the field violation."""
    response = httpx.get(f"{stack.gateway_url}/v1/request/%ff%fe", headers=_headers(tenant, "admin key"), timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "DecodeError" not in error["message"]
    [details] = error["details"]
    assert [(v["field"], v["description"]) for v in details["fieldViolations"]] == [
        ("request_id", "is not valid UTF-8 (a string field holds UTF-8 text)")
    ]
