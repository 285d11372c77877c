"""Configuration of the query service."""

from __future__ import annotations

from dataclasses import dataclass

from candela_runtime.config import ConfigError, ServiceConfig, env_field
from candela_runtime.failover import MEMBER_RETRY_AFTER_S, Address, parse_members


@dataclass(frozen=True, kw_only=True)
class QueryConfig(ServiceConfig):
    """Settings of the query service (CANDELA_* variables)."""

    auth_addr: str = env_field("host:port of the auth service, which resolves callers' API keys.")
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
    clickhouse_connections: int = env_field("ClickHouse connections (each query holds one).", 4)
    clickhouse_user: str = env_field("ClickHouse user.", "default")
    clickhouse_password: str = env_field("ClickHouse password.", "")
    clickhouse_cluster: str = env_field(
        "ClickHouse cluster name (its <remote_servers> entry); empty for a single server. Reads then go "
        "through the Distributed tables (see candela_query.clickhouse).",
        "",
    )
    s3_endpoint: str = env_field("S3 endpoint URL holding the request bodies.")
    s3_access_key: str = env_field("S3 access key id.")
    s3_secret_key: str = env_field("S3 secret access key.")
    s3_bucket: str = env_field("S3 bucket holding the request bodies.", "candela")
    s3_region: str = env_field("S3 region.", "us-east-1")
    max_page_size: int = env_field("Largest page QueryRequests returns.", 1000)
    export_page_size: int = env_field("Rows an export reads (and sends as one chunk) at a time.", 1000)
    postgres_dsn: str = env_field(
        "Postgres DSN for the organization's usage and limits; empty disables GetOrganizationUsage.", ""
    )
    ingest_addr: str = env_field(
        "host:port of the ingest service, which stores submitted scores and feedback; empty answers "
        "SubmitFeedback and SubmitScores with UNAVAILABLE.",
        "",
    )
    score_wait_s: float = env_field(
        "How long a score or feedback waits for its request to become visible (logs arrive asynchronously) "
        "before the call answers NOT_FOUND.",
        5.0,
    )
    clickhouse_final: bool = env_field(
        "Read with FINAL so copies of a redelivered log not yet merged show once (turn off only to measure).", True
    )

    def __post_init__(self) -> None:
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
