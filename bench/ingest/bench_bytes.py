"""Bytes per log on each store, for capacity planning (docs/capacity.md): what ingest writes to S3 and to
Kafka for the benchmark's realistic logs, measured with the real packing code.

    uv run python -m bench.ingest.bench_bytes [--logs 20000] [--batch 1000]

The logs are bench_ingest.py's (what the proxy logs for a chat completion, a 1 KiB JSON request and a
1 KiB completion whose text differs per log). Each 1,000-log call is packed by
``candela_ingest.packing.pack_batch`` as ingest packs it: S3 bytes are the packed objects' sizes (bodies
as zstd frames), Kafka bytes are the LogMessages as produced, before and after zstd over each call's
messages (the producer compresses record batches with zstd; a broker stores them compressed). With
``--postgres-dsn`` (a server where it may create a scratch database), also the Postgres bytes per log: the
writers' ledger ``counted_requests`` (one row per request, its day's primary key and index), filled in
20,000-key batches by the writers' own statement. Writes a report to bench/results/bytes-<time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import zstandard

from bench.ingest.bench_ingest import Bodies, _batch
from candela_ingest.packing import pack_batch
from candela_ingest.writer.postgres import _COUNT_REQUESTS
from candela_schema.migrator import apply_postgres

RESULTS = Path(__file__).resolve().parents[1] / "results"


def measure(logs: int, batch: int) -> dict[str, float]:
    """Per-log bytes: raw bodies, S3 objects, Kafka values (plain and zstd), S3 objects per log."""
    bodies = Bodies("json")
    organization_id = str(uuid.uuid4())
    compressor = zstandard.ZstdCompressor(level=3)
    raw = s3 = kafka = kafka_zstd = objects = 0.0
    per_call_s3: list[float] = []
    for _ in range(logs // batch):
        request, _ids = _batch(organization_id, batch, bodies)
        packed = pack_batch(request.records, datetime.now(UTC))
        raw += sum(len(record.request_body) + len(record.response_body) for record in request.records)
        call_s3 = sum(len(item.data) for item in packed.objects)
        s3 += call_s3
        per_call_s3.append(call_s3 / batch)
        objects += len(packed.objects)
        kafka += sum(len(key) + len(value) for key, value in zip(packed.keys, packed.values, strict=True))
        kafka_zstd += len(compressor.compress(b"".join(packed.keys) + b"".join(packed.values)))
    count = (logs // batch) * batch
    return {
        "raw body bytes": raw / count,
        "S3 bytes": s3 / count,
        "S3 bytes, spread of calls (min-max)": max(per_call_s3) - min(per_call_s3),
        "S3 objects": objects / count,
        "Kafka bytes (key + LogMessage)": kafka / count,
        "Kafka bytes, zstd per call": kafka_zstd / count,
    }


async def ledger_bytes_per_log(admin_dsn: str, logs: int, batch: int = 20_000) -> float:
    """Bytes ``counted_requests`` (table, TOAST and indexes) takes per request, in a scratch database."""
    database = f"candela_bench_bytes_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
        await asyncio.to_thread(apply_postgres, dsn)
        connection = await asyncpg.connect(dsn)
        try:
            organization = str(uuid.uuid4())
            now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
            for start in range(0, logs, batch):
                ids = sorted(str(uuid.uuid4()) for _ in range(batch))
                await connection.fetchval(
                    _COUNT_REQUESTS,
                    ",".join(ids),
                    ",".join([organization] * batch),
                    ",".join(str(now_us + start + index) for index in range(batch)),
                )
            await connection.execute("VACUUM ANALYZE counted_requests")
            # The ledger is partitioned by day (migration 0007): its size is its partitions'.
            size = await connection.fetchval(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('counted_requests') WHERE isleaf"
            )
            rows = await connection.fetchval("SELECT count(*) FROM counted_requests")
        finally:
            await connection.close()
        return float(size) / float(rows)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.close()


def main() -> None:
    """Measures and writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--postgres-dsn", help="e.g. postgresql://root@127.0.0.1:5432/postgres (scratch database)")
    parser.add_argument("--ledger-logs", type=int, default=200_000)
    args = parser.parse_args()
    figures = measure(args.logs, args.batch)
    if args.postgres_dsn:
        ledger = asyncio.run(ledger_bytes_per_log(args.postgres_dsn, args.ledger_logs))
        figures[f"Postgres bytes (counted_requests, {args.ledger_logs:,} rows)"] = ledger
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        f"# Bytes per log on each store (bench/ingest/bench_bytes.py, {args.logs:,} logs in {args.batch:,}-log calls)",
        "",
        f"`uv run python -m bench.ingest.bench_bytes --logs {args.logs} --batch {args.batch}"
        + (f" --postgres-dsn {args.postgres_dsn}`" if args.postgres_dsn else "`")
        + f", {stamp}",
        "",
        "| per log | value |",
        "|---|---|",
        *(f"| {name} | {value:,.4f} |" for name, value in figures.items()),
        "",
        "The calls differ little (the S3 spread row: max minus min of the calls' S3 bytes per log), so one",
        "run is the figure. Kafka's zstd row is an estimate of what a broker stores: the producer's own",
        "record batches (aiokafka, zstd) group messages by partition, not by call.",
    ]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bytes-{stamp}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
