"""Exact cost by default: an OpenAI-format stream is asked for its usage chunk, which a client that did not
ask for it never sees.

OpenAI reports a stream's tokens only with ``stream_options.include_usage``: a last chunk with
``"choices": []`` and the ``usage`` (every other chunk then carries ``"usage": null``). Candela adds the
option to chat completions and legacy completions streams (the only OpenAI endpoints that take it; the
Responses API always reports usage in ``response.completed``) and drops that chunk on the way back, so the
stream is priced and the client reads the same chunks. A client that set ``include_usage`` itself gets its
choice: ``true`` and it sees the chunk, ``false`` and its request goes out untouched (and is logged without
tokens). ``Candela-Stream-Usage: false`` turns the injection off.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from candela_proxy.sse import CONTINUATION, event_data

STREAM_USAGE_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
"""OpenAI endpoints whose streams carry a usage chunk on request."""

# A usage-only chunk has an empty choices array; no other chunk does, so only these are parsed.
_EMPTY_CHOICES: Final = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def usage_requested(document: dict[str, Any]) -> dict[str, Any] | None:
    """``document`` asking for the usage chunk, or None when it goes as the client sent it: the client set
    ``include_usage`` itself (true or false), or ``stream_options`` is malformed (the provider's own 400)."""
    options = document.get("stream_options")
    if options is None:
        requested: dict[str, Any] = {"include_usage": True}
    elif isinstance(options, dict) and options.get("include_usage") is None:
        requested = {**options, "include_usage": True}
    else:
        return None
    return {**document, "stream_options": requested}


def is_usage_chunk(event: bytes) -> bool:
    """Whether an SSE event is OpenAI's usage-only chunk (``"choices": []`` and a ``usage`` object)."""
    data = event_data(event)
    if data is None or _EMPTY_CHOICES.search(data) is None:
        return False
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("choices") == [] and isinstance(document.get("usage"), dict)


class UsageChunkFilter:
    """Drops the usage-only chunk from a stream's events, passing every other byte as it came."""

    __slots__ = ("_dropped_last",)

    def __init__(self) -> None:
        self._dropped_last = False

    def keep(self, events: list[bytes]) -> list[bytes]:
        """Those of ``events`` (from :class:`~candela_proxy.sse.EventSplitter`) the client should get."""
        kept: list[bytes] = []
        for event in events:
            if event == CONTINUATION:
                # The LF of the CRLF ending the event before it: goes (or not) with that event.
                if not self._dropped_last:
                    kept.append(event)
                continue
            self._dropped_last = is_usage_chunk(event)
            if not self._dropped_last:
                kept.append(event)
        return kept

    def keep_tail(self, tail: bytes) -> bytes:
        """The unterminated bytes a stream ended with, unless they are the usage chunk."""
        return b"" if is_usage_chunk(tail) else tail
