"""AWS's binary event-stream framing (``application/vnd.amazon.eventstream``, Bedrock's ConverseStream and
InvokeModelWithResponseStream): relayed to the client untouched, message by message as each arrives, while
botocore's own parser reads the usage out of it.

Each message is ``total length | headers length | prelude CRC | headers | payload | message CRC``. The
relay cuts the bytes at message boundaries (the prelude's total length) and writes each whole message as
soon as its last byte has arrived, exactly as received. The message that ends the stream (Converse's
``metadata``, the ``chunk`` holding Anthropic's ``message_stop`` / ``amazon-bedrock-invocationMetrics``, or
an exception) and whatever follows reach the client only once the log is durable, as the end of an SSE
stream does. A stream whose framing cannot be read (a bad length or CRC) is still relayed byte for byte;
it is logged without usage.

Usage: Converse's ``metadata`` event (``usage``: inputTokens, outputTokens, cacheReadInputTokens,
cacheWriteInputTokens) and ``messageStop`` (``stopReason``); an InvokeModel stream's ``chunk`` events carry
the model's own events base64-encoded: Anthropic's ``message_start`` / ``message_delta`` usage, else the
``amazon-bedrock-invocationMetrics`` token counts Bedrock adds to the last chunk (any model family).

The log keeps the stream readable: one ``event: <:event-type>`` / ``data: <payload>`` block per message,
like server-sent events, with a ``chunk``'s base64 ``bytes`` decoded to the model's JSON event.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
import time
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from candela_proxy.exchange import Exchange
from candela_proxy.providers import Provider
from candela_proxy.record import Recorder
from candela_proxy.response_usage import ResponseFacts, StreamFacts
from candela_proxy.response_usage import reported_count as _count

logger = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"
_PRELUDE: Final = struct.Struct(">II")
# The smallest message (no headers, no payload) and the largest botocore accepts (headers + payload + framing).
_MIN_MESSAGE: Final = 16
_MAX_MESSAGE: Final = 16 + 128 * 1024 + 24 * 1024 * 1024


class MessageSplitter:
    """Cuts a byte stream into whole event-stream messages (by their preludes), as the bytes arrive."""

    __slots__ = ("_pending", "broken")

    def __init__(self) -> None:
        self._pending = bytearray()
        self.broken = False
        """A prelude gave an impossible length: the rest is no longer cut (it is relayed as it comes)."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The messages ``chunk`` completes (or, once broken, the raw bytes as one piece)."""
        if self.broken:
            return [chunk] if chunk else []
        self._pending += chunk
        messages: list[bytes] = []
        offset = 0
        while len(self._pending) - offset >= _PRELUDE.size:
            total, _ = _PRELUDE.unpack_from(self._pending, offset)
            if not _MIN_MESSAGE <= total <= _MAX_MESSAGE:
                self.broken = True
                messages.append(bytes(self._pending[offset:]))
                self._pending.clear()
                return messages
            if len(self._pending) - offset < total:
                break
            messages.append(bytes(self._pending[offset : offset + total]))
            offset += total
        del self._pending[:offset]
        return messages

    def finish(self) -> bytes:
        """Whatever the stream ended with that is no whole message."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest


class EventStreamFacts:
    """Reads usage and the finish reason from whole messages (botocore's parser), and renders them for the log."""

    def __init__(self) -> None:
        self.facts = ResponseFacts()
        self._anthropic = StreamFacts(Provider.ANTHROPIC)
        self._metrics: dict[str, Any] | None = None
        self._parser = EventStreamBuffer()
        self.rendered: list[bytes] = []
        self.stream_error = ""
        """The exception a stream ended with (``modelStreamErrorException: <message>``), or ""."""

    def observe(self, message: bytes) -> bool:
        """Consumes one message; True when it ends the stream (the client gets it once the log is durable)."""
        try:
            self._parser.add_data(message)
            parsed = next(iter(self._parser))
        except (ParserError, StopIteration):
            self._parser = EventStreamBuffer()
            self.rendered.append(b"event: unparsed\ndata: " + base64.b64encode(message) + b"\n\n")
            return False
        return self._message(parsed)

    def observe_raw(self, data: bytes) -> None:
        """Bytes that are no whole message (a broken framing, a cut-off end): logged as base64."""
        if data:
            self.rendered.append(b"event: unparsed\ndata: " + base64.b64encode(data) + b"\n\n")

    def finish(self) -> ResponseFacts:
        """The facts: Anthropic's own usage when the stream carried it, else Bedrock's invocation metrics."""
        anthropic = self._anthropic.facts
        if anthropic.has_usage:
            self.facts.has_usage = True
            for name in ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens"):
                setattr(self.facts, name, getattr(anthropic, name))
            self.facts.usage_clamped = self.facts.usage_clamped or anthropic.usage_clamped
        elif self._metrics is not None:
            apply_invocation_metrics(self.facts, self._metrics)
        self.facts.finish_reason = self.facts.finish_reason or anthropic.finish_reason
        return self.facts

    def _message(self, message: EventStreamMessage) -> bool:
        headers = message.headers
        message_type = str(headers.get(":message-type", "event"))
        kind = str(headers.get(":event-type") or headers.get(":exception-type") or "")
        payload = message.payload
        try:
            document = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            document = None
        if message_type != "event" or not isinstance(document, dict):
            self.rendered.append(_block(kind or message_type, payload))
            if message_type == "event":
                return False
            message_text = document.get("message") if isinstance(document, dict) else None
            self.stream_error = f"{kind or message_type}: {message_text}" if message_text else kind or message_type
            return True
        if kind == "chunk":
            return self._chunk(document)
        self.rendered.append(_block(kind, payload))
        if kind == "metadata":
            usage = document.get("usage")
            if isinstance(usage, dict):
                apply_converse_usage(self.facts, usage)
            return True
        if kind == "messageStop" and isinstance(document.get("stopReason"), str):
            self.facts.finish_reason = document["stopReason"]
        return False

    def _chunk(self, document: dict[str, Any]) -> bool:
        """An InvokeModel stream's chunk: the model's own event, base64 in ``bytes``."""
        try:
            inner = base64.b64decode(document.get("bytes") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            self.rendered.append(_block("chunk", orjson.dumps(document)))
            return False
        self.rendered.append(_block("chunk", inner))
        try:
            event = orjson.loads(inner)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(event, dict):
            return False
        self._anthropic.observe_json(inner)
        metrics = event.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            self._metrics = metrics
            return True
        return event.get("type") == "message_stop"


def readable(stream: bytes) -> bytes:
    """A whole event stream as the log keeps it (a cached stream replayed, for one)."""
    splitter, reader = MessageSplitter(), EventStreamFacts()
    for message in splitter.feed(stream):
        if splitter.broken:
            reader.observe_raw(message)
        else:
            reader.observe(message)
    reader.observe_raw(splitter.finish())
    return b"".join(reader.rendered)


def _block(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


def apply_converse_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    """Converse's usage: ``inputTokens`` exclude cache reads and writes, Candela's prompt tokens include them."""
    counts = ResponseFacts()
    cache_read = _count(counts, usage.get("cacheReadInputTokens"))
    cache_write = _count(counts, usage.get("cacheWriteInputTokens"))
    facts.has_usage = True
    facts.cache_read_tokens, facts.cache_write_tokens = cache_read, cache_write
    facts.prompt_tokens = _count(counts, usage.get("inputTokens")) + cache_read + cache_write
    facts.completion_tokens = _count(counts, usage.get("outputTokens"))
    facts.usage_clamped = facts.usage_clamped or counts.usage_clamped


def apply_invocation_metrics(facts: ResponseFacts, metrics: dict[str, Any]) -> None:
    """Bedrock's ``amazon-bedrock-invocationMetrics`` (or its X-Amzn-Bedrock-*-Token-Count headers)."""
    counts = ResponseFacts()
    cache_read = _count(counts, metrics.get("cacheReadInputTokenCount"))
    cache_write = _count(counts, metrics.get("cacheWriteInputTokenCount"))
    facts.has_usage = True
    facts.cache_read_tokens, facts.cache_write_tokens = cache_read, cache_write
    facts.prompt_tokens = _count(counts, metrics.get("inputTokenCount")) + cache_read + cache_write
    facts.completion_tokens = _count(counts, metrics.get("outputTokenCount"))
    facts.usage_clamped = facts.usage_clamped or counts.usage_clamped


async def relay_event_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    reply_headers: dict[str, str],
    exchange: Exchange,
    recorder: Recorder,
) -> web.StreamResponse:
    """Writes the event stream to the client message by message as it arrives, reading its usage on the way;
    the message that ends it goes out once the log is durable (see the module's docstring)."""
    exchange.streamed = True
    response = web.StreamResponse(status=upstream.status, headers=reply_headers)
    await response.prepare(request)
    splitter = MessageSplitter()
    reader = EventStreamFacts()
    held: list[bytes] = []
    try:
        async for chunk in upstream.content.iter_any():
            if exchange.first_byte is None:
                exchange.first_byte = time.perf_counter()
            shown: list[bytes] = []
            for message in splitter.feed(chunk):
                if splitter.broken:
                    reader.observe_raw(message)
                    ends = False
                else:
                    ends = reader.observe(message)
                if held or ends:
                    held.append(message)
                else:
                    shown.append(message)
            if shown:
                data = b"".join(shown)
                exchange.response_chunks.append(data)
                await response.write(data)
        if tail := splitter.finish():
            reader.observe_raw(tail)
            held.append(tail)
        exchange.response_chunks += held
        exchange.facts = reader.finish()
        exchange.response_log = b"".join(reader.rendered)
        if reader.stream_error:
            # Bounded: the record's metadata has a size limit, and the message is the provider's text.
            exchange.error = f"the provider ended the stream with {reader.stream_error[:1000]}"
        exchange.complete = True
        await recorder.log_durably(exchange)
        if held:
            await response.write(b"".join(held))
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        exchange.error = "client disconnected mid-stream"
        logger.info("request %s: %s", exchange.request_id, exchange.error)
    except (aiohttp.ClientError, TimeoutError) as err:
        exchange.error = f"upstream failed mid-stream: {type(err).__name__}: {err}"
        logger.warning("request %s: %s", exchange.request_id, exchange.error)
    finally:
        if exchange.record is None:
            # Cut short: what arrived counts, and is logged as it was read.
            reader.observe_raw(splitter.finish())
            exchange.facts = reader.finish()
            exchange.response_log = b"".join(reader.rendered)
    return response
