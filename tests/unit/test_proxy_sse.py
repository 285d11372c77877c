"""The SSE event splitter, and the usage chunk Candela asks OpenAI-format streams for and hides again.

Whatever the line endings (LF, CRLF, CR, mixed) and however the bytes are cut into chunks, the splitter
hands over the same events, each as soon as its blank line has arrived, and every byte exactly once.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from candela_proxy.providers import Provider
from candela_proxy.response_usage import StreamFacts
from candela_proxy.sse import CONTINUATION, EventSplitter, ends_stream, event_data
from candela_proxy.stream_usage import UsageChunkFilter, is_usage_chunk, usage_requested

pytestmark = pytest.mark.unit

ENDINGS = (b"\n", b"\r\n", b"\r")
_LINES = st.sampled_from(
    [b'data: {"choices":[{"delta":{"content":"hi"}}]}', b"event: message_delta", b": keep-alive", b"id: 7", b"data:x"]
)


@st.composite
def _events(draw: st.DrawFn) -> list[bytes]:
    """SSE events (one or more field lines and a blank line), each line ended by any of the three endings.

    Never a CR ending a line right before an LF ending the blank line: the two read as one CRLF (the format
    cannot tell them apart), so the event would not end there.
    """
    events = []
    for _ in range(draw(st.integers(1, 6))):
        lines = draw(st.lists(_LINES, min_size=1, max_size=3))
        endings = [draw(st.sampled_from(ENDINGS)) for _ in range(len(lines) + 1)]
        if endings[-2] == b"\r" and endings[-1] == b"\n":
            endings[-1] = b"\r\n"
        events.append(b"".join(line + ending for line, ending in zip(lines, endings, strict=False)) + endings[-1])
    return events


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in chunks, cut at the given offsets."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


def _split(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    """The events of ``chunks`` (a continuation joined to its event) and the unterminated tail."""
    splitter = EventSplitter()
    events: list[bytes] = []
    for chunk in chunks:
        for event in splitter.feed(chunk):
            if event == CONTINUATION:
                assert events, "a continuation follows an event"
                assert events[-1].endswith(b"\r"), "a continuation follows an event ended by CR"
                events[-1] += event
            else:
                events.append(event)
    return events, splitter.finish()


@given(
    st.binary(max_size=60).map(lambda raw: bytes(b"ab:\r\n"[byte % 5] for byte in raw)), st.lists(st.integers(0, 60))
)
def test_any_chunking_of_any_bytes_gives_the_same_events_and_bytes(data: bytes, cuts: list[int]) -> None:
    whole = _split([data])
    chunked = _split(_cut(data, cuts))
    assert chunked == whole
    assert b"".join(whole[0]) + whole[1] == data


@given(_events(), st.lists(st.integers(0, 400)))
def test_events_with_any_line_endings_come_back_as_sent(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events)
    assert _split(_cut(stream, cuts)) == (events, b"")


@given(_events())
def test_each_event_is_handed_over_as_soon_as_its_blank_line_arrives(events: list[bytes]) -> None:
    """Fed one byte at a time, an event comes out with the byte that ends its blank line (the CR of a CRLF:
    a CR alone could end it, so nothing waits for the next byte)."""
    splitter = EventSplitter()
    complete_at = []
    offset = 0
    for event in events:
        offset += len(event)
        complete_at.append(offset - 1 if event.endswith(b"\r\n") else offset)
    stream = b"".join(events)
    handed_over = 0
    for fed in range(1, len(stream) + 1):
        handed_over += sum(1 for event in splitter.feed(stream[fed - 1 : fed]) if event != CONTINUATION)
        assert handed_over == sum(1 for point in complete_at if point <= fed), (fed, events)


def test_a_crlf_cut_between_cr_and_lf_hands_the_event_over_at_the_cr() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\n\r") == [b"data: a\r\n\r"]
    assert splitter.feed(b"\ndata: b\r\n") == [CONTINUATION]
    assert splitter.feed(b"\r\n") == [b"data: b\r\n\r\n"]
    assert splitter.finish() == b""


def test_an_event_the_stream_never_ended_is_the_tail() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2") == [b"data: 1\n\n"]
    assert splitter.finish() == b"data: 2"


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: {}\n\n", b"{}"),
        (b"data: {}\r\n\r\n", b"{}"),
        (b"data:{}\r\r", b"{}"),
        (b"event: ping\ndata: 1\ndata:  2\n\n", b"1\n 2"),
        (b": comment\r\nid: 4\r\n\r\n", None),
        (b"database: x\n\n", None),
        (b"data\n\n", b""),
    ],
)
def test_event_data_joins_the_data_fields(event: bytes, data: bytes | None) -> None:
    assert event_data(event) == data


USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2,"total_tokens":10}}'
DELTA = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}'
DONE = b"data: [DONE]"


@given(
    st.lists(st.sampled_from(ENDINGS), min_size=6, max_size=6),
    st.lists(st.integers(0, 400)),
)
def test_the_usage_chunk_is_hidden_and_every_other_byte_passes_whatever_the_cuts(
    endings: list[bytes], cuts: list[int]
) -> None:
    endings = [
        b"\r\n" if ending == b"\n" and before == b"\r" else ending
        for before, ending in zip([b"", *endings], endings, strict=False)
    ]
    delta, usage, done = (
        line + endings[i] + endings[i + 1] for i, line in zip((0, 2, 4), (DELTA, USAGE, DONE), strict=True)
    )
    hidden = UsageChunkFilter()
    splitter = EventSplitter()
    seen = b"".join(b"".join(hidden.keep(splitter.feed(chunk))) for chunk in _cut(delta + usage + done, cuts))
    assert seen + hidden.keep_tail(splitter.finish()) == delta + done


def test_a_usage_chunk_the_stream_did_not_end_is_hidden_too() -> None:
    assert UsageChunkFilter().keep_tail(USAGE) == b""
    assert UsageChunkFilter().keep_tail(DELTA) == DELTA


@pytest.mark.parametrize(
    ("event", "usage_only"),
    [
        (USAGE + b"\n\n", True),
        (DELTA + b"\n\n", False),
        (b'data: {"choices": [], "usage": null}\n\n', False),
        (b'data: {"choices": [ ], "usage": {"prompt_tokens": 1}}\r\n\r\n', True),
        (b'data: {"choices":[],"usage":{}\n\n', False),  # not JSON
        (DONE + b"\n\n", False),
    ],
)
def test_what_counts_as_the_usage_chunk(event: bytes, usage_only: bool) -> None:
    assert is_usage_chunk(event) is usage_only


@pytest.mark.parametrize(
    ("stream_options", "sent"),
    [
        (None, {"include_usage": True}),
        ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
        ({"include_usage": None}, {"include_usage": True}),
        ({"include_usage": True}, None),  # asked: the client gets its chunk, the body goes untouched
        ({"include_usage": False}, None),  # refused: the client's choice, logged without tokens
        ("yes", None),  # malformed: the provider answers its own 400
    ],
)
def test_usage_is_requested_unless_the_client_chose(stream_options: object, sent: dict[str, object] | None) -> None:
    document = {"model": "m", "stream": True}
    if stream_options is not None:
        document["stream_options"] = stream_options
    requested = usage_requested(document)
    if sent is None:
        assert requested is None
    else:
        assert requested == {**document, "stream_options": sent}
    assert document.get("stream_options") == stream_options, "the client's document is not changed"


@pytest.mark.parametrize("ending", ENDINGS)
def test_stream_usage_is_read_whatever_the_line_endings(ending: bytes) -> None:
    chunk = {"object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    ]
    stream = b"".join(b"data: " + json.dumps(event).encode() + ending * 2 for event in events)
    facts = StreamFacts(Provider.OPENAI)
    for byte in range(len(stream)):
        facts.feed(stream[byte : byte + 1])
    assert (facts.finish().prompt_tokens, facts.facts.completion_tokens, facts.facts.finish_reason) == (9, 2, "stop")


@pytest.mark.parametrize(
    ("event", "final"),
    [
        (b"data: [DONE]\n\n", True),
        (b"data: [DONE]\r\n\r\n", True),
        (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', True),
        (b"event:message_stop\r\ndata: {}\r\n\r\n", True),
        (b'data: {"choices":[{"delta":{"content":"[DONE]"}}]}\n\n', False),
        (b'event: content_block_delta\ndata: {"text":"message_stop"}\n\n', False),
        (b"data: [DONE", False),
    ],
)
def test_the_events_a_client_takes_as_the_end_of_its_stream(event: bytes, final: bool) -> None:
    assert ends_stream(event) is final
