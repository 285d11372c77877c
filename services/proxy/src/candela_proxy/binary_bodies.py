"""Bodies that are not JSON: multipart uploads (audio transcriptions, image edits, files), binary answers
(speech audio, file contents), plain text. The proxy passes them through untouched; this module decides what
their log keeps and what it can read from them.

- A body is *text* when its content type is JSON, server-sent events, ``text/*``, XML or a URL-encoded form;
  anything else (``multipart/form-data``, ``audio/*``, ``image/*``, ``application/octet-stream``, ...) is
  *binary*. Text bodies are logged byte for byte, as before. A binary body is logged byte for byte up to
  ``CANDELA_LOG_BINARY_BODY_MAX_BYTES``; a larger one is replaced in the log by a one-line marker naming its
  content type and size (:func:`omission_marker`), so the log says what was there without holding megabytes
  of audio. A larger multipart form keeps its form fields (model, prompt, language, ...) and loses only its
  files' contents, each replaced by such a marker (:func:`_form_without_files`).
- The record's properties carry the content types (``candela-request-content-type``,
  ``candela-response-content-type``) whenever either body is not JSON, so a reader knows what the bytes are.
- A multipart form's ``model`` field names the model, as a JSON body's ``model`` does
  (:func:`multipart_field`).
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """The bytes the log keeps of ``body``: all of it; for a multipart form above ``limit``, its fields with a
    marker for each file's content; for any other binary body above ``limit``, the marker alone."""
    if len(body) <= limit or is_text(content_type):
        return body
    if media_type(content_type) == "multipart/form-data":
        kept = _form_without_files(body, content_type, limit)
        if kept is not None and len(kept) <= limit:
            return kept
    return omission_marker(content_type, len(body), limit)


def _form_without_files(body: bytes, content_type: str, limit: int) -> bytes | None:
    """``body`` (a ``multipart/form-data`` form) with each file part's content, and any part that is not
    UTF-8 text, replaced by a marker naming its content type and size; every boundary, part header and text
    field is kept byte for byte, so the log still reads as the form it was. None when the body is not a
    well-formed form (the whole body's marker is logged then)."""
    boundary = _boundary(content_type)
    if not boundary:
        return None
    pieces: list[bytes] = []
    copied = 0
    try:
        for headers, begin, end in _form_parts(body, b"--" + boundary.encode("latin-1")):
            content = memoryview(body)[begin:end]
            if b"filename=" not in headers.lower() and _is_utf8(content):
                continue
            pieces += (body[copied:begin], _part_marker(headers, end - begin, limit))
            copied = end
    except _MalformedForm:
        return None
    pieces.append(body[copied:])
    return b"".join(pieces)


def _part_marker(headers: bytes, size: int, limit: int) -> bytes:
    kind = "file"
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type" and value.strip():
            kind = media_type(value.decode("latin-1"))
    return (
        f"[candela: {kind} part of {size} bytes not logged: the body is larger than"
        f" CANDELA_LOG_BINARY_BODY_MAX_BYTES ({limit} bytes)]"
    ).encode()


def _is_utf8(content: memoryview) -> bool:
    try:
        str(content, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    wanted = f'name="{name}"'.encode()
    try:
        for headers, begin, end in _form_parts(body, b"--" + boundary.encode("latin-1")):
            lowered = headers.lower()
            if wanted in lowered and b"filename=" not in lowered:
                if end - begin > _MAX_FIELD_BYTES:
                    return ""
                return body[begin:end].decode("utf-8", "replace").strip()
    except _MalformedForm:
        return ""
    return ""


class _MalformedForm(Exception):
    """A multipart body that does not parse as a form (no boundary line, a part without its end)."""


def _form_parts(body: bytes, delimiter: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each part of a multipart body as (its header block, where its content starts, where it ends), up to
    the closing delimiter; raises _MalformedForm where the body stops being a form. A part's content is
    skipped with one search for the next delimiter, never copied."""
    position = body.find(delimiter)
    if position == -1:
        raise _MalformedForm
    while True:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":  # the closing delimiter
            return
        headers_end = body.find(b"\r\n\r\n", start)
        if headers_end == -1:
            raise _MalformedForm
        following = body.find(b"\r\n" + delimiter, headers_end + 4)
        if following == -1:
            raise _MalformedForm
        yield body[start:headers_end], headers_end + 4, following
        position = following + 2


def _boundary(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return ""
