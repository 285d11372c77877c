"""OpenAI Files and Batches: ``POST /v1/files`` (a multipart upload), ``GET /v1/files``,
``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` (the bytes as uploaded), ``DELETE /v1/files/{id}``;
``POST /v1/batches`` (on an uploaded file), ``GET /v1/batches/{id}``.

Files and batches live in the app (the newest ``MAX_FILES`` files are kept); a batch stays ``validating``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from candela_stack.fake_provider.openai_common import require_openai_field
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    JSONObject,
    openai_headers,
    openai_json,
    random_id,
    read_body,
    read_form,
)

MAX_FILES: Final = 1000
PURPOSES: Final = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})


@dataclass
class StoredFile:
    """An uploaded file: its object as the API shows it, and its bytes."""

    info: JSONObject
    content: bytes


@dataclass
class FileStore:
    """The app's files and batches."""

    files: OrderedDict[str, StoredFile] = field(default_factory=OrderedDict)
    batches: dict[str, JSONObject] = field(default_factory=dict)


STORE_KEY: Final = web.AppKey("fake_provider_files", FileStore)


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/files", upload)
    router.add_get("/v1/files", list_files)
    router.add_get("/v1/files/{file_id}", retrieve)
    router.add_get("/v1/files/{file_id}/content", content)
    router.add_delete("/v1/files/{file_id}", delete)
    router.add_post("/v1/batches", create_batch)
    router.add_get("/v1/batches/{batch_id}", retrieve_batch)


def _store(request: web.Request) -> FileStore:
    return request.app[STORE_KEY]


async def upload(request: web.Request) -> web.StreamResponse:
    """``POST /v1/files``: stores ``file`` for ``purpose``."""
    started = time.monotonic()
    form = await read_form(request)
    uploaded = form.get("file")
    if uploaded is None or uploaded.filename is None:
        raise FakeRequestError("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    purpose = form["purpose"].text if "purpose" in form else ""
    if purpose not in PURPOSES:
        raise FakeRequestError(f"'{purpose}' is not one of {sorted(PURPOSES)} - 'purpose'", param="purpose")
    info: JSONObject = {
        "object": "file",
        "id": random_id("file-", 22),
        "purpose": purpose,
        "filename": uploaded.filename,
        "bytes": len(uploaded.content),
        "created_at": int(time.time()),
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }
    store = _store(request)
    store.files[info["id"]] = StoredFile(info, uploaded.content)
    while len(store.files) > MAX_FILES:
        store.files.popitem(last=False)
    return openai_json(info, started)


async def list_files(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files``."""
    data = [stored.info for stored in _store(request).files.values()]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return openai_json(
        {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last}, time.monotonic()
    )


def _file(request: web.Request) -> StoredFile:
    file_id = request.match_info["file_id"]
    stored = _store(request).files.get(file_id)
    if stored is None:
        raise FakeRequestError(f"No such File object: {file_id}", status=404, param="id")
    return stored


async def retrieve(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{id}``."""
    return openai_json(_file(request).info, time.monotonic())


async def content(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{id}/content``: the bytes as uploaded."""
    return web.Response(body=_file(request).content, content_type="application/octet-stream", headers=openai_headers())


async def delete(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/files/{id}``."""
    stored = _file(request)
    del _store(request).files[stored.info["id"]]
    return openai_json({"id": stored.info["id"], "object": "file", "deleted": True}, time.monotonic())


async def create_batch(request: web.Request) -> web.StreamResponse:
    """``POST /v1/batches``: a batch over an uploaded file of purpose ``batch``."""
    started = time.monotonic()
    body = await read_body(request, "openai")
    input_file_id = require_openai_field(body, "input_file_id")
    endpoint = require_openai_field(body, "endpoint")
    window = require_openai_field(body, "completion_window")
    stored = _store(request).files.get(str(input_file_id))
    if stored is None:
        raise FakeRequestError(f"No such File object: {input_file_id}", status=404, param="input_file_id")
    created = int(time.time())
    batch: JSONObject = {
        "id": random_id("batch_", 32),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    _store(request).batches[batch["id"]] = batch
    return openai_json(batch, started)


async def retrieve_batch(request: web.Request) -> web.StreamResponse:
    """``GET /v1/batches/{id}``."""
    batch_id = request.match_info["batch_id"]
    batch = _store(request).batches.get(batch_id)
    if batch is None:
        raise FakeRequestError(f"No such Batch object: {batch_id}", status=404, param="batch_id")
    return openai_json(batch, time.monotonic())
