"""A storage writer's Prometheus metrics: batch sizes, rows stored, retries, dead letters and commit lag.

The writer is not a gRPC service that answers calls, so the per-RPC metrics say nothing about it; these
do. They sit in prometheus_client's process-wide registry and are served on ``CANDELA_METRICS_PORT`` by
:func:`candela_runtime.lifecycle.run`. Labels stay few and bounded (topics, partitions, stores, tables).

Which store failed is not in the exception types (:mod:`candela_ingest.writer.errors` says only how a
store failed), and a ClickHouse error surfaces through the Postgres transaction that wraps it, so the
innermost :func:`store_call` tags the exception with its store and the retry loop reads the tag back.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from candela_ingest.writer.errors import StoreRejected, StoreUnavailable

if TYPE_CHECKING:
    from candela_ingest.writer.batch import ConsumedMessage

_PARTITION = operator.attrgetter("topic", "partition")
_TIMESTAMP = operator.attrgetter("timestamp_ms")
_STORE_ATTRIBUTE = "candela_store"
UNKNOWN_STORE = "unknown"

BATCH_MESSAGES = Histogram(
    "candela_writer_batch_messages",
    "Messages per batch fetched from Kafka, by topic.",
    ["topic"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_BYTES = Histogram(
    "candela_writer_batch_bytes",
    "Bytes (keys and values) per batch fetched from Kafka, by topic.",
    ["topic"],
    buckets=(1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024**2, 4 * 1024**2, 16 * 1024**2, 64 * 1024**2),
)
BATCHES_COMMITTED = Counter(
    "candela_writer_batches_committed", "Batches stored (or dead-lettered) whose offsets were committed.", ["topic"]
)
COMMITS_FAILED = Counter(
    "candela_writer_commits_failed",
    "Stored batches whose offsets were not committed (they are redelivered).",
    ["topic"],
)
COMMIT_LAG = Gauge(
    "candela_writer_commit_lag_seconds",
    "At a partition's last commit: that time minus the Kafka timestamp of the newest message committed.",
    ["topic", "partition"],
)
ROWS_INSERTED = Counter(
    "candela_writer_rows_inserted",
    "Rows inserted into ClickHouse, by table (a retried or redelivered row counts again; ReplacingMergeTree folds it).",
    ["table"],
)
USAGE_COUNTED = Counter(
    "candela_writer_usage_counted", "Requests counted in the Postgres usage totals for the first time."
)
REQUEST_IDS_REUSED = Counter(
    "candela_writer_request_ids_reused",
    "Logs neither stored nor counted because their organization logged their request id before, with another "
    "creation time (Candela-Request-Id reused: the first log of an id wins). Redeliveries count again.",
)
LATE_LOGS = Counter(
    "candela_writer_late_logs",
    "Logs neither counted nor stored because they were created before the ledger horizon "
    "(CANDELA_LEDGER_HORIZON_DAYS): the ledger no longer knows whether they were counted. Redeliveries count again.",
)
LEDGER_PARTITIONS_DROPPED = Counter(
    "candela_writer_ledger_partitions_dropped",
    "Days of the counted_requests ledger dropped because they fell past the ledger horizon.",
)
STORE_ERRORS = Counter(
    "candela_writer_store_errors",
    "Failed store calls, by store and kind (unavailable: retried until it answers; rejected: bounded retries).",
    ["store", "kind"],
)
RETRIES = Counter("candela_writer_retries", "Writes retried after a backoff, by the store that failed.", ["store"])
DEAD_LETTERS = Counter(
    "candela_writer_dead_letters",
    "Messages produced to the dead-letter topic, by source: log_topic (first failure) or dlq_retry (failed again).",
    ["source"],
)
DEAD_LETTERS_RETRIED = Counter(
    "candela_writer_dead_letters_retried", "Dead letters read back from the dead-letter topic and written again."
)
DEAD_LETTERS_PARKED = Counter(
    "candela_writer_dead_letters_parked",
    "Dead letters that used up their retries and were newly parked in Postgres for an operator.",
)


@contextmanager
def store_call(store: str) -> Iterator[None]:
    """Counts a failed call to ``store`` and tags the error with it (an inner call's tag is kept)."""
    try:
        yield
    except (StoreUnavailable, StoreRejected) as err:
        if not hasattr(err, _STORE_ATTRIBUTE):
            setattr(err, _STORE_ATTRIBUTE, store)
            kind = "unavailable" if isinstance(err, StoreUnavailable) else "rejected"
            STORE_ERRORS.labels(store, kind).inc()
        raise


def store_of(error: BaseException) -> str:
    """The store a :func:`store_call` tagged ``error`` with, else ``unknown``."""
    store = getattr(error, _STORE_ATTRIBUTE, UNKNOWN_STORE)
    return store if isinstance(store, str) else UNKNOWN_STORE


def observe_batch(topic: str, batch: Sequence[ConsumedMessage]) -> None:
    """Records the size of a fetched batch, in messages and bytes."""
    BATCH_MESSAGES.labels(topic).observe(len(batch))
    BATCH_BYTES.labels(topic).observe(sum(message.size for message in batch))


def observe_commit(batch: Sequence[ConsumedMessage], now_s: float | None = None) -> None:
    """Records a committed batch and, per partition, how old its newest message was at the commit.

    A message without a Kafka timestamp (``None`` or negative: the broker kept none) leaves the gauge as is.
    """
    committed_at = time.time() if now_s is None else now_s
    newest: dict[tuple[str, int], int] = {}
    topics: set[str] = set()
    # A batch holds a few runs of one partition's messages (one per fetch), told apart in C (groupby).
    for key, run in groupby(batch, _PARTITION):
        topics.add(key[0])
        stamp = max((stamp for stamp in map(_TIMESTAMP, run) if stamp is not None and stamp >= 0), default=None)
        if stamp is not None:
            newest[key] = max(newest.get(key, stamp), stamp)
    for (topic, partition), stamp in newest.items():
        COMMIT_LAG.labels(topic, str(partition)).set(max(committed_at - stamp / 1000, 0.0))
    for topic in topics:
        BATCHES_COMMITTED.labels(topic).inc()
