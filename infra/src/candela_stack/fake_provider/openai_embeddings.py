"""OpenAI Embeddings: ``POST /v1/embeddings``, deterministic unit vectors (float or base64)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import sys
import time
from array import array
from typing import Any, Final

from aiohttp import web

from candela_stack.fake_provider.openai_common import (
    part_tokens,
    prompt_parts,
    require_openai_field,
    require_openai_model,
)
from candela_stack.fake_provider.wire import FakeRequestError, JSONObject, openai_json, read_body

DEFAULT_EMBEDDING_DIMENSIONS: Final = 1536
LARGE_EMBEDDING_DIMENSIONS: Final = 3072


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/embeddings", embeddings)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: a list of deterministic embedding objects (float or base64)."""
    return await answer_embeddings(request, await read_body(request, "openai"))


async def answer_embeddings(
    request: web.Request, body: JSONObject, answered_model: str | None = None
) -> web.StreamResponse:
    """The embeddings of ``body``'s input, naming ``answered_model`` (default: the body's ``model``)."""
    started = time.monotonic()
    model = require_openai_model(body) if answered_model is None else answered_model
    raw_input = require_openai_field(body, "input")
    try:
        inputs = prompt_parts(raw_input)
    except FakeRequestError:
        raise FakeRequestError(
            "'input' must be a string, a non-empty array of strings or an array of token arrays.", param="input"
        ) from None
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise FakeRequestError(
            f"{encoding_format!r} is not one of ['float', 'base64'] - 'encoding_format'", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = LARGE_EMBEDDING_DIMENSIONS if model.endswith("-large") else DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise FakeRequestError("'dimensions' must be a positive integer.", param="dimensions")
    data: list[JSONObject] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item if isinstance(item, str) else json.dumps(item), dimensions)
        embedding: Any
        if encoding_format == "base64":
            if sys.byteorder != "little":
                vector.byteswap()
            embedding = base64.b64encode(vector.tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = sum(part_tokens(item) for item in inputs)
    payload = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return openai_json(payload, started)


def embedding_vector(seed_text: str, dimensions: int) -> array[float]:
    """A deterministic float32 unit vector seeded by the SHA-256 of ``seed_text``."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode("utf-8")).digest()[:8], "little")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return array("f", (value / norm for value in values))
