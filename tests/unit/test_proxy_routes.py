"""Which provider and upstream URL each proxied path maps to, and the providers' error shapes."""

from __future__ import annotations

import json

import pytest

from candela_proxy.providers import Provider, error_body, resolve_route

pytestmark = pytest.mark.unit

OPENAI = "https://api.example-openai.test/v1"
ANTHROPIC = "https://api.example-anthropic.test"


@pytest.mark.parametrize(
    ("path", "provider", "url", "provider_path"),
    [
        ("/v1/chat/completions", Provider.OPENAI, f"{OPENAI}/chat/completions", "/v1/chat/completions"),
        ("/openai/v1/embeddings", Provider.OPENAI, f"{OPENAI}/embeddings", "/v1/embeddings"),
        ("/v1/models", Provider.OPENAI, f"{OPENAI}/models", "/v1/models"),
        ("/v1/messages", Provider.ANTHROPIC, f"{ANTHROPIC}/v1/messages", "/v1/messages"),
        ("/anthropic/v1/messages", Provider.ANTHROPIC, f"{ANTHROPIC}/v1/messages", "/v1/messages"),
        (
            "/anthropic/v1/messages/count_tokens",
            Provider.ANTHROPIC,
            f"{ANTHROPIC}/v1/messages/count_tokens",
            "/v1/messages/count_tokens",
        ),
    ],
)
def test_routes(path: str, provider: Provider, url: str, provider_path: str) -> None:
    route = resolve_route(path, "", OPENAI, ANTHROPIC)
    assert route is not None
    assert (route.provider, route.upstream_url, route.provider_path) == (provider, url, provider_path)


def test_keeps_the_query_string() -> None:
    route = resolve_route("/v1/models", "limit=2", OPENAI + "/", ANTHROPIC)
    assert route is not None
    assert route.upstream_url == f"{OPENAI}/models?limit=2"


@pytest.mark.parametrize("path", ["/", "/v2/chat", "/chat/completions", "/openai/chat"])
def test_unknown_paths_have_no_route(path: str) -> None:
    assert resolve_route(path, "", OPENAI, ANTHROPIC) is None


def test_error_shapes() -> None:
    openai = json.loads(error_body(Provider.OPENAI, 401, "bad key", "invalid_candela_key"))
    assert openai == {
        "error": {"message": "bad key", "type": "invalid_request_error", "param": None, "code": "invalid_candela_key"}
    }
    anthropic = json.loads(error_body(Provider.ANTHROPIC, 401, "bad key", "invalid_candela_key"))
    assert anthropic == {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}
