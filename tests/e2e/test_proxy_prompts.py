"""Named prompts through the gateway: the proxy renders the stored template, forwards it, logs the version.

A prompt is created with PromptsService over the gateway, then named by the real openai and anthropic
SDKs (headers, or body keys through ``extra_body``). The fake provider shows what was forwarded; the query
API shows what was logged and finds it by prompt id, version and input.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import grpc
import httpx
import openai
import pytest
from google.protobuf import struct_pb2

from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as query_pb
from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests
from tests.e2e.tenancy_support import make_tenant

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
# Version 1 (which "production" points at) and version 2 (the latest) of the test prompt.
FIRST = [
    {"role": "system", "content": "You answer questions about {{city}}."},
    {"role": "user", "content": "Say {{ topic }} in {{city}}"},
]
SECOND = [
    {"role": "system", "content": "You are a guide to {{city}}."},
    {"role": "user", "content": "Explain {{topic}} near {{city}}"},
]
INPUTS = {"city": "Brest", "topic": "tides"}


@dataclass(frozen=True)
class StoredPrompt:
    """A chat prompt of the admin's organization with two versions; production -> 1."""

    prompt_id: str


@pytest.fixture(scope="module")
def prompts_stub(gateway_channel: grpc.Channel) -> prompts_service_pb2_grpc.PromptsServiceStub:
    """PromptsService through the gateway."""
    return prompts_service_pb2_grpc.PromptsServiceStub(gateway_channel)


def _create(
    stub: prompts_service_pb2_grpc.PromptsServiceStub, key: str, prompt_id: str, messages: Any, environment: str = ""
) -> int:
    created = stub.CreatePrompt(
        prompts_pb.CreatePromptRequest(
            prompt_id=prompt_id,
            template=json.dumps(messages),
            format=prompts_pb.TEMPLATE_FORMAT_CHAT,
            environment=environment,
        ),
        metadata=bearer(key),
        timeout=10,
    )
    return created.prompt.version


@pytest.fixture(scope="module")
def prompt(admin: Bootstrap, prompts_stub: prompts_service_pb2_grpc.PromptsServiceStub) -> StoredPrompt:
    """The test prompt, created over the gateway."""
    prompt_id = f"guide-{uuid.uuid4().hex[:12]}"
    assert _create(prompts_stub, admin.api_key, prompt_id, FIRST, environment="production") == 1
    assert _create(prompts_stub, admin.api_key, prompt_id, SECOND) == 2
    return StoredPrompt(prompt_id)


def _rendered(template: list[dict[str, str]], inputs: dict[str, str]) -> list[dict[str, str]]:
    """The template filled in by hand, independently of PromptsService."""
    messages = []
    for message in template:
        content = message["content"].replace("{{ topic }}", "{{topic}}")
        for name, value in inputs.items():
            content = content.replace("{{" + name + "}}", value)
        messages.append({"role": message["role"], "content": content})
    return messages


