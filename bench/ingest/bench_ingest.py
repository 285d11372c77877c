"""bench/ingest: logs/s from the Ingest RPC to rows visible in ClickHouse, S3 PUTs per log, p99 freshness.

Starts a test stack (infrastructure + ingest + writer; CANDELA_TEST_KAFKA_ENGINE=s3 for the durable
broker), then:
1. throughput: sends ``--logs`` logs (2 KiB bodies) in batches of ``--batch`` over ``--concurrency`` calls
   and measures the time until every row is visible in ClickHouse (FINAL count);
2. freshness: sends at ``--rate`` logs/s for ``--seconds`` and polls ClickHouse for each sampled request id,
   reporting p50/p99 of (visible - sent).
Each run repeats ``--runs`` times; medians and spreads are printed. PUTs = packed objects written.

    uv run python bench/ingest/bench_ingest.py --logs 100000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from clickhouse_driver import Client

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_runtime.security import service_metadata
from candela_stack import seaweed
from candela_stack.stack import Component, Stack, StackConfig

BODY = b"x" * 2048


def _batch(organization_id: str, size: int) -> tuple[pb.IngestRequest, list[str]]:
    records = []
    ids = []
    now = datetime.now(UTC)
    for _ in range(size):
        record = log_record_pb2.LogRecord(
            request_id=str(uuid.uuid4()), organization_id=organization_id, provider="openai", model="gpt-4o-mini",
            status_code=200, latency_ms=100, cost_usd="0.0001",
        )  # fmt: skip
        record.created_at.FromDatetime(now)
        ids.append(record.request_id)
        records.append(pb.IngestRecord(record=record, request_body=BODY[:1024], response_body=BODY[:1024]))
    return pb.IngestRequest(records=records), ids


def _cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) each stack process has used so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for process in stack.processes():
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[process.name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


async def _organization(stack: Stack) -> str:
    """A new organization (ingest refuses logs of organizations that do not exist)."""
    organization_id = str(uuid.uuid4())
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        await connection.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, 'bench')", uuid.UUID(organization_id)
        )
    finally:
        await connection.close()
    return organization_id


def _count(client: Client, organization_id: str) -> int:
    rows: Any = client.execute(
        "SELECT count() FROM requests WHERE organization_id = %(o)s", {"o": uuid.UUID(organization_id)}
    )
    return int(rows[0][0])


async def throughput(stack: Stack, logs: int, batch: int, concurrency: int) -> tuple[float, float]:
    """(logs/s end to end, S3 PUTs per log)."""
    organization_id = await _organization(stack)
    metadata = service_metadata(stack.service_token)
    requests = [_batch(organization_id, batch)[0] for _ in range(logs // batch)]
    client = Client(host=stack.clickhouse_host, port=stack.clickhouse_port, database=stack.clickhouse_database)
    cpu_before = _cpu_seconds(stack)
    own_before = time.process_time()
    began = time.monotonic()
    async with grpc.aio.insecure_channel(stack.ingest_addr) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        queue: asyncio.Queue[pb.IngestRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        async def sender() -> None:
            while not queue.empty():
                await stub.Ingest(queue.get_nowait(), metadata=metadata, timeout=60)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    acknowledged_s = time.monotonic() - began
    total = batch * len(requests)
    while await asyncio.to_thread(_count, client, organization_id) < total:  # noqa: ASYNC110 - polls another process
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - began
    cpu_after = _cpu_seconds(stack)
    shares = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    shares["bench client"] = time.process_time() - own_before
    writers = [seconds for name, seconds in shares.items() if name.startswith("writer")]
    if len(writers) > 1:
        shares["writers together"] = sum(writers)
    profile = ", ".join(
        f"{name} {seconds / total * 1e6:.0f}" for name, seconds in sorted(shares.items(), key=lambda x: -x[1])
    )
    print(f"  CPU us per log: {profile} (postgres server: not a stack process)")
    client.disconnect()
    s3 = seaweed.client(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    listing = s3.list_objects_v2(Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/")
    print(f"  ingest acknowledged {total:,} logs in {acknowledged_s:.2f}s ({total / acknowledged_s:,.0f} logs/s)")
    return total / elapsed, listing.get("KeyCount", 0) / total


async def freshness(stack: Stack, rate: int, seconds: float) -> tuple[float, float, float]:
    """(p50 s, p99 s, achieved logs/s) from a batch sent to its rows visible, at ``rate`` logs/s (10 batches/s)."""
    organization_id = await _organization(stack)
    metadata = service_metadata(stack.service_token)
    per_batch = max(rate // 10, 1)
    client = Client(host=stack.clickhouse_host, port=stack.clickhouse_port, database=stack.clickhouse_database)
    sent: list[tuple[float, int]] = []
    delays: list[float] = []
    # Built beforehand, so the sender keeps its pace; calls overlap (the rate does not wait on acks).
    batches = [_batch(organization_id, per_batch)[0] for _ in range(int(seconds * 10))]
    async with grpc.aio.insecure_channel(stack.ingest_addr) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        calls: list[asyncio.Task[pb.IngestResponse]] = []

        async def call(request: pb.IngestRequest) -> pb.IngestResponse:
            response: pb.IngestResponse = await stub.Ingest(request, metadata=metadata, timeout=60)
            return response

        began = time.monotonic()
        total = 0
        for request in batches:
            tick = time.monotonic()
            calls.append(asyncio.create_task(call(request)))
            total += per_batch
            sent.append((tick, total))
            visible = await asyncio.to_thread(_count, client, organization_id)
            now = time.monotonic()
            while sent and sent[0][1] <= visible:
                delays.append(now - sent.pop(0)[0])
            await asyncio.sleep(max(0.0, tick + 0.1 - time.monotonic()))
        achieved = total / (time.monotonic() - began)
        await asyncio.gather(*calls)
        while sent:
            visible = await asyncio.to_thread(_count, client, organization_id)
            now = time.monotonic()
            while sent and sent[0][1] <= visible:
                delays.append(now - sent.pop(0)[0])
            await asyncio.sleep(0.02)
    client.disconnect()
    delays.sort()
    return delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))], achieved


async def main() -> None:
    """Runs the benchmark and prints medians and spreads."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--writers", type=int, default=None, help="writer processes (default: the stack's, CANDELA_STACK_WRITERS)"
    )
    args = parser.parse_args()
    overrides: dict[str, Any] = {} if args.writers is None else {"writers": args.writers}
    components = frozenset({Component.INGEST, Component.WRITER, Component.CLICKHOUSE, Component.S3, Component.KAFKA})
    with tempfile.TemporaryDirectory() as data_dir:
        config = StackConfig.for_tests(
            Path(data_dir),
            components=components,
            env={"CANDELA_LOG_LEVEL": "WARNING", "CANDELA_DLQ_RETRY_DELAY_S": "1"},
            **overrides,
        )
        with Stack(config) as stack:
            print(f"broker engine: {config.kafka_engine}; writer processes: {config.writers}")
            rates, puts, p50s, p99s = [], [], [], []
            for run in range(args.runs):
                rate, put = await throughput(stack, args.logs, args.batch, args.concurrency)
                p50, p99, achieved = await freshness(stack, args.rate, args.seconds)
                print(
                    f"run {run + 1}: {rate:,.0f} logs/s, {put:.4f} PUTs/log, freshness at {achieved:,.0f} logs/s "
                    f"p50 {p50:.2f}s p99 {p99:.2f}s"
                )
                rates.append(rate)
                puts.append(put)
                p50s.append(p50)
                p99s.append(p99)
            print(
                f"median {statistics.median(rates):,.0f} logs/s (min {min(rates):,.0f}, max {max(rates):,.0f}); "
                f"{statistics.median(puts):.4f} PUTs/log; freshness at {args.rate}/s p99 median "
                f"{statistics.median(p99s):.2f}s (min {min(p99s):.2f}, max {max(p99s):.2f})"
            )


if __name__ == "__main__":
    asyncio.run(main())
