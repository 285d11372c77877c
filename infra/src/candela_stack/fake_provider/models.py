"""``GET /v1/models``: OpenAI's model list, or Anthropic's when the request sends ``anthropic-version``."""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from candela_stack.fake_provider.wire import anthropic_json, openai_json, request_flavor

OPENAI_MODELS: Final = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "text-embedding-3-small")
ANTHROPIC_MODELS: Final = (
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
)


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_get("/v1/models", list_models)


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in OpenAI's shape, or Anthropic's when ``anthropic-version`` is sent."""
    if request_flavor(request) == "anthropic":
        data = [
            {"type": "model", "id": model_id, "display_name": name, "created_at": "2025-08-05T00:00:00Z"}
            for model_id, name in ANTHROPIC_MODELS
        ]
        return anthropic_json({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    payload = {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for model_id in OPENAI_MODELS
        ],
    }
    return openai_json(payload, time.monotonic())
