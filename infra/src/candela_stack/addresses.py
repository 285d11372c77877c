"""What one stack is made of and where each part of it is: its address book.

Everything here is derived from a StackConfig without starting anything: the components (and what each
needs), the ports (offsets from the port base, see StackPorts), the URLs, host:port pairs and DSNs, the
topics and buckets, the directories under the data dir, the credentials, and the environment each
service is started with. `Stack` (candela_stack.stack) is this address book plus the processes behind it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from candela_stack import clickhouse, postgres, seaweed
from candela_stack.clickhouse_cluster import ClusterLayout
from candela_stack.kafka import KafkaEngine
from candela_stack.ports import DEV_PORT_BASE, LOOPBACK, MAX_WRITERS, StackPorts, dev_port_base, pick_free_port_base


def _dev_data_dir() -> Path:
    """`<repo>/.candela` when running from a checkout (infra/src/candela_stack), else `./.candela`."""
    repo = Path(__file__).resolve().parents[3]
    if (repo / "infra" / "pyproject.toml").is_file():
        return repo / ".candela"
    return Path.cwd() / ".candela"


DEV_DATA_DIR = _dev_data_dir()
"""The dev stack's data dir unless CANDELA_STACK_DIR says otherwise."""

CONSOLE_DIST = Path(__file__).resolve().parents[3] / "console" / "dist"
"""The built web console, which the gateway serves at `/` when it exists (`make run` builds it)."""

LOGS_TOPIC = "candela.logs.v1"
DLQ_TOPIC = "candela.logs.dlq.v1"
WRITER_GROUP = "candela-writers"
BODIES_BUCKET = "candela"
DEFAULT_S3_ACCESS_KEY = "candela"
DEFAULT_S3_SECRET_KEY = "candela-local-secret"
OWN_POSTGRES_OFFSET = 80
"""Port offset of the private Postgres cluster of a stack with `own_postgres`."""
DEV_DATABASE = "candela"
"""The dev stack's Postgres database on the default port base (see dev_database)."""
CLICKHOUSE_PASSWORD_FILE = Path("clickhouse") / "password"
"""Where (under the data dir) a started stack leaves its ClickHouse password for `make migrate` (mode 0600)."""
WRITERS_ENV = "CANDELA_STACK_WRITERS"
DEFAULT_WRITERS = 2
"""Writer processes unless CANDELA_STACK_WRITERS says otherwise (see StackConfig.writers): 2 measured ~10 %
more logs/s than 1 on 2 cores (bench/results/ingest-20261123T130700Z.md)."""


class Component(StrEnum):
    """A part of the stack that can be started on its own (its dependencies are added automatically)."""

    POSTGRES = "postgres"
    REDIS = "redis"
    CLICKHOUSE = "clickhouse"
    S3 = "s3"
    KAFKA = "kafka"
    FAKE_PROVIDER = "fake_provider"
    AUTH = "auth"
    PROMPTS = "prompts"
    INGEST = "ingest"
    WRITER = "writer"
    QUERY = "query"
    PROXY = "proxy"
    ENVOY = "envoy"


INFRA = frozenset(
    {Component.POSTGRES, Component.REDIS, Component.CLICKHOUSE, Component.S3, Component.KAFKA, Component.ENVOY}
)
"""The infrastructure and the gateway, without any Candela service."""

SERVICES = (
    Component.AUTH,
    Component.PROMPTS,
    Component.INGEST,
    Component.WRITER,
    Component.QUERY,
    Component.PROXY,
)
"""Candela's services; when several can start at the same moment they are launched in this order."""

EVERYTHING = INFRA | frozenset(SERVICES)
"""The whole mesh (the fake provider joins when no real upstream is configured)."""

REQUIRES: dict[Component, frozenset[Component]] = {
    Component.AUTH: frozenset({Component.POSTGRES}),
    Component.PROMPTS: frozenset({Component.POSTGRES, Component.AUTH}),
    Component.INGEST: frozenset({Component.KAFKA, Component.S3, Component.POSTGRES}),
    Component.WRITER: frozenset({Component.KAFKA, Component.POSTGRES, Component.CLICKHOUSE}),
    Component.QUERY: frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH}),
    Component.PROXY: frozenset({Component.AUTH, Component.INGEST, Component.REDIS, Component.PROMPTS}),
}
"""What each service needs running before it starts (resolve_components adds it to a stack)."""


