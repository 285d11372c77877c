"""The on-disk log spool: durable appends, ordered replay, torn tails, restarts, and its bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from candela_proxy.cache import CachedAnswer
from candela_proxy.spool import Spool

pytestmark = pytest.mark.unit


def _drain(spool: Spool) -> list[bytes]:
    seen: list[bytes] = []
    while (segment := spool.oldest()) is not None:
        seen += spool.read(segment)
        spool.delete(segment)
    return seen


def test_batches_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_max_bytes=64)
    batches = [f"batch-{index}".encode() * 5 for index in range(10)]
    for batch in batches:
        assert spool.append(batch)
    assert spool.segment_count() > 1
    assert _drain(spool) == batches
    spool.close()
    assert spool.is_empty()
    assert list(tmp_path.iterdir()) == []


def test_a_new_process_replays_what_the_last_one_left(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20)
    first.append(b"one")
    first.append(b"two")
    first.close()
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert not second.is_empty()
    second.append(b"three")
    assert _drain(second) == [b"one", b"two", b"three"]
    second.close()


def test_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"whole")
    spool.close()
    segment = next(tmp_path.iterdir())
    with segment.open("ab") as torn:
        torn.write(b"\x00\x00\x01\x00partial")
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert _drain(reopened) == [b"whole"]
    reopened.close()


def test_a_full_spool_refuses_instead_of_growing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    assert spool.append(b"x" * 60)
    assert not spool.append(b"x" * 60)
    assert spool.size_bytes == 64
    spool.close()


def test_cached_answers_round_trip_byte_for_byte() -> None:
    answer = CachedAnswer(
        status=200,
        content_type="text/event-stream; charset=utf-8",
        body=b"data: {}\n\n\x00\xff",
        streamed=True,
        facts={"prompt_tokens": 3},
        cost_usd="0.000123",
    )
    assert CachedAnswer.decode(answer.encode()) == answer
