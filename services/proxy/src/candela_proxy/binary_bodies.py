"""Bodies that are not JSON: multipart uploads (audio transcriptions, image edits, files), binary answers
(speech audio, file contents), plain text. The proxy passes them through untouched; this module decides what
their log keeps and what it can read from them.

- A body is *text* when its content type is JSON, server-sent events, ``text/*``, XML or a URL-encoded form;
  anything else (``multipart/form-data``, ``audio/*``, ``image/*``, ``application/octet-stream``, ...) is
  *binary*. Text bodies are logged byte for byte, as before. A binary body is logged byte for byte up to
  ``CANDELA_LOG_BINARY_BODY_MAX_BYTES``; a larger one is replaced in the log by a one-line marker naming its
  content type and size (:func:`omission_marker`), so the log says what was there without holding megabytes
  of audio.
- The record's properties carry the content types (``candela-request-content-type``,
  ``candela-response-content-type``) whenever either body is not JSON, so a reader knows what the bytes are.
- A multipart form's ``model`` field names the model, as a JSON body's ``model`` does
  (:func:`multipart_field`).
"""

from __future__ import annotations

from typing import Final

REQUEST_CONTENT_TYPE: Final = "candela-request-content-type"
RESPONSE_CONTENT_TYPE: Final = "candela-response-content-type"
MARKER_PREFIX: Final = b"[candela: "

_TEXT_TYPES: Final = frozenset(
    {"application/json", "text/event-stream", "application/x-www-form-urlencoded", "application/xml"}
)
# A form field that names the model is short; a longer part is a file, never read as the model.
_MAX_FIELD_BYTES: Final = 1024


def media_type(content_type: str) -> str:
    """The media type alone, lower case: ``multipart/form-data`` of ``multipart/form-data; boundary=x``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    """Whether a body of this content type is JSON (``application/json``, ``application/*+json``).

    An absent content type counts as JSON: SDKs and scripts that post JSON without saying so are common,
    and such a body is parsed (and refused when it is not JSON) as it always was.
    """
    kind = media_type(content_type)
    return not kind or kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def is_text(content_type: str) -> bool:
    """Whether a body of this content type is text, logged whole whatever its size."""
    kind = media_type(content_type)
    return is_json(content_type) or kind in _TEXT_TYPES or kind.startswith("text/") or kind.endswith("+xml")


def omission_marker(content_type: str, size: int, limit: int) -> bytes:
    """What the log holds instead of a binary body above ``limit`` bytes."""
    kind = media_type(content_type) or "unknown content type"
    return (
        f"[candela: {kind} body of {size} bytes not logged: larger than CANDELA_LOG_BINARY_BODY_MAX_BYTES"
        f" ({limit} bytes)]"
    ).encode()


def loggable(body: bytes, content_type: str, limit: int) -> bytes:
    """The bytes the log keeps of ``body``: all of it, or the marker for a binary body above ``limit``."""
    if len(body) <= limit or is_text(content_type):
        return body
    return omission_marker(content_type, len(body), limit)


def content_type_properties(request_content_type: str, response_content_type: str) -> dict[str, str]:
    """The record's content-type properties: both content types when either body is not JSON (or SSE)."""
    if is_json(request_content_type) and (
        not response_content_type
        or is_json(response_content_type)
        or media_type(response_content_type) == "text/event-stream"
    ):
        return {}
    properties = {}
    if request_content_type:
        properties[REQUEST_CONTENT_TYPE] = request_content_type[:256]
    if response_content_type:
        properties[RESPONSE_CONTENT_TYPE] = response_content_type[:256]
    return properties


def multipart_field(body: bytes, content_type: str, name: str) -> str:
    """The value of the form field ``name`` (not a file) in a ``multipart/form-data`` body, or "".

    Reads part headers only until the field is found; a file part's bytes are skipped with one search
    for the next boundary, never copied. A malformed body gives "" (the provider judges it).
    """
    if media_type(content_type) != "multipart/form-data":
        return ""
    boundary = _boundary(content_type)
    if not boundary:
        return ""
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    wanted = f'name="{name}"'.encode()
    while position != -1:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":  # the closing delimiter
            return ""
        headers_end = body.find(b"\r\n\r\n", start)
        if headers_end == -1:
            return ""
        headers = body[start:headers_end].lower()
        following = body.find(b"\r\n" + delimiter, headers_end + 4)
        if following == -1:
            return ""
        if wanted in headers and b"filename=" not in headers:
            value = body[headers_end + 4 : following]
            if len(value) > _MAX_FIELD_BYTES:
                return ""
            return value.decode("utf-8", "replace").strip()
        position = following + 2
    return ""


def _boundary(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return ""
