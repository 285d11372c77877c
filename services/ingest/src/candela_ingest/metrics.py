"""The IngestService's Prometheus metrics: what each accepted batch held, what was refused, and store latency.

They sit in prometheus_client's process-wide registry, next to the per-RPC counts and latencies of
:mod:`candela_runtime.metrics`, and are served on ``CANDELA_METRICS_PORT``. The per-RPC counters say how
many calls failed; these say how many *records* a batch carried, so an operator can tell a trickle of large
batches from a flood of small ones, and a refused batch of 1,000 logs from a refused batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Histogram

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela_ingest.packing import PackedObject
from candela_ingest.wire.validation import BatchLimits

_STORE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

BATCH_RECORDS = Histogram(
    "candela_ingest_batch_records",
    "Records per accepted Ingest call.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
BATCH_BODY_BYTES = Histogram(
    "candela_ingest_batch_body_bytes",
    "Bytes of packed (zstd-compressed) request and response bodies written to S3 per accepted Ingest call.",
    buckets=(0, 1024, 16 * 1024, 128 * 1024, 1024**2, 8 * 1024**2, 32 * 1024**2, 128 * 1024**2),
)
BATCH_OBJECTS = Histogram(
    "candela_ingest_batch_objects",
    "S3 objects written per accepted Ingest call (bodies are packed: one object per organization).",
    buckets=(0, 1, 2, 5, 10, 25, 50, 100),
)
RECORDS_ACCEPTED = Counter(
    "candela_ingest_records_accepted", "Records acknowledged: bodies durable in S3 and metadata acknowledged by Kafka."
)
UPDATES_ACCEPTED = Counter("candela_ingest_updates_accepted", "Log updates (scores, feedback) acknowledged by Kafka.")
RECORDS_REFUSED = Counter(
    "candela_ingest_records_refused",
    "Records in Ingest calls refused with INVALID_ARGUMENT (the whole call is refused), by reason: "
    "over_limit (too many records or too many bytes), invalid, unknown_organization.",
    ["reason"],
)
BATCHES_READ = Counter(
    "candela_ingest_batches_read",
    "Ingest calls by how their batch was read: c (in C, every record surely valid: the common case) or runtime "
    "(parsed and checked by the protobuf runtime, ~8 us more CPU per record: a record was in doubt, e.g. an id "
    "in upper case or an invalid field).",
    ["reader"],
)
STORE_FAILURES = Counter(
    "candela_ingest_store_failures",
    "Calls answered UNAVAILABLE because a store failed or was too slow, by cause: s3, kafka, timeout.",
    ["cause"],
)
S3_PUT_SECONDS = Histogram(
    "candela_ingest_s3_put_seconds",
    "Time to store one call's packed body objects in S3.",
    buckets=_STORE_SECONDS_BUCKETS,
)
KAFKA_PRODUCE_SECONDS = Histogram(
    "candela_ingest_kafka_produce_seconds",
    "Time for Kafka to acknowledge (acks=all) every message of one call, by kind (logs, updates).",
    ["kind"],
    buckets=_STORE_SECONDS_BUCKETS,
)


def count_accepted(records: int, objects: Sequence[PackedObject]) -> None:
    """Records one acknowledged Ingest call: its records, its S3 objects and their bytes."""
    BATCH_RECORDS.observe(records)
    BATCH_OBJECTS.observe(len(objects))
    BATCH_BODY_BYTES.observe(sum(len(packed.data) for packed in objects))
    RECORDS_ACCEPTED.inc(records)


def refusal_reason(request: pb.IngestRequest, limits: BatchLimits) -> str:
    """Why validation refused ``request``: ``over_limit`` if it broke a count or size limit, else ``invalid``.

    Computed again from the request (only on the refusal path) rather than parsed from the violation texts,
    so rewording a message cannot move a refusal to the wrong reason.
    """
    if len(request.records) > limits.max_batch_records:
        return "over_limit"
    for item in request.records:
        if item.ByteSize() > limits.max_record_bytes or item.record.ByteSize() > limits.max_metadata_bytes:
            return "over_limit"
    return "invalid"
