"""Server-sent events, split incrementally as their bytes arrive, whatever the line endings.

The SSE spec ends a line with CRLF, LF or CR, and an event with a blank line; many servers send CRLF, some
CR. :class:`EventSplitter` hands over each event the moment its blank line has arrived (never waiting for
the next chunk), as the exact bytes the server sent, so a relay that drops an event forwards every other
byte untouched.

One case cannot be decided at once: an event whose blank line ends in CR at the end of a chunk may be
followed by the LF of a CRLF. The event is handed over at the CR (a CR-only server would otherwise see each
event held until the next one), and that LF, when it comes, is handed over alone as :data:`CONTINUATION`:
it belongs to the event before it (dropped with it, forwarded with it).
"""

from __future__ import annotations

from typing import Final

CONTINUATION: Final = b"\n"
"""The LF completing the CRLF of the event handed over before it (see the module's docstring)."""


class EventSplitter:
    """Splits a byte stream into SSE events, each handed over as soon as its blank line arrives.

    Every byte fed comes back exactly once, in order: in an event, as a :data:`CONTINUATION`, or (an event
    the stream never ended) from :meth:`finish`. A blank line at an event's start stays with the event
    after it.
    """

    __slots__ = ("_after_cr", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events ``chunk`` completes (bytes as received, blank line included), in order."""
        if not chunk:
            return []
        events: list[bytes] = []
        if self._after_cr:
            self._after_cr = False
            if chunk[0] == 0x0A:
                events.append(CONTINUATION)
                chunk = chunk[1:]
        # An event's end can start at the last byte held (a CR or LF waiting for its pair), never earlier:
        # the held bytes had no blank line in them.
        position = len(self._pending) - 1 if self._pending else 0
        data = self._pending + chunk if self._pending else chunk
        begin = 0
        if b"\r" not in data:
            # LF only, what most servers send: each blank line is two LFs.
            while (found := data.find(b"\n\n", position)) >= 0:
                events.append(data[begin : found + 2])
                begin = position = found + 2
        else:
            while (end := _event_end(data, position)) >= 0:
                events.append(data[begin:end])
                begin = position = end
        self._pending = data[begin:]
        if events and begin == len(data) and events[-1][-1] == 0x0D:
            self._after_cr = True
        return events

    def finish(self) -> bytes:
        """The bytes of an event the stream ended without a blank line (empty when there are none)."""
        tail, self._pending = self._pending, b""
        self._after_cr = False
        return tail


def _event_end(data: bytes, position: int) -> int:
    """Where the first blank line at or after ``position`` ends, or -1: the first line ending (CRLF, CR or
    LF) followed at once by another. A CRLF is one ending, never a CR and then an LF."""
    size = len(data)
    next_cr = data.find(b"\r", position)
    next_lf = data.find(b"\n", position)
    while True:
        # Each find runs again only once passed, so a stream of many CR-only lines is scanned once.
        if 0 <= next_cr < position:
            next_cr = data.find(b"\r", position)
        if 0 <= next_lf < position:
            next_lf = data.find(b"\n", position)
        if next_cr < 0 and next_lf < 0:
            return -1
        at = next_lf if next_cr < 0 or 0 <= next_lf < next_cr else next_cr
        line_end = at + 2 if data[at] == 0x0D and data[at + 1 : at + 2] == b"\n" else at + 1
        if line_end >= size:
            return -1
        following = data[line_end]
        if following == 0x0A:
            return line_end + 1
        if following == 0x0D:
            return line_end + 2 if data[line_end + 1 : line_end + 2] == b"\n" else line_end + 1
        position = line_end


def event_data(event: bytes) -> bytes | None:
    """The event's data (its ``data`` fields joined by LF, as the spec dispatches them), or None without any."""
    if event.startswith(b"data: "):
        # The usual shape, one `data: ...` line and its blank line: no need to split the event into lines.
        value = event[6:].rstrip(b"\r\n")
        if b"\n" not in value and b"\r" not in value:
            return value
    values: list[bytes] | None = None
    for line in event.splitlines():
        if not line.startswith(b"data"):
            continue
        if len(line) == 4:
            value = b""
        elif line[4] == 0x3A:  # ":"
            value = line[6:] if line[5:6] == b" " else line[5:]
        else:
            continue  # another field whose name starts with "data"
        if values is None:
            values = [value]
        else:
            values.append(value)
    return None if values is None else b"\n".join(values)


_FINAL_EVENT_TYPES: Final = frozenset({b"message_stop"})
"""Event types that end a stream: Anthropic's ``message_stop``."""


def ends_stream(event: bytes) -> bool:
    """Whether a client takes ``event`` as its stream's end: OpenAI's ``data: [DONE]`` or Anthropic's
    ``message_stop``. SDKs stop reading there, without waiting for the connection's end."""
    if b"[DONE]" not in event and b"message_stop" not in event:
        return False  # most events: one substring scan each, nothing parsed
    if event_data(event) == b"[DONE]":
        return True
    return any(line.startswith(b"event:") and line[6:].strip() in _FINAL_EVENT_TYPES for line in event.splitlines())