@pytest.fixture
def marker() -> str:
    """A value carried in a test header, to find this test's requests at the fake provider."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def _openai(stack: Stack, key: str, marker: str, **headers: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-provider",
        default_headers={"Candela-Auth": f"Bearer {key}", "x-test-marker": marker, **headers},
        max_retries=0,
    ) as client:
        yield client


def _upstream_body(stack: Stack, marker: str) -> dict[str, Any]:
    (received,) = fake_requests(stack, x_test_marker=marker)
    body: dict[str, Any] = received["json"]
    return body


def _prompt_headers(prompt_id: str, inputs: dict[str, str], **selector: str) -> dict[str, str]:
    return {"Candela-Prompt-Id": prompt_id, "Candela-Prompt-Inputs": json.dumps(inputs), **selector}


def test_openai_chat_named_by_version_in_headers_is_rendered_forwarded_and_logged(
    stack: Stack,
    admin: Bootstrap,
    prompt: StoredPrompt,
    marker: str,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
) -> None:
    follow_up = {"role": "user", "content": "And in winter?"}
    with _openai(stack, admin.api_key, marker) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[follow_up],  # type: ignore[list-item]
            extra_headers=_prompt_headers(prompt.prompt_id, INPUTS, **{"Candela-Prompt-Version": "2"}),
        )
    completion = raw.parse()
    # The fake echoes the last user message: the client's own turn follows the template's.
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("Echo: And in winter?")
    upstream = _upstream_body(stack, marker)
    assert upstream["messages"] == [*_rendered(SECOND, INPUTS), follow_up]
    assert not set(upstream) & {"prompt_id", "prompt_version", "prompt_environment", "inputs"}

    logged = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"])
    record = logged.request
    assert (record.prompt_id, record.prompt_version, dict(record.prompt_inputs)) == (prompt.prompt_id, "2", INPUTS)
    assert json.loads(logged.request_body)["messages"] == upstream["messages"], "the log keeps what was sent"


def test_openai_stream_named_by_environment_in_the_body_logs_the_resolved_version(
    stack: Stack,
    admin: Bootstrap,
    prompt: StoredPrompt,
    marker: str,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
) -> None:
    inputs = {"city": "Quimper", "topic": "crepes"}
    with (
        _openai(stack, admin.api_key, marker) as client,
        client.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=[],
            stream=True,
            extra_body={"prompt_id": prompt.prompt_id, "prompt_environment": "production", "inputs": inputs},
        ) as response,
    ):
        text = b"".join(response.iter_bytes()).decode()
        request_id = response.headers["candela-id"]
    assert "Echo:" in text
    assert "crepes" in text
    upstream = _upstream_body(stack, marker)
    assert upstream["messages"] == _rendered(FIRST, inputs)
    assert upstream["stream"] is True
    assert not set(upstream) & {"prompt_id", "prompt_version", "prompt_environment", "inputs"}

    record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert (record.prompt_id, record.prompt_version, dict(record.prompt_inputs)) == (prompt.prompt_id, "1", inputs)
    assert record.streamed


def test_anthropic_messages_get_the_template_system_and_turns(
    stack: Stack,
    admin: Bootstrap,
    prompt: StoredPrompt,
    marker: str,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
) -> None:
    with anthropic.Anthropic(
        base_url=f"{stack.gateway_url}/anthropic",
        api_key="sk-ant-provider",
        default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
        max_retries=0,
    ) as client:
        raw = client.messages.with_raw_response.create(
            model=CLAUDE,
            max_tokens=100,
            system="Keep it short.",
            messages=[{"role": "user", "content": "Thanks!"}],
            extra_headers=_prompt_headers(prompt.prompt_id, INPUTS, **{"Candela-Prompt-Environment": "production"}),
        )
    assert raw.parse().content[0].type == "text"
    upstream = _upstream_body(stack, marker)
    system, turn = _rendered(FIRST, INPUTS)
    assert upstream["system"] == f"{system['content']}\n\nKeep it short."
    assert upstream["messages"] == [turn, {"role": "user", "content": "Thanks!"}]

    record = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    assert (record.path, record.prompt_id, record.prompt_version) == ("/v1/messages", prompt.prompt_id, "1")
    assert dict(record.prompt_inputs) == INPUTS


def _condition(field: str, value: str, key: str = "") -> query_pb.FilterCondition:
    return query_pb.FilterCondition(
        field=field, operator="equals", value=struct_pb2.Value(string_value=value), property_key=key
    )


def test_helicone_prompt_id_alone_only_tags_the_request_as_in_helicone(
    stack: Stack, admin: Bootstrap, marker: str, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    tag = f"legacy-{marker[:8]}"  # never stored as a prompt: a Helicone user's tag
    question = {"role": "user", "content": "Tagged, not templated"}
    with _openai(stack, admin.api_key, marker, **{"Helicone-Prompt-Id": tag}) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[question])  # type: ignore[list-item]
    assert raw.http_response.status_code == 200
    assert _upstream_body(stack, marker)["messages"] == [question], "nothing was rendered"
    record = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    assert (record.prompt_id, record.prompt_version, dict(record.prompt_inputs)) == (tag, "", {})


def test_query_filters_by_prompt_id_version_and_input(
    stack: Stack,
    admin: Bootstrap,
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceStub,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    marker: str,
) -> None:
    # A prompt of its own, so other tests' requests cannot blur the counts.
    prompt_id = f"filtered-{uuid.uuid4().hex[:12]}"
    _create(prompts_stub, admin.api_key, prompt_id, FIRST)
    _create(prompts_stub, admin.api_key, prompt_id, SECOND)
    calls = [("1", {"city": "Brest", "topic": "tides"}), ("2", {"city": "Lorient", "topic": "boats"})]
    ids = []
    with _openai(stack, admin.api_key, marker) as client:
        for version, inputs in calls:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[],
                extra_headers=_prompt_headers(prompt_id, inputs, **{"Candela-Prompt-Version": version}),
            )
            ids.append(raw.headers["candela-id"])
        unnamed = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"about {prompt_id} Lorient"}]
        )
    for request_id in [*ids, unnamed.headers["candela-id"]]:
        wait_for_logged_request(query_stub, admin.api_key, request_id)

    def found(*conditions: query_pb.FilterCondition) -> list[str]:
        response = query_stub.QueryRequests(
            query_pb.QueryRequestsRequest(
                filter=query_pb.RequestFilter(conditions=[_condition("prompt_id", prompt_id), *conditions]),
                sort=query_pb.RequestSort(field="created_at", ascending=True),
            ),
            metadata=bearer(admin.api_key),
            timeout=10,
        )
        return [request.request_id for request in response.requests]

    assert found() == ids
    assert found(_condition("prompt_version", "2")) == [ids[1]]
    assert found(_condition("prompt_input", "Lorient", key="city")) == [ids[1]]
    assert found(_condition("prompt_input", "tides", key="topic")) == [ids[0]]
    assert found(_condition("prompt_input", "Lorient", key="topic")) == []


def test_another_organizations_prompt_is_not_found(
    stack: Stack, admin: Bootstrap, gateway_channel: grpc.Channel, marker: str
) -> None:
    other = make_tenant(stack, gateway_channel, f"prompts-{marker[:8]}")
    headers = _prompt_headers(other.prompt_id, {"name": "Ada"}, **{"Candela-Prompt-Environment": "production"})
    with _openai(stack, admin.api_key, marker) as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=MODEL, messages=[], extra_headers=headers)
    with _openai(stack, other.keys["proxy"], marker) as client:
        client.chat.completions.create(model=MODEL, messages=[], extra_headers=headers)
    (received,) = fake_requests(stack, x_test_marker=marker)
    assert received["json"]["messages"] == [{"role": "user", "content": f"Hello Ada {other.marker}"}]


@pytest.mark.parametrize(
    ("headers", "status", "error_code", "complaint"),
    [
        ({"Candela-Prompt-Id": "no-such-prompt"}, 404, "prompt_not_found", "'no-such-prompt' does not exist"),
        ({"Candela-Prompt-Environment": "nowhere"}, 404, "prompt_not_found", "no environment 'nowhere'"),
        ({"Candela-Prompt-Version": "99"}, 404, "prompt_not_found", "version 99 of prompt"),
        ({"Candela-Prompt-Inputs": '{"city": "Brest"}'}, 400, "invalid_prompt_inputs", "inputs.topic: missing"),
        (
            {"Candela-Prompt-Inputs": '{"city": "Brest", "topic": "t", "mood": "x"}'},
            400,
            "invalid_prompt_inputs",
            "inputs.mood: unexpected",
        ),
        ({"Candela-Prompt-Inputs": '{"city": "Brest"'}, 400, "invalid_candela_header", "is not valid json"),
        ({"Candela-Prompt-Inputs": '{"city": 5}'}, 400, "invalid_candela_header", "must be a string"),
    ],
)
def test_bad_prompt_input_is_refused_in_the_openai_shape_and_not_logged(
    stack: Stack,
    admin: Bootstrap,
    prompt: StoredPrompt,
    marker: str,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    headers: dict[str, str],
    status: int,
    error_code: str,
    complaint: str,
) -> None:
    user = f"bad-prompt-{marker}"
    named = {**_prompt_headers(prompt.prompt_id, INPUTS), **headers, "Candela-User-Id": user}
    with _openai(stack, admin.api_key, marker) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=MODEL, messages=[], extra_headers=named)
        error = caught.value
        assert error.status_code == status
        assert isinstance(error, openai.NotFoundError if status == 404 else openai.BadRequestError)
        assert isinstance(error.body, dict)
        assert error.body["code"] == error_code
        assert complaint.lower() in error.body["message"].lower()
        assert fake_requests(stack, x_test_marker=marker) == [], "nothing reached the provider"
        # A request the proxy refused is not logged: only the good one of this user is found.
        good = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"Candela-User-Id": user}
        )
    wait_for_logged_request(query_stub, admin.api_key, good.headers["candela-id"])
    listed = query_stub.QueryRequests(
        query_pb.QueryRequestsRequest(filter=query_pb.RequestFilter(user_id=user)),
        metadata=bearer(admin.api_key),
        timeout=10,
    )
    assert [request.request_id for request in listed.requests] == [good.headers["candela-id"]]


def test_unknown_prompt_is_404_in_the_anthropic_shape(stack: Stack, admin: Bootstrap, marker: str) -> None:
    with (
        anthropic.Anthropic(
            base_url=f"{stack.gateway_url}/anthropic",
            api_key="sk-ant-provider",
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
            max_retries=0,
        ) as client,
        pytest.raises(anthropic.NotFoundError) as caught,
    ):
        client.messages.create(
            model=CLAUDE, max_tokens=10, messages=[], extra_body={"prompt_id": f"missing-{marker}", "inputs": {}}
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert f"'missing-{marker}' does not exist" in caught.value.body["error"]["message"]
    # Malformed body inputs are 400 in the same shape.
    response = httpx.post(
        f"{stack.gateway_url}/anthropic/v1/messages",
        json={"model": CLAUDE, "max_tokens": 10, "messages": [], "prompt_id": "p", "inputs": ["Brest"]},
        headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-api-key": "sk-ant", "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "'inputs' must be a JSON object" in response.json()["error"]["message"]
    assert fake_requests(stack, x_test_marker=marker) == []


def test_render_prompt_over_grpc_says_not_found_and_invalid_argument(
    admin: Bootstrap, prompt: StoredPrompt, prompts_stub: prompts_service_pb2_grpc.PromptsServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        prompts_stub.RenderPrompt(
            prompts_pb.RenderPromptRequest(prompt_id="no-such-prompt"), metadata=bearer(admin.api_key), timeout=10
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as invalid:
        prompts_stub.RenderPrompt(
            prompts_pb.RenderPromptRequest(prompt_id=prompt.prompt_id, inputs={"city": "Brest"}),
            metadata=bearer(admin.api_key),
            timeout=10,
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.topic" in (invalid.value.details() or "")
