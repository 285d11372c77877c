"""Configuration of the ingest service and of the storage writers (``CANDELA_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass

from candela_runtime.config import ConfigError, ServiceConfig, env_field
from candela_runtime.failover import MEMBER_RETRY_AFTER_S, Address, parse_members
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES

DEFAULT_TOPIC = "candela.logs.v1"
DEFAULT_DLQ_TOPIC = "candela.logs.dlq.v1"


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """How to reach Kafka; shared by the ingest producer and the writers."""

    kafka_bootstrap: str = env_field("Kafka bootstrap servers, comma-separated host:port.")
    kafka_topic: str = env_field("Topic carrying one LogMessage per logged request.", DEFAULT_TOPIC)
    kafka_compression: str = env_field("Producer compression: zstd, lz4, snappy, gzip or none.", "zstd")
    kafka_request_timeout_ms: int = env_field("Kafka request timeout; also bounds waiting for metadata.", 10_000)
    kafka_delivery_timeout_s: float = env_field(
        "Seconds a produced batch may wait for every acknowledgement (retries included) before it fails "
        "and the broker counts as stalled.",
        30.0,
    )


@dataclass(frozen=True, kw_only=True)
class S3Deadlines:
    """Deadlines of S3 calls (botocore's own), so a stalled S3 server fails a call instead of hanging it."""

    s3_connect_timeout_s: float = env_field("Seconds to open a connection to S3.", 3.0)
    s3_read_timeout_s: float = env_field("Seconds S3 may stay silent during one request before it is retried.", 10.0)
    s3_max_attempts: int = env_field("Attempts at one S3 request (the first included) before it fails.", 2)
    store_probe_interval_s: float = env_field(
        "Seconds between probes of each store (an S3 write of a few bytes, a Kafka metadata round trip): one "
        "past its deadline reports the store stalled while no traffic comes; one that succeeds clears it.",
        5.0,
    )

    def check_deadlines(self) -> None:
        """Fails fast on a deadline that would disable itself (0 or negative: every call stalled, or none)."""
        deadlines = {
            name: getattr(self, name)
            for name in (
                "s3_connect_timeout_s",
                "s3_read_timeout_s",
                "store_probe_interval_s",
                "kafka_delivery_timeout_s",
                "store_timeout_s",
                "kafka_commit_timeout_s",
            )
            if hasattr(self, name)
        }
        bad = [f"CANDELA_{name.upper()}" for name, value in deadlines.items() if not value > 0]
        if self.s3_max_attempts < 1:
            bad.append("CANDELA_S3_MAX_ATTEMPTS")
        if bad:
            raise ConfigError(f"{', '.join(bad)} must be positive")


@dataclass(frozen=True, kw_only=True)
class IngestConfig(ServiceConfig, KafkaSettings, S3Deadlines):
    """Settings of the IngestService process (``python -m candela_ingest``)."""

    s3_endpoint: str = env_field("S3 endpoint URL holding request and response bodies.")
    s3_access_key: str = env_field("S3 access key id.")
    s3_secret_key: str = env_field("S3 secret access key.")
    s3_bucket: str = env_field("Bucket for bodies (objects under bodies/<organization_id>/...).", "candela")
    s3_region: str = env_field("S3 region used to sign requests.", "us-east-1")
    s3_max_concurrency: int = env_field("Concurrent S3 PUTs (worker threads and HTTP connections).", 16)
    max_batch_records: int = env_field("Most records one Ingest call may carry.", 1000)
    max_call_bytes: int = env_field("Most bytes one Ingest call may carry (gRPC message size).", 128 * 1024 * 1024)
    max_record_bytes: int = env_field("Most bytes one record may take, metadata and both bodies.", MAX_RECORD_BYTES)
    max_metadata_bytes: int = env_field(
        "Most bytes of one record's metadata (it travels through Kafka, whose messages are capped at 1 MiB).",
        MAX_RECORD_METADATA_BYTES,
    )
    max_clock_skew_s: float = env_field("How far in the future a record's created_at may lie.", 86_400.0)
    store_timeout_s: float = env_field(
        "Seconds the S3 upload plus Kafka acknowledgement of a batch may take; past it the call is UNAVAILABLE "
        "(the proxy keeps the batch and retries) and the store it waited on counts as stalled.",
        20.0,
    )
    postgres_dsn: str = env_field(
        "Postgres DSN to refuse logs of unknown organizations (cached; a Postgres outage never blocks logs). "
        "Empty: no check.",
        "",
    )

    def __post_init__(self) -> None:
        self.check_deadlines()
        # The proxy admits prompt inputs up to MAX_PROMPT_INPUTS_BYTES and logs them in the metadata: a
        # smaller metadata limit would refuse logs of requests the proxy already answered.
        if self.max_metadata_bytes <= MAX_PROMPT_INPUTS_BYTES:
            raise ConfigError(
                f"CANDELA_MAX_METADATA_BYTES must be above {MAX_PROMPT_INPUTS_BYTES}, the prompt inputs a log may hold"
            )
        # The proxy leaves bodies out of a log (marking it) only above MAX_RECORD_BYTES: below it, it counts on
        # ingest to take the log whole.
        if self.max_record_bytes < MAX_RECORD_BYTES:
            raise ConfigError(f"CANDELA_MAX_RECORD_BYTES must be at least {MAX_RECORD_BYTES}, what the proxy sends")


@dataclass(frozen=True, kw_only=True)
class WriterConfig(ServiceConfig, KafkaSettings, S3Deadlines):
    """Settings of a storage writer process (``python -m candela_ingest.writer``).

    The writer serves only the gRPC health service; it extends :class:`ServiceConfig` so that it is
    started, probed and stopped exactly like every other service of the mesh.
    """

    kafka_group: str = env_field(
        "Consumer group the writers share (partitions bound their parallelism).", "candela-writers"
    )
    kafka_dlq_topic: str = env_field("Dead-letter topic for messages that cannot be stored.", DEFAULT_DLQ_TOPIC)
    kafka_session_timeout_ms: int = env_field(
        "Consumer group session timeout (a dead writer is evicted after it).", 6000
    )
    kafka_heartbeat_interval_ms: int = env_field("Consumer heartbeat interval (at most a third of the session).", 2000)
    kafka_commit_timeout_s: float = env_field(
        "Seconds an offset commit may take; past it the batch stays uncommitted (redelivered, idempotently).", 15.0
    )
    postgres_dsn: str = env_field("Postgres DSN holding usage counters and the counted-requests ledger.")
    postgres_pool_size: int = env_field("Maximum Postgres connections.", 4)
    clickhouse_host: str = env_field("ClickHouse host (native protocol).", "127.0.0.1")
    clickhouse_port: int = env_field("ClickHouse native TCP port.", 9000)
    clickhouse_alt_hosts: str = env_field(
        "More ClickHouse members, comma-separated host[:port] (the port defaults to CANDELA_CLICKHOUSE_PORT): "
        "in cluster mode the others of the cluster, tried in turn when the one in use cannot be reached "
        "(see candela_runtime.failover). Empty: CANDELA_CLICKHOUSE_HOST only.",
        "",
    )
    clickhouse_member_retry_s: float = env_field(
        "Seconds a ClickHouse member that could not be reached is passed over before it is tried again; also how "
        "soon the service tries its way back to a member listed before the one in use (CANDELA_CLICKHOUSE_HOST "
        "first, then CANDELA_CLICKHOUSE_ALT_HOSTS in order: the preferred order). See candela_runtime.failover.",
        MEMBER_RETRY_AFTER_S,
    )
    clickhouse_database: str = env_field("ClickHouse database holding the requests table.", "candela")
    clickhouse_table: str = env_field("ClickHouse table of request rows.", "requests")
    clickhouse_user: str = env_field("ClickHouse user.", "default")
    clickhouse_password: str = env_field("ClickHouse password.", "")
    clickhouse_cluster: str = env_field(
        "ClickHouse cluster name (its <remote_servers> entry); empty for a single server. Inserts then go "
        "through the Distributed tables, retention runs ON CLUSTER.",
        "",
    )
    # Every ClickHouse insert makes a new part (~130 files for the requests table and its index views), which
    # costs the server tens of milliseconds whatever its size, and the merges behind it more: measured on
    # 18.16, 55 us of server CPU per row for inserts of 1,000 rows, 4.6 for inserts of 20,000. So a batch
    # may grow large under load, and its wait (which bounds freshness at low rates) sets how many inserts
    # a second each consumer makes at most.
    batch_max_records: int = env_field("Most messages written per batch.", 20_000)
    batch_max_bytes: int = env_field("Most message bytes per batch (one fetch may overshoot it).", 32 * 1024 * 1024)
    batch_max_wait_ms: int = env_field("How long a batch waits to fill before it is written anyway.", 500)
    max_attempts: int = env_field("Attempts at a batch the stores reject before its bad messages are isolated.", 3)
    retry_initial_backoff_s: float = env_field("First retry delay; doubles per attempt.", 0.2)
    retry_max_backoff_s: float = env_field("Longest retry delay (also while a store is down).", 10.0)
    # One by default: a process is one core's worth of Python anyway, and each more consumer halves the
    # batches (so doubles the inserts) without adding CPU; run more writer processes to use more cores.
    consumers: int = env_field(
        "Consumers of the log topic in this process (group members; partitions bound the useful number).", 1
    )
    dlq_max_retries: int = env_field(
        "Times a dead letter is retried from the DLQ before it is parked in Postgres for an operator.", 3
    )
    dlq_retry_delay_s: float = env_field("How long a dead letter waits in the DLQ before it is retried.", 30.0)
    s3_endpoint: str = env_field(
        "S3 endpoint of the bodies bucket (retention deletes expired bodies); empty: skip.", ""
    )
    s3_access_key: str = env_field("S3 access key id (retention).", "")
    s3_secret_key: str = env_field("S3 secret access key (retention).", "")
    s3_bucket: str = env_field("Bucket holding bodies/<organization_id>/...", "candela")
    s3_region: str = env_field("S3 region used to sign requests.", "us-east-1")
    retention_interval_s: float = env_field(
        "Seconds between retention sweeps (organizations.retention_days) and ledger prunings; 0 disables both "
        "in this writer.",
        3600.0,
    )
    # Past Kafka's retention (7 days in docs/capacity.md) no redelivery or window replay can bring a log back;
    # parked dead letters can come back later, so the default leaves a month more. See
    # candela_ingest.writer.ledger_horizon.
    ledger_horizon_days: int = env_field(
        "Days the counted_requests ledger remembers (by creation day): a copy of a log created longer ago is "
        "refused, neither counted nor stored. Keep it above the Kafka topics' retention and the age of any "
        "parked dead letter you may replay; give every writer the same value.",
        35,
    )

    def __post_init__(self) -> None:
        self.check_deadlines()
        if self.consumers < 1:
            raise ConfigError("CANDELA_CONSUMERS must be at least 1")
        if self.dlq_max_retries < 1:
            raise ConfigError("CANDELA_DLQ_MAX_RETRIES must be at least 1")
        # Two days at least: the check for a request id reused across midnight reads the day before.
        if self.ledger_horizon_days < 2:
            raise ConfigError("CANDELA_LEDGER_HORIZON_DAYS must be at least 2")
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ConfigError(
                "CANDELA_KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of CANDELA_KAFKA_SESSION_TIMEOUT_MS"
            )
        if self.clickhouse_member_retry_s <= 0:
            raise ConfigError("CANDELA_CLICKHOUSE_MEMBER_RETRY_S must be above 0")
        try:
            parse_members(self.clickhouse_host, self.clickhouse_port, self.clickhouse_alt_hosts)
        except ValueError as error:
            raise ConfigError(f"CANDELA_CLICKHOUSE_ALT_HOSTS: {error}") from None

    @property
    def clickhouse_alt_members(self) -> tuple[Address, ...]:
        """The members of CANDELA_CLICKHOUSE_ALT_HOSTS, after CANDELA_CLICKHOUSE_HOST's."""
        return parse_members(self.clickhouse_host, self.clickhouse_port, self.clickhouse_alt_hosts)[1:]
