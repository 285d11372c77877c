"""Azure OpenAI: a resource's deployment paths (``/openai/deployments/{deployment}/...?api-version=...``) and
its v1 API (``/openai/v1/...``), answering as the OpenAI APIs do but naming the deployment's model.

A deployment runs the model ``x-fake-azure-model`` names (the deployment name itself when absent), as a real
resource answers with the model behind the deployment (``gpt-4o-2024-08-06``), not the deployment's name;
``x-fake-azure-model:`` (empty) answers with ``"model": ""``. A chat stream starts with Azure's
content-filter event (``choices: []``, ``"model": ""``, ``prompt_filter_results``). Deployment paths
require ``api-version`` (a 404 without it, as Azure answers); every path requires a key (``api-key`` or
``Authorization``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from candela_stack.fake_provider import openai_chat, openai_completions, openai_embeddings, openai_responses
from candela_stack.fake_provider.wire import FakeRequestError, JSONObject, read_body

MODEL_HEADER: Final = "x-fake-azure-model"

Answer = Callable[[web.Request, JSONObject, str | None], Awaitable[web.StreamResponse]]

PROMPT_FILTER_CHUNK: Final[JSONObject] = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [
        {
            "prompt_index": 0,
            "content_filter_results": {
                category: {"filtered": False, "severity": "safe"}
                for category in ("hate", "self_harm", "sexual", "violence")
            },
        }
    ],
}
"""The first event of an Azure chat stream: the prompt's content-filter results, no choices, no model."""


async def _azure_chat(request: web.Request, body: JSONObject, answered_model: str | None) -> web.StreamResponse:
    return await openai_chat.answer_chat(request, body, answered_model, stream_preamble=PROMPT_FILTER_CHUNK)


OPERATIONS: Final[dict[str, Answer]] = {
    "chat/completions": _azure_chat,
    "completions": openai_completions.answer_completion,
    "embeddings": openai_embeddings.answer_embeddings,
    "responses": openai_responses.answer_response,
}


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    for operation, answer in OPERATIONS.items():
        router.add_post(f"/openai/deployments/{{deployment}}/{operation}", _deployment_handler(answer))
        router.add_post(f"/openai/v1/{operation}", _v1_handler(answer))


def _deployment_handler(answer: Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        _require_key(request)
        if not request.query.get("api-version"):
            raise FakeRequestError("Resource not found", status=404, code="404")
        body = await read_body(request, "openai")
        deployment = request.match_info["deployment"]
        body.setdefault("model", deployment)
        return await answer(request, body, request.headers.get(MODEL_HEADER, deployment))

    return handler


def _v1_handler(answer: Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        _require_key(request)
        body = await read_body(request, "openai")
        return await answer(request, body, request.headers.get(MODEL_HEADER))

    return handler


def _require_key(request: web.Request) -> None:
    if not request.headers.get("api-key") and not request.headers.get("Authorization"):
        raise FakeRequestError(
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key"
            " for an active subscription and use a correct regional API endpoint for your resource.",
            status=401,
            code="401",
        )
