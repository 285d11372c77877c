"""Bad input gets a clear error in the shape the client expects, and nothing is logged wrongly."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_candela_key_is_401_in_openai_shape(stack: Stack) -> None:
    with (
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-x",
            default_headers={"Candela-Auth": "Bearer cdl_unknown-key"},
            max_retries=0,
        ) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_candela_key"
    assert "Candela key" in caught.value.message


def test_missing_candela_key_is_401(stack: Stack) -> None:
    response = httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "missing_candela_key"
    assert "Candela-Auth" in error["message"]


def test_missing_key_on_anthropic_path_is_anthropic_shaped(stack: Stack) -> None:
    response = httpx.post(f"{stack.gateway_url}/anthropic/v1/messages", json=CHAT, timeout=10)
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


def test_body_that_is_not_json_is_400_and_not_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    headers = {"Candela-Auth": f"Bearer {admin.api_key}", "Candela-User-Id": "bad-json-user"}
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        content=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"

    good = httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
    assert good.status_code == 200
    wait_for_logged_request(query_stub, admin.api_key, good.headers["candela-id"])
    listed = query_stub.QueryRequests(
        query_service_pb2.QueryRequestsRequest(filter=query_service_pb2.RequestFilter(user_id="bad-json-user")),
        metadata=bearer(admin.api_key),
        timeout=5,
    )
    assert [r.request_id for r in listed.requests] == [good.headers["candela-id"]]


def test_unknown_route_is_404_json(stack: Stack, admin: Bootstrap) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/v2/chat", json=CHAT, headers={"Candela-Auth": f"Bearer {admin.api_key}"}, timeout=10
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_route"


def test_grpc_missing_field_is_invalid_argument_with_details(
    admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        query_stub.GetRequest(query_service_pb2.GetRequestRequest(), metadata=bearer(admin.api_key), timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(error)
    assert status is not None
    assert [v.field for v in bad_request_violations(status)] == ["request_id"]


def test_grpc_without_a_key_is_unauthenticated(query_stub: query_service_pb2_grpc.QueryServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        query_stub.QueryRequests(query_service_pb2.QueryRequestsRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_another_organization_cannot_read_the_log(
    stack: Stack, admin: Bootstrap, gateway_channel: grpc.Channel, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json=CHAT,
        headers={"Candela-Auth": f"Bearer {admin.api_key}"},
        timeout=10,
    )
    request_id = response.headers["candela-id"]
    wait_for_logged_request(query_stub, admin.api_key, request_id)

    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    other = auth.CreateOrganization(auth_service_pb2.CreateOrganizationRequest(name="Other"), metadata=internal)
    other_key = auth.CreateApiKey(
        auth_service_pb2.CreateApiKeyRequest(
            organization_id=other.organization.id, name="reader", scopes=[auth_service_pb2.API_KEY_SCOPE_READ]
        ),
        metadata=internal,
    ).secret
    with pytest.raises(grpc.RpcError) as caught:
        query_stub.GetRequest(
            query_service_pb2.GetRequestRequest(request_id=request_id), metadata=bearer(other_key), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = query_stub.QueryRequests(query_service_pb2.QueryRequestsRequest(), metadata=bearer(other_key), timeout=5)
    assert list(listed.requests) == []
