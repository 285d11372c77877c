"""The proxy's ``endpoint`` metric label: every provider's paths under a few fixed names, never a model id,
a deployment, a project or a region."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from candela_proxy import bedrock, metrics
from candela_proxy.config import ProxyConfig
from candela_proxy.google import resolve_google_route
from candela_proxy.named_routes import NamedRoutes
from candela_proxy.providers import Route, resolve_route

pytestmark = pytest.mark.unit

CONFIG = ProxyConfig(
    service_token="t",
    auth_addr="a:1",
    ingest_addr="i:1",
    azure_base_url="https://contoso.openai.azure.com",
    bedrock_base_url="https://bedrock-runtime.{region}.amazonaws.com",
)
NAMED = NamedRoutes(CONFIG)
VERTEX = "/vertex/v1/projects/acme-prod/locations/us-central1/publishers"


def _route(path: str, query_string: str = "") -> Route:
    route = (
        NAMED.resolve(path, query_string, {})
        or resolve_google_route(path, query_string, "https://generativelanguage.test", "")
        or resolve_route(path, query_string, "https://openai.test/v1", "https://anthropic.test")
    )
    if route is None and bedrock.serves(path):
        headers = {"Candela-Aws-Access-Key-Id": "AKIAEXAMPLE", "Candela-Aws-Secret-Access-Key": "s3cret"}
        route = bedrock.resolve_route(make_mocked_request("POST", path, headers=headers), CONFIG)
    assert route is not None, path
    return route


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/openai/v1/responses", "/v1/responses"),
        ("/v1/audio/transcriptions", "/v1/audio/transcriptions"),
        ("/anthropic/v1/messages", "/v1/messages"),
        ("/anthropic/v1/messages/count_tokens", "/v1/messages/count_tokens"),
        ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", "generateContent"),
        ("/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent", "streamGenerateContent"),
        ("/gemini/v1/models/gemini-2.5-flash:countTokens", "countTokens"),
        ("/gemini/v1beta/models/gemini-embedding-001:embedContent", "embedContent"),
        ("/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents", "batchEmbedContents"),
        ("/gemini/v1beta/openai/chat/completions", "/v1/chat/completions"),
        ("/gemini/v1beta/openai/embeddings", "/v1/embeddings"),
        (f"{VERTEX}/google/models/gemini-2.5-flash:generateContent", "generateContent"),
        (f"{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent", "streamGenerateContent"),
        (f"{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict", "rawPredict"),
        (f"{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict", "streamRawPredict"),
        ("/bedrock/model/amazon.nova-lite-v1%3A0/converse", "converse"),
        ("/bedrock/us-west-2/model/amazon.nova-lite-v1%3A0/converse-stream", "converse-stream"),
        ("/bedrock/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/invoke", "invoke"),
        (
            "/bedrock/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fp/invoke-with-response-stream",
            "invoke-with-response-stream",
        ),
        ("/azure/openai/deployments/prod-chat/chat/completions", "/v1/chat/completions"),
        ("/azure/openai/deployments/prod-embed/embeddings", "/v1/embeddings"),
        ("/azure/openai/v1/responses", "/v1/responses"),
        ("/groq/openai/v1/chat/completions", "/v1/chat/completions"),
        ("/mistral/v1/embeddings", "/v1/embeddings"),
        ("/openrouter/api/v1/chat/completions", "/v1/chat/completions"),
        ("/perplexity/chat/completions", "/v1/chat/completions"),
    ],
)
def test_each_providers_paths_count_under_a_named_endpoint(path: str, label: str) -> None:
    assert metrics.endpoint_label(_route(path)) == label


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        "/v1/files/file-abc123/content",
        "/gemini/v1beta/models",
        "/gemini/v1beta/models/gemini-2.5-flash",
        "/gemini/v1beta/files",
        "/gemini/v1beta/models/gemini-2.5-flash:someFutureMethod",
        f"{VERTEX}/google/models/gemini-2.5-flash:fetchPredictOperation",
        "/azure/openai/deployments/prod-chat/extensions/chat/completions",
        "/groq/openai/v1/models",
    ],
)
def test_any_other_path_is_other(path: str) -> None:
    assert metrics.endpoint_label(_route(path)) == "other"


def test_a_request_with_no_route_is_other() -> None:
    assert metrics.endpoint_label(None) == "other"


def test_the_labels_are_a_fixed_set_that_knows_every_bedrock_operation() -> None:
    assert set(bedrock.OPERATIONS) == metrics.BEDROCK_OPERATIONS
    labels = metrics.OPENAI_ENDPOINTS | metrics.GOOGLE_METHODS | metrics.BEDROCK_OPERATIONS | {"other"}
    assert len(labels) == len(metrics.OPENAI_ENDPOINTS) + len(metrics.GOOGLE_METHODS) + 4 + 1
