"""The query API's REST routes through the real Envoy transcoder, on logs made by the real openai SDK."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import wait_for_logged_request

pytestmark = pytest.mark.e2e

PATHS = ("/plan", "/plan/search", "/answer")


@pytest.fixture(scope="module")
def session_logs(stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub) -> dict[str, Any]:
    """Three logged calls of one session and one user, unique to this run."""
    session_id = f"rest-session-{uuid.uuid4()}"
    user_id = f"rest-user-{uuid.uuid4()}"
    request_ids = []
    for index, session_path in enumerate(PATHS):
        with openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-local",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-User-Id": user_id,
                "Candela-Session-Id": session_id,
                "Candela-Session-Path": session_path,
                "Candela-Session-Name": "Trip planner",
                "Candela-Property-Feature": "search" if index else "plan",
            },
            max_retries=0,
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"step {index}"}]
            )
        request_ids.append(raw.headers["candela-id"])
    for request_id in request_ids:
        wait_for_logged_request(query_stub, admin.api_key, request_id)
    return {"session_id": session_id, "user_id": user_id, "request_ids": request_ids}


def _post(stack: Stack, admin: Bootstrap, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}{path}", json=body, headers={"Authorization": f"Bearer {admin.api_key}"}, timeout=10
    )


def _get(stack: Stack, admin: Bootstrap, path: str) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}{path}", headers={"Authorization": f"Bearer {admin.api_key}"}, timeout=10)


def test_request_query_with_a_filter_tree_sort_and_cursor(
    stack: Stack, admin: Bootstrap, session_logs: dict[str, Any]
) -> None:
    body: dict[str, Any] = {
        "filter": {
            "userId": session_logs["user_id"],
            "any": [
                {
                    "conditions": [
                        {"field": "property", "propertyKey": "feature", "operator": "equals", "value": "search"}
                    ]
                },
                {"conditions": [{"field": "session_path", "operator": "like", "value": "/plan%"}]},
            ],
            "conditions": [{"field": "latency_ms", "operator": "gte", "value": 0}],
        },
        "sort": {"field": "created_at", "ascending": True},
        "limit": 2,
    }
    first = _post(stack, admin, "/v1/request/query", body)
    assert first.status_code == 200, first.text
    assert [r["requestId"] for r in first.json()["requests"]] == session_logs["request_ids"][:2]
    second = _post(stack, admin, "/v1/request/query", {**body, "cursor": first.json()["nextCursor"]})
    assert second.status_code == 200, second.text
    assert [r["requestId"] for r in second.json()["requests"]] == session_logs["request_ids"][2:]
    assert "nextCursor" not in second.json()

    detail = _get(stack, admin, f"/v1/request/{session_logs['request_ids'][0]}")
    assert detail.status_code == 200, detail.text
    assert "step 0" in detail.json()["requestBody"]
    assert detail.json()["request"]["sessionPath"] == "/plan"


@pytest.mark.parametrize("name", ["feature", "Feature", "FEATURE"])
def test_a_property_is_found_by_its_name_in_any_case(
    stack: Stack, admin: Bootstrap, session_logs: dict[str, Any], name: str
) -> None:
    """Sent as `Candela-Property-Feature` (header names are case-insensitive), found as Feature or feature."""
    condition = {"field": "property", "propertyKey": name, "operator": "equals", "value": "search"}
    body = {"filter": {"userId": session_logs["user_id"], "conditions": [condition]}}
    found = _post(stack, admin, "/v1/request/query", body)
    assert found.status_code == 200, found.text
    assert sorted(r["requestId"] for r in found.json()["requests"]) == sorted(session_logs["request_ids"][1:])


def test_session_routes_give_the_list_and_the_tree(
    stack: Stack, admin: Bootstrap, session_logs: dict[str, Any]
) -> None:
    listed = _post(stack, admin, "/v1/session/query", {"filter": {"userId": session_logs["user_id"]}})
    assert listed.status_code == 200, listed.text
    [session] = listed.json()["sessions"]
    assert session["sessionId"] == session_logs["session_id"]
    assert session["sessionName"] == "Trip planner"
    assert session["metrics"]["requestCount"] == "3"

    tree = _get(stack, admin, f"/v1/session/{session_logs['session_id']}")
    assert tree.status_code == 200, tree.text
    root = tree.json()["root"]
    assert [child["path"] for child in root["children"]] == ["/answer", "/plan"]
    plan = root["children"][1]
    assert plan["metrics"]["requestCount"] == "2"
    assert [child["name"] for child in plan["children"]] == ["search"]


def test_user_and_request_metrics_routes(stack: Stack, admin: Bootstrap, session_logs: dict[str, Any]) -> None:
    users = _post(stack, admin, "/v1/user/metrics/query", {"filter": {"userId": session_logs["user_id"]}})
    assert users.status_code == 200, users.text
    [user] = users.json()["users"]
    assert user["userId"] == session_logs["user_id"]
    assert user["metrics"]["requestCount"] == "3"
    assert user["metrics"]["errorRate"] == 0

    now = time.time()
    metrics = _post(
        stack,
        admin,
        "/v1/request/metrics/query",
        {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
            "filter": {"userId": session_logs["user_id"]},
            "groupBy": ["GROUP_BY_PROPERTY"],
            "propertyKey": "Feature",
        },
    )
    assert metrics.status_code == 200, metrics.text
    counts = {group["keys"][0]: group["metrics"]["requestCount"] for group in metrics.json()["groups"]}
    assert counts == {"plan": "1", "search": "2"}


def test_organization_usage_route_answers_json(stack: Stack, admin: Bootstrap) -> None:
    response = _get(stack, admin, "/v1/organization/usage")
    # The stack does not give the query service a Postgres DSN yet (see the report): until it
    # does, the route answers 503 with a JSON status, never an empty or HTML body.
    if response.status_code == 200:
        assert {limit["name"] for limit in response.json()["limits"]} == {"max_stored_logs", "retention_days"}
    else:
        assert response.status_code == 503
        assert response.json()["code"] == 14


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"filter": {"conditions": [{"field": "nope", "operator": "equals", "value": "x"}]}},
            "filter.conditions[0].field",
        ),
        (
            {"filter": {"conditions": [{"field": "model", "operator": "gt", "value": "x"}]}},
            "filter.conditions[0].operator",
        ),
        (
            {"filter": {"conditions": [{"field": "latency_ms", "operator": "gt", "value": "x"}]}},
            "filter.conditions[0].value",
        ),
        ({"limit": 100000}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
    ],
)
def test_bad_rest_input_is_400_json_with_the_field(
    stack: Stack, admin: Bootstrap, body: dict[str, Any], field: str
) -> None:
    response = _post(stack, admin, "/v1/request/query", body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 3
    assert field in error["message"]
    assert "DB::Exception" not in response.text


def test_rest_without_a_key_is_401(stack: Stack) -> None:
    with contextlib.closing(httpx.Client(timeout=10)) as client:
        response = client.post(f"{stack.gateway_url}/v1/session/query", json={})
    assert response.status_code == 401
    assert response.json()["code"] == 16
