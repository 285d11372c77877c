"""OpenAI Images: ``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits`` (a multipart upload).

Every image is the same 1x1 PNG, as ``b64_json`` (``gpt-image-1``, or ``response_format: "b64_json"``) or a
URL. ``gpt-image-1`` reports token usage: ``input_tokens`` = the prompt's words (plus one image token per
1,000 uploaded bytes for an edit), ``output_tokens`` = 272 per image (a low-quality square's count).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Final

from aiohttp import web

from candela_stack.fake_provider.generation import count_words
from candela_stack.fake_provider.openai_common import require_openai_field
from candela_stack.fake_provider.wire import FakeRequestError, FormPart, JSONObject, openai_json, read_body, read_form

PNG_1X1: Final = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
OUTPUT_TOKENS_PER_IMAGE: Final = 272


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/images/generations", generations)
    router.add_post("/v1/images/edits", edits)


async def generations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/generations``."""
    started = time.monotonic()
    body = await read_body(request, "openai")
    prompt = require_openai_field(body, "prompt")
    return openai_json(
        _images(str(body.get("model", "dall-e-2")), str(prompt), 0, body.get("n", 1), body.get("response_format")),
        started,
    )


async def edits(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/edits``: ``image`` (a file) edited per ``prompt``."""
    started = time.monotonic()
    form = await read_form(request)
    image = form.get("image") or form.get("image[]")
    if image is None or image.filename is None:
        raise FakeRequestError("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    prompt = _field(form, "prompt")
    if prompt is None:
        raise FakeRequestError(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    model = _field(form, "model") or "dall-e-2"
    count = int(_field(form, "n") or "1")
    image_tokens = max(1, len(image.content) // 1000)
    return openai_json(_images(model, prompt, image_tokens, count, _field(form, "response_format")), started)


def _field(form: dict[str, FormPart], name: str) -> str | None:
    return form[name].text if name in form else None


def _images(model: str, prompt: str, image_tokens: int, count: Any, response_format: Any) -> JSONObject:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10:
        raise FakeRequestError("'n' must be an integer from 1 to 10.", param="n")
    as_base64 = model.startswith("gpt-image") or response_format == "b64_json"
    item: JSONObject = (
        {"b64_json": base64.b64encode(PNG_1X1).decode("ascii")}
        if as_base64
        else {"url": "https://images.fake-provider.invalid/1x1.png", "revised_prompt": prompt}
    )
    payload: JSONObject = {"created": int(time.time()), "data": [dict(item) for _ in range(count)]}
    if model.startswith("gpt-image"):
        text_tokens = count_words(prompt)
        output_tokens = OUTPUT_TOKENS_PER_IMAGE * count
        payload["usage"] = {
            "input_tokens": text_tokens + image_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output_tokens,
            "total_tokens": text_tokens + image_tokens + output_tokens,
        }
    return payload
