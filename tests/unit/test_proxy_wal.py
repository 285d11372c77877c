"""The proxy's write-ahead log and the shipper around it: group commit, recovery after a kill, a full spool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from candela.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from candela_proxy import wal as wal_module
from candela_proxy.shipping import LogShipper, request_bytes
from candela_proxy.wal import GroupCommit, WriteAheadLog
from tests.factories import ingest_record

pytestmark = pytest.mark.unit


def _record(request_id: str, body: bytes = b"{}") -> ingest_service_pb2.IngestRecord:
    return ingest_record(request_id=request_id, organization_id="org", request_body=body)


def test_records_come_back_in_order_and_a_damaged_tail_is_skipped(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    first = wal.write([b"one", b"two"])
    assert wal.write([b"three"]) == first, "groups go to the open segment"
    wal.close(settled=lambda _: False)
    segment = tmp_path / f"{first:016d}.wal"
    assert WriteAheadLog.read(segment) == [b"one", b"two", b"three"]
    # A crash mid-write: a whole frame header whose bytes are garbled, then a torn one.
    with segment.open("ab") as torn:
        torn.write(b"\x00\x00\x00\x04\x00\x00\x00\x00four\x00\x00")
    assert WriteAheadLog.read(segment) == [b"one", b"two", b"three"]
    assert WriteAheadLog(tmp_path).leftovers == [segment]


def test_segments_rotate_and_settled_ones_are_deleted(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_max_bytes=16)
    segments = [wal.write([b"x" * 20]) for _ in range(3)]
    assert len(set(segments)) == 3
    assert wal.sealed == set(segments[:2])
    wal.collect(segments[:1], truncate_active=False)
    wal.close(settled=lambda seq: seq != segments[1])
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{segments[1]:016d}.wal"]


def test_a_batch_is_framed_from_its_records_bytes_exactly_as_protobuf_would() -> None:
    # Bodies around each varint length boundary (1, 2 and 3 bytes), so every frame length is exercised.
    records = [_record(f"r{size}", b"x" * size) for size in (0, 1, 90, 127, 128, 300, 16_383, 16_384, 70_000)]
    payloads = [record.SerializeToString() for record in records]
    expected = ingest_service_pb2.IngestRequest(records=records).SerializeToString()
    assert request_bytes(payloads) == expected
    assert list(ingest_service_pb2.IngestRequest.FromString(request_bytes(payloads)).records) == records
    assert request_bytes([]) == b""


async def test_concurrent_records_share_group_commits(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    writes: list[int] = []
    handed: list[tuple[int, list[str]]] = []
    original = wal.write

    def counted(payloads: Any) -> int:
        writes.append(len(payloads))
        return original(payloads)

    wal.write = counted  # type: ignore[method-assign]
    commits: GroupCommit[str] = GroupCommit(wal, str.encode, lambda seq, items: handed.append((seq, items)))
    commits.start()
    waits = [commits.add(f"record-{index}") for index in range(200)]
    await asyncio.gather(*(asyncio.shield(wait) for wait in waits))
    await commits.stop()
    assert sum(writes) == 200
    assert len(writes) < 10, "one fsync serves every record collected while the previous one ran"
    assert [item for _, items in handed for item in items] == [f"record-{index}" for index in range(200)]
    segment = handed[0][0]
    assert WriteAheadLog.read(tmp_path / f"{segment:016d}.wal") == [f"record-{i}".encode() for i in range(200)]
    commits.settle(segment, 200)
    commits.close()
    assert _files(tmp_path) == []


def _files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def test_a_failing_disk_releases_requests_and_is_reported(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)

    def broken(payloads: Any) -> int:
        raise OSError(28, "No space left on device")

    wal.write = broken  # type: ignore[method-assign]
    handed: list[tuple[int, list[str]]] = []
    commits: GroupCommit[str] = GroupCommit(wal, str.encode, lambda seq, items: handed.append((seq, items)))
    commits.start()
    await asyncio.wait_for(asyncio.shield(commits.add("kept in memory")), 5)
    await commits.stop()
    assert handed == [(0, ["kept in memory"])]
    assert "No space left on device" in commits.failure


async def test_a_stalled_disk_does_not_hang_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "STALL_S", 0.1)
    wal = WriteAheadLog(tmp_path)
    disk = threading.Event()
    original = wal.write

    def stalled(payloads: Any) -> int:
        disk.wait(10)
        return original(payloads)

    wal.write = stalled  # type: ignore[method-assign]
    handed: list[tuple[int, list[str]]] = []
    commits: GroupCommit[str] = GroupCommit(wal, str.encode, lambda seq, items: handed.append((seq, items)))
    commits.start()
    await asyncio.wait_for(asyncio.shield(commits.add("first")), 5)
    assert "stalled" in commits.failure
    assert commits.add("while stalled").done(), "new logs bypass the stalled disk"
    assert handed == [(0, ["first"]), (0, ["while stalled"])]
    disk.set()
    await _until(lambda: not commits.failure, "the disk to answer")
    await asyncio.wait_for(asyncio.shield(commits.add("after")), 5)
    await commits.stop()
    commits.close()
    assert handed[-1][0] != 0, "the disk is used again once it answers"


class Ingest(ingest_service_pb2_grpc.IngestServiceServicer):
    """Refuses (UNAVAILABLE) until ``available``; then keeps every record it is sent."""

    def __init__(self) -> None:
        self.available = True
        self.received: list[str] = []

    async def Ingest(
        self, request: ingest_service_pb2.IngestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_service_pb2.IngestResponse:
        if not self.available:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")
        self.received.extend(item.record.request_id for item in request.records)
        return ingest_service_pb2.IngestResponse(accepted_count=len(request.records))


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[Ingest, grpc.aio.Channel]]:
    servicer = Ingest()  # type: ignore[abstract]
    server = grpc.aio.server()
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close(None)
        await server.stop(None)


def _shipper(channel: grpc.aio.Channel, tmp_path: Path, **options: Any) -> LogShipper:
    settings: dict[str, Any] = {
        "queue_size": 1000,
        "batch_size": 10,
        "max_batch_bytes": 1 << 20,
        "flush_interval_s": 0.05,
        "spool_dir": tmp_path / "spool",
        "send_timeout_s": 1.0,
        "wal_dir": tmp_path / "wal",
        **options,
    }
    return LogShipper(channel, "service-token", **settings)


async def _until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _wal_bytes(tmp_path: Path) -> int:
    return sum(path.stat().st_size for path in (tmp_path / "wal").glob("*.wal"))


async def test_logs_of_a_killed_shipper_are_resent_by_the_next(
    ingest: tuple[Ingest, grpc.aio.Channel], tmp_path: Path
) -> None:
    servicer, channel = ingest
    # Never flushed within the test: the records sit in memory, as at a SIGKILL under load.
    killed = _shipper(channel, tmp_path, flush_interval_s=60.0, batch_size=1000)
    killed.start()
    waits = [killed.submit(_record(f"r{index}")) for index in range(25)]
    await asyncio.gather(*(asyncio.shield(wait) for wait in waits if wait is not None))
    assert servicer.received == []
    assert killed._commits is not None
    for task in [*killed._tasks, killed._commits._task]:
        assert task is not None
        task.cancel()  # the process dies: no stop(), nothing flushed
    await asyncio.sleep(0)
    killed._commits.close()  # only closes the file, as the kernel would: nothing in it was settled
    killed._spool.close()
    assert _wal_bytes(tmp_path) > 0

    successor = _shipper(channel, tmp_path)
    successor.start()
    try:
        await _until(lambda: len(servicer.received) == 25, "the resent logs")
        assert servicer.received == [f"r{index}" for index in range(25)]
        # Acknowledged, a segment is deleted by the group commit's next pass (in a thread): soon, not at once.
        await _until(lambda: _wal_bytes(tmp_path) == 0, "the resent leftovers to leave the WAL")
        durable = successor.submit(_record("after"))
        assert durable is not None
        await asyncio.shield(durable)
        await _until(lambda: servicer.received[-1:] == ["after"], "the next log")
        await _until(lambda: _wal_bytes(tmp_path) == 0, "the acknowledged log to leave the WAL")
    finally:
        await successor.stop(5.0)
    assert _files(tmp_path / "wal") == []
    assert not [path for path in _files(tmp_path / "spool") if path.suffix == ".seg"]


async def test_leftovers_larger_than_the_spool_are_resent_and_the_successor_is_healthy(
    ingest: tuple[Ingest, grpc.aio.Channel], tmp_path: Path
) -> None:
    servicer, channel = ingest
    wal = WriteAheadLog(tmp_path / "wal")
    wal.write([_record(f"r{index}", b"x" * 500).SerializeToString() for index in range(60)])
    wal.close(settled=lambda _: False)  # the process died with all 60 unsent: 30 KB, the spool takes 2 KB
    successor = _shipper(channel, tmp_path, spool_max_bytes=2000, hold_when_spool_full=True)
    assert successor.at_risk == "", "a leftover is no reason to refuse requests"
    successor.start()
    try:
        await _until(lambda: len(servicer.received) == 60, "every leftover log")
        await _until(lambda: _wal_bytes(tmp_path) == 0, "the resent segment to leave the WAL")
        assert successor.at_risk == ""
    finally:
        await successor.stop(5.0)
    assert sorted(servicer.received, key=lambda rid: int(rid[1:])) == [f"r{index}" for index in range(60)]
    assert _files(tmp_path / "wal") == []


async def test_a_full_spool_drops_by_default_and_says_so(
    ingest: tuple[Ingest, grpc.aio.Channel], tmp_path: Path
) -> None:
    servicer, channel = ingest
    servicer.available = False
    shipper = _shipper(channel, tmp_path, spool_max_bytes=2000)
    shipper.start()
    try:
        for index in range(40):
            shipper.submit(_record(f"r{index}", b"x" * 200))
            await asyncio.sleep(0.01)
        await _until(lambda: shipper.dropped > 0, "a dropped batch")
        assert "log spool full" in shipper.at_risk
        servicer.available = True
        await _until(lambda: not shipper.at_risk, "the spool to free room")
    finally:
        await shipper.stop(5.0)
    assert 0 < len(servicer.received) < 40


async def test_a_full_spool_holds_logs_when_refusing(ingest: tuple[Ingest, grpc.aio.Channel], tmp_path: Path) -> None:
    servicer, channel = ingest
    servicer.available = False
    shipper = _shipper(channel, tmp_path, spool_max_bytes=2000, hold_when_spool_full=True)
    shipper.start()
    try:
        for index in range(40):
            shipper.submit(_record(f"r{index}", b"x" * 200))
            await asyncio.sleep(0.01)
        await _until(lambda: bool(shipper.at_risk), "the spool to fill")
        assert shipper.dropped == 0
        servicer.available = True
        await _until(lambda: len(servicer.received) == 40, "every held log")
        await _until(lambda: not shipper.at_risk, "the spool to free room")
    finally:
        await shipper.stop(5.0)
    assert sorted(servicer.received, key=lambda rid: int(rid[1:])) == [f"r{index}" for index in range(40)]
    assert servicer.received == [f"r{index}" for index in range(40)], "held logs keep their order"


async def test_a_full_spool_stays_at_risk_until_its_backlog_has_a_place(
    ingest: tuple[Ingest, grpc.aio.Channel], tmp_path: Path
) -> None:
    """Once healthy again, the shipper stays so: a backlog bigger than the spool does not refill it behind replay."""
    servicer, channel = ingest
    servicer.available = False
    shipper = _shipper(channel, tmp_path, spool_max_bytes=2000, hold_when_spool_full=True, batch_size=2)
    shipper.start()
    try:
        for index in range(40):  # at once: four times what the spool holds waits in the queue
            shipper.submit(_record(f"r{index}", b"x" * 200))
        await _until(lambda: bool(shipper.at_risk), "the spool to fill")
        servicer.available = True
        at_risk: list[bool] = []
        deadline = asyncio.get_running_loop().time() + 10.0
        while len(servicer.received) < 40 or shipper.at_risk:
            assert asyncio.get_running_loop().time() < deadline, "timed out waiting for every held log"
            at_risk.append(bool(shipper.at_risk))
            await asyncio.sleep(0.002)
    finally:
        await shipper.stop(5.0)
    healthy_from = at_risk.index(False) if False in at_risk else len(at_risk)
    runs = [flag for index, flag in enumerate(at_risk) if index == 0 or at_risk[index - 1] != flag]
    assert not any(at_risk[healthy_from:]), f"at risk again after it had ended (a health check that flaps): {runs}"
    assert servicer.received == [f"r{index}" for index in range(40)]