def resolve_components(requested: frozenset[Component], kafka_engine: KafkaEngine) -> frozenset[Component]:
    """`requested` plus everything it needs (e.g. the writer needs Kafka, Postgres and ClickHouse)."""
    resolved = set(requested)
    changed = True
    while changed:
        before = len(resolved)
        for component in list(resolved):
            resolved |= REQUIRES.get(component, frozenset())
        if Component.KAFKA in resolved and kafka_engine == "s3":
            resolved.add(Component.S3)
        changed = len(resolved) != before
    return frozenset(resolved)


@dataclass(frozen=True)
class StackConfig:
    """Everything that makes one stack different from another."""

    port_base: int
    """Base of the port layout (see StackPorts)."""
    data_dir: Path
    """Where logs, server data, generated configs and the bootstrap key live."""
    kafka_engine: KafkaEngine = "memory"
    """Broker storage: `memory` or `s3` (durable, in the stack's SeaweedFS)."""
    database: str = "candela"
    """The stack's Postgres database (created if missing)."""
    drop_database_on_stop: bool = False
    """Drop the Postgres database at stop() (test stacks)."""
    components: frozenset[Component] = EVERYTHING
    """What to start; dependencies are added (see resolve_components)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for the services and the fake provider; overrides what the stack sets."""
    postgres_admin_dsn: str = postgres.DEFAULT_ADMIN_DSN
    """A DSN allowed to create databases; the stack's DSN is this one with `database` swapped in."""
    clickhouse_database: str = "candela"
    """ClickHouse database the migrations create and the services use."""
    clickhouse_cluster: str = ""
    """Run ClickHouse as a local cluster of this name (CANDELA_CLICKHOUSE_CLUSTER, `run --cluster`): ZooKeeper
    and 2 shards x 2 replicas (see clickhouse_cluster); empty runs one server."""
    kafka_partitions: int = 4
    """Partitions of the logs topic and of its dead-letter topic."""
    writers: int = DEFAULT_WRITERS
    """Writer processes (CANDELA_STACK_WRITERS), all in one consumer group: one Python process is bound to
    one core by the GIL, so more than one lets the writers use every core (partitions bound the useful
    number; at most MAX_WRITERS, see StackPorts)."""
    proxy_workers: int = 1
    """Proxy processes on the proxy's port (CANDELA_PROXY_WORKERS; 0: one per core, `make run`'s default).
    Test stacks keep one: tests that watch a proxy's spool fill through /healthz, or SIGKILL the proxy and
    count its logs, are about one process's state; tests/e2e/test_proxy_workers.py starts its own workers."""
    ingest_workers: int | None = 1
    """Ingest processes on ingest's port (CANDELA_INGEST_WORKERS; None: the service's default, `make run`'s).
    Test stacks keep one: tests that stall a store and read ingest's health, or kill ingest and count what
    it acknowledged, are about one process's state (health is per worker: candela_runtime.workers)."""
    query_workers: int | None = 1
    """Query processes on the query service's port (CANDELA_QUERY_WORKERS; None: the service's default).
    Test stacks keep one; tests/e2e/test_grpc_workers.py starts its own workers."""
    s3_access_key: str = DEFAULT_S3_ACCESS_KEY
    """S3 access key (SeaweedFS identity, also handed to the services and the broker)."""
    s3_secret_key: str = DEFAULT_S3_SECRET_KEY
    """S3 secret key."""
    clickhouse_password: str | None = None
    """Password of the stack's ClickHouse user (CANDELA_CLICKHOUSE_PASSWORD); None makes a random one per
    stack, like the service token."""
    service_token: str | None = None
    """Shared secret of internal calls; None makes a random one per stack."""
    log_level: str = "INFO"
    """CANDELA_LOG_LEVEL handed to the services."""
    seaweed_volume_size_limit_mb: int = seaweed.DEFAULT_VOLUME_SIZE_LIMIT_MB
    """Size at which SeaweedFS stops writing to a volume and starts another (see seaweed.server_argv)."""
    seaweed_stop_grace: float = 5.0
    """Seconds SeaweedFS gets after SIGTERM before SIGKILL (a clean exit takes ~16 s, see README)."""
    ready_timeout: float = 60.0
    """Seconds each process gets to become ready."""
    own_postgres: bool = False
    """Run a private Postgres cluster (initdb in a temp dir, port base + OWN_POSTGRES_OFFSET) instead of
    using the machine's server, so a test can stop and restart Postgres without touching anyone else's."""
    otlp_endpoint: str | None = None
    """An OTLP/gRPC collector on loopback (`http://127.0.0.1:<port>`) that every service and Envoy export
    their spans to (`make run`: CANDELA_OTLP_ENDPOINT); None leaves tracing as the environment has it
    (Envoy does not trace)."""
    otlp_flush_interval_ms: int = 1000
    """How long finished spans wait in each process before export (OTEL_BSP_SCHEDULE_DELAY and Envoy's
    flush interval): short, so a trace is complete at the collector soon after its request."""

    @classmethod
    def dev(cls, **overrides: Any) -> StackConfig:
        """The `make run` stack, from CANDELA_* variables with local defaults."""
        environ = os.environ
        port_base = dev_port_base()
        config = cls(
            port_base=port_base,
            data_dir=Path(environ.get("CANDELA_STACK_DIR") or dev_data_dir(port_base)).resolve(),
            kafka_engine=_engine(environ.get("CANDELA_KAFKA_ENGINE", "s3")),
            database=environ.get("CANDELA_POSTGRES_DATABASE") or dev_database(port_base),
            postgres_admin_dsn=environ.get(postgres.ADMIN_DSN_ENV, postgres.DEFAULT_ADMIN_DSN),
            kafka_partitions=_int_env("CANDELA_KAFKA_PARTITIONS", 4),
            writers=_int_env(WRITERS_ENV, DEFAULT_WRITERS),
            proxy_workers=_int_env("CANDELA_PROXY_WORKERS", 0),
            ingest_workers=None,  # the service reads CANDELA_INGEST_WORKERS itself (default: one per core)
            query_workers=None,
            s3_access_key=environ.get("CANDELA_S3_ACCESS_KEY", DEFAULT_S3_ACCESS_KEY),
            s3_secret_key=environ.get("CANDELA_S3_SECRET_KEY", DEFAULT_S3_SECRET_KEY),
            service_token=environ.get("CANDELA_SERVICE_TOKEN") or None,
            clickhouse_password=environ.get("CANDELA_CLICKHOUSE_PASSWORD") or None,
            clickhouse_cluster=cluster_name(environ.get("CANDELA_CLICKHOUSE_CLUSTER", "")),
            log_level=environ.get("CANDELA_LOG_LEVEL", "INFO"),
            seaweed_stop_grace=float(environ.get("CANDELA_SEAWEED_STOP_GRACE", "5")),
            otlp_endpoint=environ.get("CANDELA_OTLP_ENDPOINT") or None,
        )
        return replace(config, **overrides)

    @classmethod
    def for_tests(cls, data_dir: Path, **overrides: Any) -> StackConfig:
        """A test stack: free random ports, `data_dir` (a tmp dir), a throwaway database, Kafka in memory."""
        environ = os.environ
        config = cls(
            port_base=pick_free_port_base(),
            data_dir=data_dir.resolve(),
            kafka_engine=_engine(environ.get("CANDELA_TEST_KAFKA_ENGINE", "memory")),
            database=f"candela_test_{secrets.token_hex(6)}",
            drop_database_on_stop=True,
            postgres_admin_dsn=environ.get(postgres.ADMIN_DSN_ENV, postgres.DEFAULT_ADMIN_DSN),
            kafka_partitions=_int_env("CANDELA_KAFKA_PARTITIONS", 4),
            writers=_int_env(WRITERS_ENV, DEFAULT_WRITERS),
            log_level=environ.get("CANDELA_LOG_LEVEL", "INFO"),
            # Test data is thrown away: no point waiting for SeaweedFS's slow clean exit.
            seaweed_stop_grace=1.0,
        )
        return replace(config, **overrides)


