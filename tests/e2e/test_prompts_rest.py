"""Prompts and organization settings over REST through the real Envoy transcoder, as a dashboard or
curl user would call them, including the error bodies a REST caller gets."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest

from candela_stack.stack import Bootstrap, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def rest(stack: Stack, admin: Bootstrap) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {admin.api_key}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        yield client


def test_prompt_lifecycle_over_rest(rest: httpx.Client) -> None:
    prompt_id = f"rest-{secrets.token_hex(4)}"
    chat = [{"role": "system", "content": "Be {{tone}}."}, {"role": "user", "content": "{{question}}"}]
    created = rest.post(
        "/v1/prompts", json={"promptId": prompt_id, "template": json.dumps(chat), "format": "TEMPLATE_FORMAT_CHAT"}
    )
    assert created.status_code == 200, created.text
    assert created.json()["prompt"]["variables"] == ["tone", "question"]
    second = rest.post("/v1/prompts", json={"promptId": prompt_id, "template": "Plain {{question}}"})
    assert second.json()["prompt"]["version"] == 2

    moved = rest.put(f"/v1/prompts/{prompt_id}/environments/production", json={"version": 1})
    assert moved.status_code == 200, moved.text
    assert moved.json()["previousVersion"] == 0
    by_environment = rest.get(f"/v1/prompts/{prompt_id}", params={"environment": "production"})
    assert by_environment.json()["prompt"]["version"] == 1

    rendered = rest.post(
        f"/v1/prompts/{prompt_id}/render",
        json={"environment": "production", "inputs": {"tone": "brief", "question": "Why?"}},
    )
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]
    assert rendered.json()["version"] == 1

    versions = rest.get(f"/v1/prompts/{prompt_id}/versions").json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    compared = rest.get(f"/v1/prompts/{prompt_id}/compare", params={"baseVersion": 1, "targetVersion": 2}).json()
    assert compared["removedVariables"] == ["tone"]
    assert f"+++ {prompt_id}@v2" in compared["diff"]
    listed = rest.get("/v1/prompts", params={"pageSize": 1000}).json()["prompts"]
    assert {"promptId": prompt_id, "latestVersion": 2} == {
        k: v
        for k, v in next(p for p in listed if p["promptId"] == prompt_id).items()
        if k in ("promptId", "latestVersion")
    }


def test_prompt_errors_over_rest_name_the_problem(rest: httpx.Client) -> None:
    prompt_id = f"rest-bad-{secrets.token_hex(4)}"
    malformed = rest.post("/v1/prompts", json={"promptId": prompt_id, "template": "Hi {{name"})
    assert malformed.status_code == 400
    assert "unclosed '{{'" in malformed.json()["message"]
    rest.post("/v1/prompts", json={"promptId": prompt_id, "template": "Hi {{name}}"})
    wrong_inputs = rest.post(f"/v1/prompts/{prompt_id}/render", json={"inputs": {"nmae": "x"}})
    assert wrong_inputs.status_code == 400
    assert "inputs.name: missing" in wrong_inputs.json()["message"]
    assert "inputs.nmae: unexpected" in wrong_inputs.json()["message"]
    unknown = rest.post("/v1/prompts/no-such-prompt/render", json={"inputs": {}})
    assert unknown.status_code == 404
    assert "no-such-prompt" in unknown.json()["message"]


def test_organization_limits_and_keys_over_rest(stack: Stack, rest: httpx.Client, admin: Bootstrap) -> None:
    organization = rest.get("/v1/organization")
    assert organization.status_code == 200, organization.text
    assert organization.json()["organization"]["id"] == admin.organization_id
    limited = rest.patch("/v1/organization", json={"organization": {"maxStoredLogs": "5000", "retentionDays": 14}})
    assert limited.status_code == 200, limited.text
    assert (limited.json()["organization"]["maxStoredLogs"], limited.json()["organization"]["retentionDays"]) == (
        "5000",
        14,
    )
    cleared = rest.patch("/v1/organization", json={"updateMask": "maxStoredLogs,retentionDays"})
    assert cleared.status_code == 200, cleared.text
    assert "maxStoredLogs" not in cleared.json()["organization"]
    assert "retentionDays" not in cleared.json()["organization"]

    created = rest.post("/v1/api-keys", json={"name": "rest key", "scopes": ["API_KEY_SCOPE_READ"]})
    assert created.status_code == 200, created.text
    secret, key_id = created.json()["secret"], created.json()["apiKey"]["id"]
    listed = rest.get("/v1/api-keys")
    assert key_id in [key["id"] for key in listed.json()["apiKeys"]]
    assert secret not in listed.text
    revoked = rest.delete(f"/v1/api-keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    assert "revokeTime" in revoked.json()["apiKey"]
    # Auth reads keys without a cache: the revoked key is refused by AuthService at once.
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        refused = client.get("/v1/organization", headers={"authorization": f"Bearer {secret}"})
    assert refused.status_code == 401
