"""Naming a prompt in headers or the body, and how the rendered template merges into each provider's body."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from multidict import CIMultiDict

from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela_proxy.headers import CandelaHeaders, HeaderError, parse_candela_headers
from candela_proxy.prompting import (
    PromptError,
    PromptRequest,
    _render_failure,
    check_renderable,
    forwarded_body,
    names_prompt,
    prompt_request,
)
from candela_proxy.providers import Route, resolve_route
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES

pytestmark = pytest.mark.unit

CHAT_TEMPLATE = prompts_pb.RenderPromptResponse(
    prompt_id="support",
    version=2,
    format=prompts_pb.TEMPLATE_FORMAT_CHAT,
    messages=[
        prompts_pb.ChatMessage(role="system", content="You answer about Brest."),
        prompts_pb.ChatMessage(role="user", content="Tell me about tides."),
    ],
)
TEXT_TEMPLATE = prompts_pb.RenderPromptResponse(
    prompt_id="haiku",
    version=1,
    format=prompts_pb.TEMPLATE_FORMAT_TEXT,
    messages=[prompts_pb.ChatMessage(role="user", content="Write a haiku about tides.")],
    text="Write a haiku about tides.",
)


def _route(path: str) -> Route:
    route = resolve_route(path, "", "https://api.openai.com/v1", "https://api.anthropic.com")
    assert route is not None
    return route


def _headers(**values: str) -> CandelaHeaders:
    return parse_candela_headers(CIMultiDict(values))


def test_prompt_headers_are_parsed_with_helicone_spelling_too() -> None:
    parsed = _headers(
        **{
            "Candela-Prompt-Id": "support",
            "Helicone-Prompt-Environment": " production ",
            "Candela-Prompt-Inputs": '{"city": "Brest", "topic": "tides"}',
        }
    )
    assert (parsed.prompt_id, parsed.prompt_environment) == ("support", "production")
    assert parsed.prompt_inputs == {"city": "Brest", "topic": "tides"}
    assert _headers(**{"Candela-Prompt-Version": "007"}).prompt_version == "7"


def test_helicone_prompt_id_alone_is_a_tag_and_names_the_prompt_only_with_other_parts() -> None:
    tagged = _headers(**{"Helicone-Prompt-Id": "onboarding"})
    assert (tagged.prompt_id, tagged.prompt_tag) == ("", "onboarding")
    assert not names_prompt(tagged, {"model": "gpt-4o-mini", "messages": []})
    with_inputs = _headers(**{"Helicone-Prompt-Id": "onboarding", "Helicone-Prompt-Inputs": '{"city": "Brest"}'})
    assert names_prompt(with_inputs, {"messages": []})
    assert prompt_request(with_inputs, {"messages": []}).prompt_id == "onboarding"


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("Candela-Prompt-Inputs", '{"city": ', "Candela-Prompt-Inputs is not valid JSON"),
        ("Candela-Prompt-Inputs", '["Brest"]', "must be a JSON object of variable name -> string value"),
        ("Candela-Prompt-Inputs", '{"count": 3}', "the value of 'count' must be a string, got int"),
        ("Candela-Prompt-Version", "latest", "Candela-Prompt-Version must be an integer from 1 to 2147483647"),
        ("Candela-Prompt-Version", "0", "must be an integer from 1"),
    ],
)
def test_malformed_prompt_headers_name_the_problem(name: str, value: str, complaint: str) -> None:
    with pytest.raises(HeaderError, match=complaint):
        _headers(**{name: value})


def test_prompt_inputs_may_be_longer_than_other_headers() -> None:
    long_value = "x" * 4000
    assert _headers(**{"Candela-Prompt-Inputs": f'{{"doc": "{long_value}"}}'}).prompt_inputs == {"doc": long_value}
    with pytest.raises(HeaderError, match="longer than 1024"):
        _headers(**{"Candela-User-Id": long_value})


def test_a_request_without_prompt_parts_names_no_prompt() -> None:
    assert not names_prompt(CandelaHeaders(), {"model": "m", "messages": [], "inputs": {"a": "b"}})
    assert not names_prompt(CandelaHeaders(), None)
    assert names_prompt(CandelaHeaders(), {"prompt_id": "support"})
    assert names_prompt(_headers(**{"Candela-Prompt-Inputs": "{}"}), None)


def test_body_keys_name_the_prompt_and_are_stripped() -> None:
    named = prompt_request(
        CandelaHeaders(),
        {
            "model": "gpt-4o-mini",
            "prompt_id": "support",
            "prompt_version": "2",
            "inputs": {"city": "Brest"},
            "messages": [],
        },
    )
    assert named == PromptRequest(
        prompt_id="support",
        version=2,
        environment="",
        inputs={"city": "Brest"},
        document={"model": "gpt-4o-mini", "messages": []},
    )


def test_headers_and_body_combine_but_must_agree() -> None:
    options = _headers(**{"Candela-Prompt-Id": "support", "Candela-Prompt-Environment": "staging"})
    named = prompt_request(options, {"model": "m", "inputs": {"city": "Brest"}})
    assert (named.prompt_id, named.version, named.environment, named.inputs) == (
        "support",
        0,
        "staging",
        {"city": "Brest"},
    )
    with pytest.raises(PromptError, match="prompt id differs"):
        prompt_request(options, {"prompt_id": "other"})
    with pytest.raises(PromptError, match="version or a prompt environment, not both"):
        prompt_request(options, {"prompt_version": 3})


@pytest.mark.parametrize(
    ("options", "document", "complaint"),
    [
        ({"Candela-Prompt-Version": "2"}, {}, "without a prompt id"),
        ({}, {"prompt_id": 7}, "'prompt_id' must be a non-empty string"),
        ({}, {"prompt_id": "p", "prompt_version": True}, "'prompt_version' must be an integer"),
        ({}, {"prompt_id": "p", "inputs": "city=Brest"}, "'inputs' must be a JSON object"),
        ({}, {"prompt_id": "p", "inputs": {"n": 1}}, "the value of 'n' must be a string"),
        ({"Candela-Prompt-Inputs": '{"a": "1"}'}, {"prompt_id": "p", "inputs": {"a": "2"}}, "inputs differ"),
        ({}, {"prompt_id": "p", "prompt_version": "²"}, "'prompt_version' must be an integer"),
        ({}, {"prompt_id": "p", "prompt_version": "9" * 5000}, "'prompt_version' must be an integer"),
        (
            {},
            {"prompt_id": "p", "inputs": {"d": "é" * (MAX_PROMPT_INPUTS_BYTES // 2)}},
            f"more than the limit of {MAX_PROMPT_INPUTS_BYTES}",
        ),
    ],
)
def test_bad_prompt_requests_are_400_naming_the_problem(
    options: dict[str, str], document: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(PromptError, match=complaint) as caught:
        prompt_request(_headers(**options), document)
    assert (caught.value.status, caught.value.code) == (400, "invalid_prompt_request")


def test_openai_chat_gets_the_template_messages_before_the_clients() -> None:
    client = [{"role": "user", "content": "And the weather?"}]
    body = forwarded_body(_route("/v1/chat/completions"), {"model": "m", "messages": client}, CHAT_TEMPLATE)
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You answer about Brest."},
            {"role": "user", "content": "Tell me about tides."},
            {"role": "user", "content": "And the weather?"},
        ],
    }
    text = forwarded_body(_route("/openai/v1/chat/completions"), {"model": "m"}, TEXT_TEMPLATE)
    assert text["messages"] == [{"role": "user", "content": "Write a haiku about tides."}]


@pytest.mark.parametrize(
    ("client_system", "system"),
    [
        (None, "You answer about Brest."),
        ("Be brief.", "You answer about Brest.\n\nBe brief."),
        (
            [{"type": "text", "text": "Be brief."}],
            [{"type": "text", "text": "You answer about Brest."}, {"type": "text", "text": "Be brief."}],
        ),
    ],
)
def test_anthropic_gets_system_messages_as_system(client_system: Any, system: Any) -> None:
    document: dict[str, Any] = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    if client_system is not None:
        document["system"] = client_system
    body = forwarded_body(_route("/anthropic/v1/messages"), document, CHAT_TEMPLATE)
    assert body["system"] == system
    assert body["messages"] == [
        {"role": "user", "content": "Tell me about tides."},
        {"role": "user", "content": "Hi"},
    ]


def test_responses_and_completions_take_the_text() -> None:
    responses = _route("/v1/responses")
    assert forwarded_body(responses, {"model": "m"}, TEXT_TEMPLATE)["input"] == "Write a haiku about tides."
    assert forwarded_body(responses, {"model": "m", "input": "More."}, CHAT_TEMPLATE)["input"] == [
        {"role": "system", "content": "You answer about Brest."},
        {"role": "user", "content": "Tell me about tides."},
        {"role": "user", "content": "More."},
    ]
    completions = _route("/v1/completions")
    assert forwarded_body(completions, {"model": "m"}, TEXT_TEMPLATE)["prompt"] == "Write a haiku about tides."
    with pytest.raises(PromptError, match="is a chat template"):
        forwarded_body(completions, {"model": "m"}, CHAT_TEMPLATE)
    with pytest.raises(PromptError, match="not both"):
        forwarded_body(completions, {"model": "m", "prompt": "mine"}, TEXT_TEMPLATE)


def test_a_prompt_is_refused_where_it_cannot_be_rendered() -> None:
    for path in ("/v1/embeddings", "/openai/v1/models", "/anthropic/v1/messages/count_tokens"):
        with pytest.raises(PromptError, match="can only be rendered into") as caught:
            check_renderable(_route(path))
        assert caught.value.status == 400
    check_renderable(_route("/v1/messages"))


@pytest.mark.parametrize(
    ("code", "status", "error_code"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "prompt_not_found"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_prompt_inputs"),
        (grpc.StatusCode.UNAVAILABLE, 503, "candela_prompts_unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "candela_prompts_unavailable"),
        (grpc.StatusCode.UNAUTHENTICATED, 500, "prompt_render_failed"),
    ],
)
def test_prompts_service_statuses_become_http_answers(code: grpc.StatusCode, status: int, error_code: str) -> None:
    named = PromptRequest("support", 0, "", {}, {})
    failure = _render_failure(named, grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why", ""))
    assert (failure.status, failure.code) == (status, error_code)
    if status < 500:
        assert failure.message == "why", "the caller's mistake is explained with PromptsService's own words"