DEFAULT_CLUSTER = "candela"
"""The local ClickHouse cluster's name when CANDELA_CLICKHOUSE_CLUSTER just turns it on (`1`, `true`) or
`run --cluster` does."""


def cluster_name(value: str) -> str:
    """The local ClickHouse cluster's name from CANDELA_CLICKHOUSE_CLUSTER: empty (one server), `1`/`true`/
    `yes`/`on` (DEFAULT_CLUSTER), or a name (letters, digits, `_`: it is an XML tag and an SQL identifier)."""
    if value.strip().lower() in {"", "0", "false", "no", "off"}:
        return ""
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return DEFAULT_CLUSTER
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"CANDELA_CLICKHOUSE_CLUSTER must be a name (letters, digits, _) or 1, not {value!r}")
    return value


def dev_data_dir(port_base: int) -> Path:
    """The dev stack's data dir: DEV_DATA_DIR on the default port base, `.candela-<base>` beside it on another
    (two stacks sharing one data dir would share a pids file, and each start stops the other's processes)."""
    return DEV_DATA_DIR if port_base == DEV_PORT_BASE else DEV_DATA_DIR.with_name(f"{DEV_DATA_DIR.name}-{port_base}")


def dev_database(port_base: int) -> str:
    """The dev stack's Postgres database: `candela` on the default port base, `candela_<base>` on another, so
    a second stack beside the first (CANDELA_STACK_PORT_BASE) never shares the first one's database."""
    return DEV_DATABASE if port_base == DEV_PORT_BASE else f"{DEV_DATABASE}_{port_base}"


