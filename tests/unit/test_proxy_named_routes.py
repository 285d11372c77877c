"""Azure OpenAI's and the OpenAI-compatible family's routes, their pricing ids, and what a log keeps of a body
that is not JSON (multipart uploads, binary answers)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from genai_prices import data as price_data

from candela_proxy import azure, binary_bodies, compatible, pricing
from candela_proxy.config import ProxyConfig
from candela_proxy.exchange import ProxyError
from candela_proxy.named_routes import NamedRoutes
from candela_proxy.providers import Provider
from candela_proxy.response_usage import ResponseFacts, facts_from_json
from candela_proxy.stream_usage import STREAM_USAGE_PATHS
from candela_stack.addresses import OPENAI_COMPATIBLE_PROVIDERS

pytestmark = pytest.mark.unit

RESOURCE = "https://contoso.openai.azure.com"


def _config(**values: str) -> ProxyConfig:
    return ProxyConfig(service_token="t", auth_addr="a:1", ingest_addr="i:1", **values)  # type: ignore[arg-type]


ROUTES = NamedRoutes(_config(vllm_base_url="http://127.0.0.1:8000/v1", azure_deployments="prod-chat=gpt-4o"))


@pytest.mark.parametrize(
    ("path", "url", "label"),
    [
        ("/groq/openai/v1/chat/completions", "https://api.groq.com/openai/v1/chat/completions", "groq"),
        ("/groq/v1/chat/completions", "https://api.groq.com/openai/v1/chat/completions", "groq"),
        ("/mistral/v1/embeddings", "https://api.mistral.ai/v1/embeddings", "mistral"),
        ("/deepseek/v1/chat/completions", "https://api.deepseek.com/v1/chat/completions", "deepseek"),
        ("/xai/v1/chat/completions", "https://api.x.ai/v1/chat/completions", "xai"),
        ("/together/v1/chat/completions", "https://api.together.xyz/v1/chat/completions", "together"),
        ("/fireworks/inference/v1/completions", "https://api.fireworks.ai/inference/v1/completions", "fireworks"),
        ("/openrouter/api/v1/chat/completions", "https://openrouter.ai/api/v1/chat/completions", "openrouter"),
        ("/perplexity/chat/completions", "https://api.perplexity.ai/chat/completions", "perplexity"),
        ("/perplexity/v1/chat/completions", "https://api.perplexity.ai/chat/completions", "perplexity"),
        ("/cerebras/v1/chat/completions", "https://api.cerebras.ai/v1/chat/completions", "cerebras"),
        ("/vllm/v1/chat/completions", "http://127.0.0.1:8000/v1/chat/completions", "vllm"),
    ],
)
def test_each_member_routes_its_own_layout_and_v1(path: str, url: str, label: str) -> None:
    route = ROUTES.resolve(path, "", {})
    assert route is not None
    assert (route.upstream_url, route.label, route.provider) == (url, label, Provider.OPENAI)
    assert route.provider_path.startswith("/v1/")
    assert route.provider_name == label


@pytest.mark.parametrize(
    "path", ["/ollama/v1/chat/completions", "/groq/chat/completions", "/groq", "/nobody/v1/chat", "/azure"]
)
def test_unconfigured_members_and_foreign_layouts_have_no_route(path: str) -> None:
    assert ROUTES.resolve(path, "", {}) is None


def test_the_query_string_goes_along() -> None:
    route = ROUTES.resolve("/groq/openai/v1/models", "limit=2", {})
    assert route is not None
    assert route.upstream_url == "https://api.groq.com/openai/v1/models?limit=2"


def test_price_ids_are_genai_prices_providers_and_defaults_are_the_config() -> None:
    known = {provider.id for provider in price_data.providers}
    for member in compatible.MEMBERS:
        assert member.price_id in known or (member.price_id == "" and member.name in {"vllm", "ollama"})
    assert tuple(member.name for member in compatible.MEMBERS) == OPENAI_COMPATIBLE_PROVIDERS
    facts = ResponseFacts(prompt_tokens=1_000_000, completion_tokens=0, has_usage=True)
    assert pricing.cost_usd("x-ai", "grok-3", facts) == Decimal(3)


def test_streams_are_asked_for_usage_only_where_the_member_takes_stream_options() -> None:
    groq = ROUTES.resolve("/groq/v1/chat/completions", "", {})
    mistral = ROUTES.resolve("/mistral/v1/chat/completions", "", {})
    assert groq is not None
    assert mistral is not None
    assert groq.stream_options
    assert not mistral.stream_options


def test_azure_deployment_path_at_the_configured_resource() -> None:
    routes = NamedRoutes(_config(azure_base_url=RESOURCE + "/", azure_deployments="prod-chat=gpt-4o"))
    route = routes.resolve("/azure/openai/deployments/prod-chat/chat/completions", "api-version=2024-10-21", {})
    assert route is not None
    assert route.upstream_url == f"{RESOURCE}/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21"
    assert route.provider_path == "/openai/deployments/prod-chat/chat/completions"
    assert route.openai_path == "/v1/chat/completions"
    assert route.openai_path in STREAM_USAGE_PATHS
    assert (route.label, route.price_id, route.model) == ("azure", "azure", "gpt-4o")
    assert route.properties == (("azure-deployment", "prod-chat"),)
    assert route.client_base_url == ""


@pytest.mark.parametrize("header", ["Candela-OpenAI-Api-Base", "Helicone-OpenAI-Api-Base"])
def test_azure_resource_named_by_the_client_is_a_custom_target(header: str) -> None:
    route = ROUTES.resolve("/azure/openai/v1/responses", "", {header: "https://other.openai.azure.com/"})
    assert route is not None
    assert route.client_base_url == "https://other.openai.azure.com"
    assert route.url_at(route.client_base_url) == "https://other.openai.azure.com/openai/v1/responses"
    assert route.openai_path == "/v1/responses"
    assert route.model == ""
    assert route.properties == ()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "azure_resource_missing"),
        ({"Candela-OpenAI-Api-Base": "https://user:pw@x.openai.azure.com"}, "invalid_candela_header"),
        ({"Helicone-OpenAI-Api-Base": "ftp://x"}, "invalid_candela_header"),
        ({"Candela-OpenAI-Api-Base": "https://x.openai.azure.com/?a=b"}, "invalid_candela_header"),
    ],
)
def test_azure_without_a_usable_resource_is_a_400(headers: dict[str, str], code: str) -> None:
    with pytest.raises(ProxyError) as raised:
        ROUTES.resolve("/azure/openai/deployments/d/chat/completions", "api-version=1", headers)
    assert (raised.value.status, raised.value.code) == (400, code)


@pytest.mark.parametrize(
    ("query", "asked"),
    [
        ("api-version=2024-10-21", True),
        ("api-version=2024-08-01-preview", True),
        ("api-version=2025-04-01-preview&x=1", True),
        ("api-version=2024-06-01", False),
        ("api-version=2024-02-15-preview", False),
        ("api-version=latest", False),
        ("", False),
    ],
)
def test_azure_streams_are_asked_for_usage_only_from_the_api_version_that_takes_it(query: str, asked: bool) -> None:
    route = ROUTES.resolve("/azure/openai/deployments/d/chat/completions", query, {"Candela-OpenAI-Api-Base": RESOURCE})
    assert route is not None
    assert route.stream_options is asked
    v1 = ROUTES.resolve("/azure/openai/v1/chat/completions", "", {"Candela-OpenAI-Api-Base": RESOURCE})
    assert v1 is not None
    assert v1.stream_options


def test_azure_deployments_setting_is_checked() -> None:
    assert azure.parse_deployments(" a = gpt-4o , b=gpt-4o-mini,") == {"a": "gpt-4o", "b": "gpt-4o-mini"}
    with pytest.raises(ValueError, match="'oops'"):
        azure.parse_deployments("a=gpt-4o,oops")


def test_transcription_usage_counts_its_audio_tokens() -> None:
    body = (
        b'{"text": "hi", "usage": {"type": "tokens", "input_tokens": 14, "input_token_details":'
        b' {"text_tokens": 0, "audio_tokens": 14}, "output_tokens": 3, "total_tokens": 17}}'
    )
    facts = facts_from_json(Provider.OPENAI, body)
    assert (facts.prompt_tokens, facts.audio_prompt_tokens, facts.completion_tokens) == (14, 14, 3)


def _multipart(files: dict[str, tuple[str, bytes]], data: dict[str, str]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_a_form_names_its_model_and_a_file_is_never_read_as_a_field() -> None:
    body, content_type = _multipart({"file": ("model.wav", b"model\r\n" * 500)}, {"model": "gpt-4o-transcribe"})
    assert binary_bodies.multipart_field(body, content_type, "model") == "gpt-4o-transcribe"
    only_file, file_type = _multipart({"model": ("model.bin", b"not a field")}, {})
    assert binary_bodies.multipart_field(only_file, file_type, "model") == ""
    assert binary_bodies.multipart_field(b"garbage", "multipart/form-data; boundary=x", "model") == ""
    assert binary_bodies.multipart_field(b'{"model": "m"}', "application/json", "model") == ""


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("application/json", True),
        ("", True),
        ("application/vnd.api+json; charset=utf-8", True),
        ("text/plain", True),
        ("text/event-stream", True),
        ("multipart/form-data; boundary=abc", False),
        ("audio/mpeg", False),
        ("application/octet-stream", False),
        ("image/png", False),
    ],
)
def test_only_binary_bodies_are_bounded(content_type: str, text: bool) -> None:
    body = bytes(range(256)) * 8
    kept = binary_bodies.loggable(body, content_type, 1024)
    if text:
        assert kept == body
    else:
        assert kept.startswith(binary_bodies.MARKER_PREFIX)
        assert f"body of {len(body)} bytes".encode() in kept
        assert binary_bodies.loggable(body, content_type, len(body)) == body


def test_a_large_form_keeps_its_fields_and_loses_only_its_files() -> None:
    audio = bytes(range(256)) * 8
    fields = {"model": "gpt-4o-transcribe", "prompt": "Names: Zoë, Ngũgĩ", "language": "fr"}
    body, content_type = _multipart({"file": ("talk.wav", audio)}, fields)
    kept = binary_bodies.loggable(body, content_type, 1024)
    text = kept.decode()  # nothing binary is left
    assert "[candela: audio/x-wav part of 2048 bytes not logged: the body is larger than" in text
    assert 'filename="talk.wav"' in text
    for name, value in fields.items():
        assert binary_bodies.multipart_field(kept, content_type, name) == value
    assert kept.startswith(body[: body.index(b"talk.wav")])
    assert kept.endswith(body[body.index(audio) + len(audio) :])


def test_a_binary_field_of_a_large_form_is_replaced_too_and_a_malformed_form_is_one_marker() -> None:
    body, content_type = _multipart({"image": ("dot.png", b"png")}, {"model": "gpt-image-1", "mask": "x"})
    body = body.replace(b"\r\n\r\nx\r\n", b"\r\n\r\n" + bytes(range(128, 256)) * 10 + b"\r\n")
    kept = binary_bodies.loggable(body, content_type, 1024)
    assert b"[candela: file part of 1280 bytes not logged" in kept
    assert b"[candela: image/png part of 3 bytes not logged" in kept
    assert binary_bodies.multipart_field(kept, content_type, "model") == "gpt-image-1"
    cut = body[: len(body) // 2] + bytes(range(256)) * 4  # no closing delimiter: not a form
    assert binary_bodies.loggable(cut, content_type, 1024).startswith(b"[candela: multipart/form-data body of ")
    # Fields that alone are over the limit: the whole body's marker, never a log above the limit.
    huge, huge_type = _multipart({"file": ("a.bin", b"\0" * 10)}, {"prompt": "word " * 400})
    assert binary_bodies.loggable(huge, huge_type, 1024).startswith(b"[candela: multipart/form-data body of ")


def test_content_types_are_properties_when_a_body_is_not_json() -> None:
    assert binary_bodies.content_type_properties("application/json", "application/json") == {}
    assert binary_bodies.content_type_properties("application/json", "text/event-stream; charset=utf-8") == {}
    assert binary_bodies.content_type_properties("application/json", "audio/mpeg") == {
        binary_bodies.REQUEST_CONTENT_TYPE: "application/json",
        binary_bodies.RESPONSE_CONTENT_TYPE: "audio/mpeg",
    }
    assert binary_bodies.content_type_properties("multipart/form-data; boundary=b", "") == {
        binary_bodies.REQUEST_CONTENT_TYPE: "multipart/form-data; boundary=b"
    }
