"""What every provider API of the fake shares on the wire: JSON bodies, server-sent events, response
headers and ids, the request body, and the request error each handler raises."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web

Flavor = Literal["openai", "anthropic", "bedrock", "google"]
"""Whose shape a reply takes (its error body above all); a new provider adds its name here."""
JSONObject = dict[str, Any]

OPENAI_PARSE_ERROR: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


class FakeRequestError(Exception):
    """A request the real provider would reject; mapped to its error shape at the HTTP boundary."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


def dumps(payload: Any, *, pretty: bool = False) -> str:
    """JSON as the providers send it: compact, or OpenAI's indented bodies with ``pretty``."""
    if pretty:
        return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def openai_headers() -> dict[str, str]:
    """The headers OpenAI sends with every answer (a fresh request id)."""
    return {"x-request-id": random_id("req_", 32, string.hexdigits[:16]), "openai-version": "2020-10-01"}


def anthropic_headers() -> dict[str, str]:
    """The headers Anthropic sends with every answer (a fresh request id)."""
    return {"request-id": random_id("req_011", 21)}


def bedrock_headers() -> dict[str, str]:
    """The headers Bedrock sends with every answer (a fresh request id)."""
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def openai_json(payload: JSONObject, started: float) -> web.Response:
    """An OpenAI JSON answer, with the processing time since ``started`` (``time.monotonic()``)."""
    headers = openai_headers()
    headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
    return web.Response(text=dumps(payload, pretty=True), content_type="application/json", headers=headers)


def anthropic_json(payload: JSONObject) -> web.Response:
    """An Anthropic JSON answer."""
    return web.Response(text=dumps(payload), content_type="application/json", headers=anthropic_headers())


_GOOGLE_PATH: Final = re.compile(r"/v1[a-z0-9]*/(?:models/[^/]+:|projects/)")
_VERTEX_ANTHROPIC_PATH: Final = re.compile(r"/v1[a-z0-9]*/projects/[^/]+/locations/[^/]+/publishers/anthropic/")


def request_flavor(request: web.Request) -> Flavor:
    """Whose error shape a request gets: Bedrock for /model/*; Anthropic for /v1/messages*, an
    anthropic-version header or Claude on Vertex AI; Google's for the Gemini API's ``models/{model}:{method}``
    and Vertex AI's ``projects/...``; else OpenAI."""
    if request.path.startswith("/model/"):
        return "bedrock"
    if _VERTEX_ANTHROPIC_PATH.match(request.path):
        return "anthropic"
    if _GOOGLE_PATH.match(request.path) or request.path.startswith("/v1beta/models"):
        return "google"
    if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return "anthropic"
    return "openai"


def sse_event(payload: Any, event: str | None = None) -> bytes:
    """One server-sent event (``event:`` line only when given)."""
    prefix = f"event: {event}\n" if event is not None else ""
    return f"{prefix}data: {dumps(payload)}\n\n".encode()


@dataclass(frozen=True)
class StreamFraming:
    """How a stream's events go on the wire (``x-fake-line-ending``, ``x-fake-write-bytes``,
    ``x-fake-write-delay-ms``): the real providers end lines with LF and write each event at once, but the
    SSE spec allows CRLF and CR too, and a network may cut an event anywhere."""

    line_ending: bytes = b"\n"
    write_bytes: int = 0
    """Each event in writes of at most this many bytes; 0: in one write."""
    write_delay_s: float = 0.0
    """Pause after each of those writes, so they leave as separate TCP segments."""


class _FramedStream(web.StreamResponse):
    """A stream response that puts each event written on the wire as its :class:`StreamFraming` says."""

    def __init__(self, framing: StreamFraming, headers: Mapping[str, str]) -> None:
        super().__init__(status=200, headers=headers)
        self._framing = framing

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Writes ``data`` (SSE text ended with LF) with the framing's line endings and write sizes."""
        framing = self._framing
        data = bytes(data)
        if framing.line_ending != b"\n":
            # Events are compact JSON: an LF in them is a line ending, never part of a value.
            data = data.replace(b"\n", framing.line_ending)
        step = framing.write_bytes or len(data) or 1
        for start in range(0, len(data), step):
            await super().write(data[start : start + step])
            if framing.write_delay_s > 0:
                await asyncio.sleep(framing.write_delay_s)


async def open_stream(
    request: web.Request, headers: Mapping[str, str], framing: StreamFraming | None = None
) -> web.StreamResponse:
    """Start a server-sent event stream with these response headers, framed as ``framing`` says."""
    all_headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", **headers}
    response = (
        _FramedStream(framing, all_headers)
        if framing is not None and framing != StreamFraming()
        else web.StreamResponse(status=200, headers=all_headers)
    )
    await response.prepare(request)
    return response


async def read_body(request: web.Request, flavor: Flavor) -> JSONObject:
    """The request's JSON object body; anything else is the provider's 400."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if flavor == "bedrock":
            raise FakeRequestError("The request body is not a JSON object.", code="ValidationException")
        if flavor == "anthropic":
            raise FakeRequestError("There was an issue with your request body: the body must be a JSON object.")
        if flavor == "google":
            raise FakeRequestError("Invalid JSON payload received. Expected a JSON object.")
        raise FakeRequestError(OPENAI_PARSE_ERROR)
    return body


def random_id(prefix: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """An id like the providers' (``chatcmpl-...``, ``msg_01...``, ``resp_...``)."""
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class FormPart:
    """One part of a ``multipart/form-data`` body: a field, or a file when ``filename`` is set."""

    content: bytes
    filename: str | None = None
    content_type: str = ""

    @property
    def text(self) -> str:
        """The field's value as text."""
        return self.content.decode("utf-8", "replace")


async def read_form(request: web.Request) -> dict[str, FormPart]:
    """The request's ``multipart/form-data`` parts by field name; anything else is OpenAI's 400.

    Parsed from the bytes the recording already read (aiohttp's own reader needs the unread stream).
    """
    content_type = request.headers.get("Content-Type", "")
    boundary = ""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise FakeRequestError(f"Invalid Content-Type header ({content_type}), expected multipart/form-data.")
    raw = await request.read()
    delimiter = b"--" + boundary.encode("latin-1")
    parts: dict[str, FormPart] = {}
    # Each part follows CRLF + delimiter (the first one too, once a CRLF is put before the body).
    for chunk in (b"\r\n" + raw).split(b"\r\n" + delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise FakeRequestError("The multipart body is malformed.")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        params = {}
        for item in disposition.split(";")[1:]:
            key, _, value = item.strip().partition("=")
            params[key.lower()] = value.strip('"')
        if "name" in params:
            parts[params["name"]] = FormPart(content, params.get("filename"), headers.get("content-type", ""))
    return parts