def saved_clickhouse_password(data_dir: Path) -> str | None:
    """The ClickHouse password a stack started on `data_dir` left for other tools, if any."""
    try:
        return (data_dir / CLICKHOUSE_PASSWORD_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def loopback_port(endpoint: str) -> int:
    """The port of a collector endpoint such as `http://127.0.0.1:4317`; only loopback is accepted, since
    the stack never sends traffic elsewhere."""
    parts = urlsplit(endpoint)
    if parts.hostname not in {LOOPBACK, "localhost"} or parts.port is None:
        raise ValueError(f"the OTLP endpoint must be http://{LOOPBACK}:<port>, not {endpoint!r}")
    return parts.port


class StackAddresses:
    """The address book of one stack (started or not): which port, URL, DSN, directory and credential
    each part has, derived from its StackConfig."""

    def __init__(self, config: StackConfig) -> None:
        """Lays out a stack's addresses; draws its random credentials (service token, ClickHouse password)."""
        self.config = config
        self.ports = StackPorts.from_base(config.port_base)
        if not 1 <= config.writers <= MAX_WRITERS:
            raise ValueError(f"writers must be in [1, {MAX_WRITERS}], got {config.writers}")
        self.components = resolve_components(config.components, config.kafka_engine)
        self.service_token = config.service_token or secrets.token_urlsafe(32)
        self.clickhouse_password = config.clickhouse_password or secrets.token_urlsafe(24)
        """The ClickHouse user's password (never logged; kept in the data dir, mode 0600, for `make migrate`)."""
        self.data_dir = config.data_dir
        self.log_dir = config.data_dir / "logs"
        openai = self._caller_env("CANDELA_OPENAI_BASE_URL")
        anthropic = self._caller_env("CANDELA_ANTHROPIC_BASE_URL")
        self.uses_fake_provider = Component.FAKE_PROVIDER in self.components or (
            Component.PROXY in self.components and openai is None and anthropic is None
        )
        """True when the stack runs the local fake provider as the upstream."""
        fake = f"http://{LOOPBACK}:{self.ports.fake_provider}"
        self.openai_base_url: str | None = openai or (f"{fake}/v1" if self.uses_fake_provider else None)
        """Upstream of OpenAI-shaped calls (None: the proxy's own default, the real provider)."""
        self.anthropic_base_url: str | None = anthropic or (fake if self.uses_fake_provider else None)
        """Upstream of Anthropic-shaped calls (None: the proxy's own default)."""
        bedrock = self._caller_env("CANDELA_BEDROCK_BASE_URL")
        self.bedrock_base_url: str | None = bedrock or (fake if self.uses_fake_provider else None)
        """Upstream of Bedrock calls (None: the proxy's own default, the real regional endpoint)."""
        self.gemini_base_url: str | None = self._caller_env("CANDELA_GEMINI_BASE_URL") or (
            fake if self.uses_fake_provider else None
        )
        """Upstream of /gemini/... calls (None: the proxy's own default, the real Gemini API)."""
        self.vertex_base_url: str | None = self._caller_env("CANDELA_VERTEX_BASE_URL") or (
            fake if self.uses_fake_provider else None
        )
        """Upstream of /vertex/... calls, every location (None: each location's own Vertex AI endpoint)."""
        if self.uses_fake_provider:
            self.components = self.components | {Component.FAKE_PROVIDER}

    # --- addresses -------------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        """Envoy's listener: the one URL for SDKs (append /v1), gRPC and REST."""
        return f"http://{LOOPBACK}:{self.ports.gateway}"

    @property
    def gateway_addr(self) -> str:
        """Envoy's listener as host:port (for gRPC channels)."""
        return f"{LOOPBACK}:{self.ports.gateway}"

    @property
    def envoy_admin_url(self) -> str:
        """Envoy's admin interface."""
        return f"http://{LOOPBACK}:{self.ports.envoy_admin}"

    @property
    def proxy_url(self) -> str:
        """The proxy service directly (bypassing Envoy)."""
        return f"http://{LOOPBACK}:{self.ports.proxy_http}"

    @property
    def auth_addr(self) -> str:
        """AuthService host:port."""
        return f"{LOOPBACK}:{self.ports.auth_grpc}"

    @property
    def ingest_addr(self) -> str:
        """IngestService host:port."""
        return f"{LOOPBACK}:{self.ports.ingest_grpc}"

    @property
    def query_addr(self) -> str:
        """QueryService host:port."""
        return f"{LOOPBACK}:{self.ports.query_grpc}"

    @property
    def prompts_addr(self) -> str:
        """PromptsService host:port."""
        return f"{LOOPBACK}:{self.ports.prompts_grpc}"

    @property
    def writer_addr(self) -> str:
        """The writer's gRPC health endpoint host:port."""
        return f"{LOOPBACK}:{self.ports.writer_grpc}"

    @property
    def postgres_admin_dsn(self) -> str:
        """The DSN used to create and drop the stack's database (the private cluster's with `own_postgres`)."""
        if self.config.own_postgres:
            return postgres.admin_dsn_for_port(self.own_postgres_port)
        return self.config.postgres_admin_dsn

    @property
    def own_postgres_port(self) -> int:
        """The port of the private Postgres cluster (meaningful with `own_postgres` only)."""
        return self.ports.base + OWN_POSTGRES_OFFSET

    @property
    def postgres_dsn(self) -> str:
        """The stack's own Postgres database."""
        return postgres.with_database(self.postgres_admin_dsn, self.config.database)

    @property
    def clickhouse_host(self) -> str:
        """ClickHouse host (native protocol)."""
        return LOOPBACK

    @property
    def clickhouse_port(self) -> int:
        """ClickHouse native TCP port."""
        return self.ports.clickhouse_tcp

    @property
    def clickhouse_alt_hosts(self) -> str:
        """The cluster's other members, `host:port,...` (CANDELA_CLICKHOUSE_ALT_HOSTS): the services fail over to
        them when the first member is down. Empty for a single server."""
        layout = self.clickhouse_cluster_layout
        if layout is None:
            return ""
        return ",".join(f"{LOOPBACK}:{member.tcp_port}" for member in layout.members[1:])

    @property
    def clickhouse_cluster_layout(self) -> ClusterLayout | None:
        """The local ClickHouse cluster's members and ZooKeeper (None for a single server): the first member
        has the single server's ports, so every client dials the same address either way."""
        if not self.config.clickhouse_cluster:
            return None
        return ClusterLayout.for_stack(self.config.clickhouse_cluster, self.ports)

    @property
    def clickhouse_user(self) -> str:
        """The ClickHouse user every client signs in as (its password: clickhouse_password)."""
        return clickhouse.USER

    @property
    def clickhouse_http_url(self) -> str:
        """ClickHouse HTTP interface."""
        return f"http://{LOOPBACK}:{self.ports.clickhouse_http}"

    @property
    def clickhouse_database(self) -> str:
        """The stack's ClickHouse database."""
        return self.config.clickhouse_database

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers (host:port)."""
        return f"{LOOPBACK}:{self.ports.kafka}"

    @property
    def kafka_topic(self) -> str:
        """The logs topic."""
        return LOGS_TOPIC

    @property
    def kafka_dlq_topic(self) -> str:
        """The dead-letter topic."""
        return DLQ_TOPIC

    @property
    def s3_endpoint(self) -> str:
        """S3 endpoint URL (path-style addressing)."""
        return f"http://{LOOPBACK}:{self.ports.seaweed_s3}"

    @property
    def s3_access_key(self) -> str:
        """S3 access key."""
        return self.config.s3_access_key

    @property
    def s3_secret_key(self) -> str:
        """S3 secret key."""
        return self.config.s3_secret_key

    @property
    def s3_bucket(self) -> str:
        """Bucket of request and response bodies."""
        return BODIES_BUCKET

    @property
    def redis_url(self) -> str:
        """The stack's own Redis."""
        return f"redis://{LOOPBACK}:{self.ports.redis}/0"

    @property
    def fake_provider_url(self) -> str | None:
        """The fake provider's root URL, or None when a real upstream is configured."""
        return f"http://{LOOPBACK}:{self.ports.fake_provider}" if self.uses_fake_provider else None

    @property
    def spool_dir(self) -> Path:
        """The proxy's on-disk log spool."""
        return self.data_dir / "spool"

    @property
    def bootstrap_path(self) -> Path:
        """Where bootstrap() keeps the first API key."""
        return self.data_dir / "bootstrap.json"

    # --- what each service is told, and the ports it binds ---------------------------------------

    def service_env(self, component: Component, instance: int = 0) -> dict[str, str]:
        """The environment one service is started with (the caller's `env` overrides included);
        `instance` picks the writer process (each has its own gRPC and metrics ports)."""
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "CANDELA_SERVICE_TOKEN": self.service_token,
                "CANDELA_LOG_LEVEL": self.config.log_level,
            }
        )
        env.update(self._service_specific_env(component))
        env.update(self._otlp_env())
        metrics_port = self.metrics_ports().get(component)
        if component is Component.WRITER:
            env["CANDELA_GRPC_PORT"] = str(self.ports.writer_grpc_port(instance))
            metrics_port = self.ports.writer_metrics_port(instance)
        if metrics_port is not None:
            env["CANDELA_METRICS_PORT"] = str(metrics_port)
        env.update(self.config.env)
        return env

    def writer_metrics_ports(self) -> list[int]:
        """The Prometheus scrape port of every writer process (a writer total is their sum)."""
        return [self.ports.writer_metrics_port(index) for index in range(self.config.writers)]

    def metrics_ports(self) -> dict[Component, int]:
        """The Prometheus scrape port of each gRPC service (the proxy serves /metrics on its HTTP port;
        the writer's entry is the first writer's: see writer_metrics_ports)."""
        p = self.ports
        return {
            Component.AUTH: p.auth_metrics,
            Component.INGEST: p.ingest_metrics,
            Component.QUERY: p.query_metrics,
            Component.PROMPTS: p.prompts_metrics,
            Component.WRITER: p.writer_metrics,
        }

    def bound_ports(self) -> dict[str, int]:
        """Every port this stack's processes listen on, by name (only the components it runs)."""
        metrics = {
            f"{component.value}_metrics": port
            for component, port in self.metrics_ports().items()
            if component in self.components and component is not Component.WRITER  # listed per writer
        }
        return self._wanted_ports() | metrics

    def _cluster_ports(self) -> dict[str, int]:
        layout = self.clickhouse_cluster_layout
        if layout is None:
            return {}
        ports = {"zookeeper": layout.zookeeper_port}
        for member in layout.members:
            ports |= {f"{member.name}_tcp": member.tcp_port, f"{member.name}_http": member.http_port}
            ports[f"{member.name}_interserver"] = member.interserver_port
        # The first member's tcp and http ports are the single server's (clickhouse_tcp, clickhouse_http).
        first = layout.members[0]
        del ports[f"{first.name}_tcp"], ports[f"{first.name}_http"]
        return ports

    def _wanted_ports(self) -> dict[str, int]:
        """The ports of the components this stack runs, by name (start() checks they are free)."""
        p = self.ports
        by_component: dict[Component, dict[str, int]] = {
            Component.REDIS: {"redis": p.redis},
            Component.CLICKHOUSE: {"clickhouse_tcp": p.clickhouse_tcp, "clickhouse_http": p.clickhouse_http}
            | self._cluster_ports(),
            Component.S3: {
                name: port
                for base_name, base_port in (
                    ("seaweed_master", p.seaweed_master),
                    ("seaweed_volume", p.seaweed_volume),
                    ("seaweed_filer", p.seaweed_filer),
                    ("seaweed_s3", p.seaweed_s3),
                )
                for name, port in ((base_name, base_port), (f"{base_name}_grpc", base_port + 10000))
            },
            Component.KAFKA: {"kafka": p.kafka},
            Component.FAKE_PROVIDER: {"fake_provider": p.fake_provider},
            Component.AUTH: {"auth_grpc": p.auth_grpc},
            Component.PROMPTS: {"prompts_grpc": p.prompts_grpc},
            Component.INGEST: {"ingest_grpc": p.ingest_grpc},
            Component.WRITER: {
                f"writer_grpc_{index}": p.writer_grpc_port(index) for index in range(self.config.writers)
            }
            | {f"writer_metrics_{index}": p.writer_metrics_port(index) for index in range(self.config.writers)},
            Component.QUERY: {"query_grpc": p.query_grpc},
            Component.PROXY: {"proxy_http": p.proxy_http},
            Component.ENVOY: {"gateway": p.gateway, "envoy_admin": p.envoy_admin},
        }
        if self.config.own_postgres:
            by_component[Component.POSTGRES] = {"postgres": self.own_postgres_port}
        wanted: dict[str, int] = {}
        for component in self.components:
            wanted.update(by_component.get(component, {}))
        return wanted

    def _service_specific_env(self, component: Component) -> dict[str, str]:
        p = self.ports
        s3 = {
            "CANDELA_S3_ENDPOINT": self.s3_endpoint,
            "CANDELA_S3_ACCESS_KEY": self.config.s3_access_key,
            "CANDELA_S3_SECRET_KEY": self.config.s3_secret_key,
            "CANDELA_S3_BUCKET": BODIES_BUCKET,
        }
        clickhouse_env = {
            "CANDELA_CLICKHOUSE_HOST": self.clickhouse_host,
            "CANDELA_CLICKHOUSE_PORT": str(self.clickhouse_port),
            "CANDELA_CLICKHOUSE_DATABASE": self.clickhouse_database,
            "CANDELA_CLICKHOUSE_USER": self.clickhouse_user,
            "CANDELA_CLICKHOUSE_PASSWORD": self.clickhouse_password,
        }
        if self.config.clickhouse_cluster:
            clickhouse_env["CANDELA_CLICKHOUSE_CLUSTER"] = self.config.clickhouse_cluster
            clickhouse_env["CANDELA_CLICKHOUSE_ALT_HOSTS"] = self.clickhouse_alt_hosts
        if component is Component.AUTH:
            return {"CANDELA_GRPC_PORT": str(p.auth_grpc), "CANDELA_POSTGRES_DSN": self.postgres_dsn}
        if component is Component.PROMPTS:
            return {
                "CANDELA_GRPC_PORT": str(p.prompts_grpc),
                "CANDELA_POSTGRES_DSN": self.postgres_dsn,
                "CANDELA_AUTH_ADDR": self.auth_addr,
            }
        if component is Component.INGEST:
            return {
                "CANDELA_GRPC_PORT": str(p.ingest_grpc),
                "CANDELA_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "CANDELA_KAFKA_TOPIC": LOGS_TOPIC,
                "CANDELA_POSTGRES_DSN": self.postgres_dsn,  # refuses logs of unknown organizations
                **s3,
                **_workers_env("CANDELA_INGEST_WORKERS", self.config.ingest_workers),
            }
        if component is Component.WRITER:
            return {
                "CANDELA_GRPC_PORT": str(p.writer_grpc),
                "CANDELA_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "CANDELA_KAFKA_TOPIC": LOGS_TOPIC,
                "CANDELA_KAFKA_DLQ_TOPIC": DLQ_TOPIC,
                "CANDELA_KAFKA_GROUP": WRITER_GROUP,
                "CANDELA_POSTGRES_DSN": self.postgres_dsn,
                **clickhouse_env,
                **(s3 if Component.S3 in self.components else {}),  # retention deletes expired bodies
            }
        if component is Component.QUERY:
            return {
                "CANDELA_GRPC_PORT": str(p.query_grpc),
                "CANDELA_AUTH_ADDR": self.auth_addr,
                "CANDELA_POSTGRES_DSN": self.postgres_dsn,
                # Submitted scores go through ingest; a stack without it answers them UNAVAILABLE.
                **({"CANDELA_INGEST_ADDR": self.ingest_addr} if Component.INGEST in self.components else {}),
                **clickhouse_env,
                **s3,
                **_workers_env("CANDELA_QUERY_WORKERS", self.config.query_workers),
            }
        if component is Component.PROXY:
            env = {
                "CANDELA_HTTP_PORT": str(p.proxy_http),
                "CANDELA_PROXY_WORKERS": str(self.config.proxy_workers),
                "CANDELA_AUTH_ADDR": self.auth_addr,
                "CANDELA_INGEST_ADDR": self.ingest_addr,
                "CANDELA_PROMPTS_ADDR": self.prompts_addr,
                "CANDELA_SPOOL_DIR": str(self.spool_dir),
                "CANDELA_REDIS_URL": self.redis_url,
            }
            if self.openai_base_url is not None:
                env["CANDELA_OPENAI_BASE_URL"] = self.openai_base_url
            if self.anthropic_base_url is not None:
                env["CANDELA_ANTHROPIC_BASE_URL"] = self.anthropic_base_url
            if self.bedrock_base_url is not None:
                env["CANDELA_BEDROCK_BASE_URL"] = self.bedrock_base_url
            if self.gemini_base_url is not None:
                env["CANDELA_GEMINI_BASE_URL"] = self.gemini_base_url
            if self.vertex_base_url is not None:
                env["CANDELA_VERTEX_BASE_URL"] = self.vertex_base_url
            env.update(self._named_provider_env())
            return env
        raise ValueError(f"{component} is not a service")

    def _named_provider_env(self) -> dict[str, str]:
        """Azure OpenAI and the OpenAI-compatible family at the fake provider (unless the caller named an
        upstream), so the stack serves `/azure/...`, `/groq/...`, ... `/vllm/...`, `/ollama/...` locally."""
        if not self.uses_fake_provider:
            return {}
        fake = f"http://{LOOPBACK}:{self.ports.fake_provider}"
        wanted = {"CANDELA_AZURE_BASE_URL": fake}
        wanted.update({f"CANDELA_{name.upper()}_BASE_URL": f"{fake}/v1" for name in OPENAI_COMPATIBLE_PROVIDERS})
        return {name: value for name, value in wanted.items() if self._caller_env(name) is None}

    def _otlp_env(self) -> dict[str, str]:
        """The OpenTelemetry SDK's own variables pointing a service at the stack's collector, if any."""
        if self.config.otlp_endpoint is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.config.otlp_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": str(self.config.otlp_flush_interval_ms),
            # The GenAI client metrics (proxy) are exported on the same rhythm as the spans.
            "OTEL_METRIC_EXPORT_INTERVAL": str(self.config.otlp_flush_interval_ms),
        }

    def _caller_env(self, name: str) -> str | None:
        value = self.config.env.get(name) or os.environ.get(name)
        return value or None


OPENAI_COMPATIBLE_PROVIDERS: Final = (
    "groq",
    "mistral",
    "deepseek",
    "xai",
    "together",
    "fireworks",
    "openrouter",
    "perplexity",
    "cerebras",
    "vllm",
    "ollama",
)
"""The proxy's OpenAI-compatible family (candela_proxy.compatible.MEMBERS), served by the fake provider."""


def _workers_env(variable: str, workers: int | None) -> dict[str, str]:
    """``variable`` set to ``workers``; nothing when None (the caller's environment or the service decides)."""
    return {} if workers is None else {variable: str(workers)}


def _engine(value: str) -> KafkaEngine:
    if value == "memory":
        return "memory"
    if value == "s3":
        return "s3"
    raise ValueError(f"Kafka engine must be 'memory' or 's3', got {value!r}")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
