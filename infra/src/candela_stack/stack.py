"""One Candela stack: the infrastructure, the services and the Envoy gateway, started and stopped as one.

The same launcher serves `make run` (the dev stack: fixed ports from 7700, data in `<repo>/.candela`,
durable Kafka in S3) and the pytest fixtures (a test stack: a free random port base, a temporary data
dir, a throwaway Postgres database, Kafka in memory). Everything binds 127.0.0.1 only, and every process
is started by this launcher and stopped by its PID, in reverse start order.

Start order follows dependencies: each component starts as soon as what it needs is ready (Redis,
ClickHouse, SeaweedFS, the broker with the memory engine, the fake provider and the Postgres database
at once; the broker with the S3 engine after SeaweedFS; auth after Postgres; prompts after auth; ingest,
writer and query after their stores; the proxy after auth, ingest, Redis and its upstream), and Envoy
opens last, onto a ready mesh. So the reverse order that stop() uses always stops a component before
anything it depends on.

Typical use in a test session::

    stack = Stack(StackConfig.for_tests(tmp_dir, components=EVERYTHING)).start()
    try:
        key = stack.bootstrap().api_key
        ...  # talk to stack.gateway_url
    finally:
        stack.stop()
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import grpc

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela_schema import migrator
from candela_stack import binaries, clickhouse, envoy_config, kafka, postgres, seaweed
from candela_stack.kafka import KafkaEngine
from candela_stack.ports import (
    DEV_PORT_BASE,
    LOOPBACK,
    MAX_WRITERS,
    StackPorts,
    dev_port_base,
    pick_free_port_base,
    port_is_free,
)
from candela_stack.probes import grpc_serving, http_ok, tcp_open
from candela_stack.processes import ManagedProcess, Probe, Reporter, StartupError, Supervisor, clean_leftovers


def _dev_data_dir() -> Path:
    """`<repo>/.candela` when running from a checkout (infra/src/candela_stack), else `./.candela`."""
    repo = Path(__file__).resolve().parents[3]
    if (repo / "infra" / "pyproject.toml").is_file():
        return repo / ".candela"
    return Path.cwd() / ".candela"


DEV_DATA_DIR = _dev_data_dir()
CONSOLE_DIST = Path(__file__).resolve().parents[3] / "console" / "dist"
"""The built web console the gateway serves at `/` when it exists (`make run` builds it)."""
"""The dev stack's data dir unless CANDELA_STACK_DIR says otherwise."""

LOGS_TOPIC = "candela.logs.v1"
DLQ_TOPIC = "candela.logs.dlq.v1"
WRITER_GROUP = "candela-writers"
BODIES_BUCKET = "candela"
SERVICE_TOKEN_METADATA = "candela-service-token"
DEFAULT_S3_ACCESS_KEY = "candela"
DEFAULT_S3_SECRET_KEY = "candela-local-secret"
OWN_POSTGRES_OFFSET = 80
DEV_DATABASE = "candela"
"""The dev stack's Postgres database on the default port base (see dev_database)."""
CLICKHOUSE_PASSWORD_FILE = Path("clickhouse") / "password"
"""Where (under the data dir) a started stack leaves its ClickHouse password for `make migrate` (mode 0600)."""
WRITERS_ENV = "CANDELA_STACK_WRITERS"
DEFAULT_WRITERS = 2
"""Writer processes unless CANDELA_STACK_WRITERS says otherwise (see StackConfig.writers): 2 measured ~10 %
more logs/s than 1 on 2 cores (bench/results/ingest-20261123T130700Z.md)."""
"""Port offset of the private Postgres cluster of a stack with `own_postgres`."""


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

SERVICE_MODULES: dict[Component, str] = {
    Component.AUTH: "candela_auth",
    Component.PROMPTS: "candela_prompts",
    Component.INGEST: "candela_ingest",
    Component.WRITER: "candela_ingest.writer",
    Component.QUERY: "candela_query",
    Component.PROXY: "candela_proxy",
}
"""The module each service runs as (`python -m <module>`)."""

_REQUIRES: dict[Component, frozenset[Component]] = {
    Component.AUTH: frozenset({Component.POSTGRES}),
    Component.PROMPTS: frozenset({Component.POSTGRES, Component.AUTH}),
    Component.INGEST: frozenset({Component.KAFKA, Component.S3, Component.POSTGRES}),
    Component.WRITER: frozenset({Component.KAFKA, Component.POSTGRES, Component.CLICKHOUSE}),
    Component.QUERY: frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH}),
    Component.PROXY: frozenset({Component.AUTH, Component.INGEST, Component.REDIS, Component.PROMPTS}),
}

_STOP_GRACE: dict[Component, float] = {
    Component.WRITER: 15.0,  # a writer finishes its in-flight batch before it commits and exits
    Component.INGEST: 12.0,
    Component.PROXY: 12.0,  # the proxy flushes its log queue to ingest (or its spool)
    Component.CLICKHOUSE: 10.0,
}


def resolve_components(requested: frozenset[Component], kafka_engine: KafkaEngine) -> frozenset[Component]:
    """`requested` plus everything it needs (e.g. the writer needs Kafka, Postgres and ClickHouse)."""
    resolved = set(requested)
    changed = True
    while changed:
        before = len(resolved)
        for component in list(resolved):
            resolved |= _REQUIRES.get(component, frozenset())
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
    kafka_partitions: int = 4
    """Partitions of the logs topic and of its dead-letter topic."""
    writers: int = DEFAULT_WRITERS
    """Writer processes (CANDELA_STACK_WRITERS), all in one consumer group: one Python process is bound to
    one core by the GIL, so more than one lets the writers use every core (partitions bound the useful
    number; at most MAX_WRITERS, see StackPorts)."""
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
            s3_access_key=environ.get("CANDELA_S3_ACCESS_KEY", DEFAULT_S3_ACCESS_KEY),
            s3_secret_key=environ.get("CANDELA_S3_SECRET_KEY", DEFAULT_S3_SECRET_KEY),
            service_token=environ.get("CANDELA_SERVICE_TOKEN") or None,
            clickhouse_password=environ.get("CANDELA_CLICKHOUSE_PASSWORD") or None,
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


@dataclass(frozen=True)
class Bootstrap:
    """The first organization and its all-scopes API key."""

    organization_id: str
    api_key_id: str
    api_key: str
    """The secret itself (shown once by AuthService; kept in `<data dir>/bootstrap.json`)."""
    reused: bool
    """True when an earlier run's key was still valid and is returned again."""


class Stack:
    """A running (or startable) stack; see the module docstring. Usable as a context manager."""

    def __init__(self, config: StackConfig, report: Reporter | None = None) -> None:
        """Prepares (does not start) a stack; `report` receives progress lines (e.g. print)."""
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
        self.timings: dict[str, float] = {}
        """Seconds each step took to become ready, in start order."""
        self.startup_seconds: float | None = None
        """Wall time of the whole start(), once started."""
        self._report = report
        self._supervisor = Supervisor(self.log_dir, pid_file=config.data_dir / "run" / "pids.json")
        self._database_created = False
        self._own_postgres_root: Path | None = None
        self._started = False
        self._abort = threading.Event()
        self._began = time.monotonic()
        self._binaries: dict[str, Path | None] = {}
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

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        """Starts the stack."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stops the stack."""
        self.stop()

    def pids(self) -> list[int]:
        """PIDs of every process this stack started and has not stopped yet, in start order."""
        return self._supervisor.pids()

    def processes(self) -> list[ManagedProcess]:
        """The processes this stack runs, in start order."""
        return list(self._supervisor.processes)

    def start(self) -> Self:
        """Starts every component and waits until each is ready; on any failure stops what started.

        Raises StartupError (with the failing process's log tail) or the underlying error.
        """
        if self._started:
            raise RuntimeError("this stack was already started; make a new Stack to start again")
        self._started = True
        began = self._began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self._say("start-up failed: stopping what was started")
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stops every process in reverse start order (idempotent); drops a test stack's database."""
        self._abort.set()
        errors: list[BaseException] = []
        try:
            self._supervisor.stop_all(self._report)
        except RuntimeError as error:
            errors.append(error)
        if Component.S3 in self.components and not self._supervisor.processes:
            for leftover in seaweed.socket_files(self.ports):
                leftover.unlink(missing_ok=True)
        if self._own_postgres_root is not None:
            # The whole private cluster goes (its server was stopped with the other processes).
            shutil.rmtree(self._own_postgres_root, ignore_errors=True)
            self._own_postgres_root = None
            self._database_created = False
        if self._database_created and self.config.drop_database_on_stop:
            try:
                postgres.drop_database(self.config.postgres_admin_dsn, self.config.database)
                self._database_created = False
            except (OSError, RuntimeError) as error:
                errors.append(error)
        if errors:
            raise RuntimeError("; ".join(str(error) for error in errors))

    # --- one component at a time (fault tests) ---------------------------------------------------

    def process_of(self, component: Component) -> ManagedProcess:
        """The running process of `component` (Postgres only with `own_postgres`; the first writer)."""
        return self.processes_of(component)[0]

    def processes_of(self, component: Component) -> list[ManagedProcess]:
        """The running processes of `component` in start order (several only for the writer)."""
        names = set(self._process_names(component))
        found = [process for process in self._supervisor.processes if process.name in names]
        if not found:
            raise KeyError(f"{component} has no running process in this stack")
        return found

    def stop_component(self, component: Component, *, kill: bool = False) -> None:
        """Stops one component's processes: politely (SIGTERM, grace, SIGKILL) or at once with `kill`.

        Nothing that depends on it is stopped: this is how a test makes one component unavailable.
        """
        processes = self.processes_of(component)
        if kill:
            for process in processes:
                if process.running():
                    os.killpg(process.pid, signal.SIGKILL)
        for process in reversed(processes):
            self._supervisor.stop(process, self._report)

    def start_component(self, component: Component) -> None:
        """Starts a component stopped by stop_component again, on the same ports and data, and waits
        until it is ready (its provisioning steps, e.g. migrations and topics, run again idempotently)."""
        if not self._started or self._abort.is_set():
            raise RuntimeError("start_component needs a started stack that is not stopping")
        if component not in self.components:
            raise ValueError(f"{component} is not part of this stack")
        self._finish(component, self._launch(component))

    def restart_component(self, component: Component, *, kill: bool = False) -> None:
        """stop_component then start_component."""
        self.stop_component(component, kill=kill)
        self.start_component(component)

    def kill_now(self) -> None:
        """SIGKILLs every remaining process group at once (e.g. on a second Ctrl-C during stop())."""
        self._supervisor.kill_remaining()

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

    def bootstrap(self, organization_name: str = "default") -> Bootstrap:
        """An organization and an admin+proxy+read+write API key, made once and reused while valid.

        Talks to AuthService through the gateway (or directly when Envoy is not part of the stack)
        with the service credential. The key is kept in `<data dir>/bootstrap.json`; a later call (or a
        later `make run` on the same data dir) returns it again if AuthService still accepts it.
        """
        target = self.gateway_addr if Component.ENVOY in self.components else self.auth_addr
        metadata = ((SERVICE_TOKEN_METADATA, self.service_token),)
        with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            previous = self._load_bootstrap()
            if previous is not None and self._still_valid(stub, metadata, previous):
                return replace(previous, reused=True)
            organization = stub.CreateOrganization(
                auth_service_pb2.CreateOrganizationRequest(name=organization_name),
                metadata=metadata,
                timeout=10,
            ).organization
            created = stub.CreateApiKey(
                auth_service_pb2.CreateApiKeyRequest(
                    organization_id=organization.id,
                    name="local admin (make run)",
                    scopes=[
                        auth_service_pb2.API_KEY_SCOPE_ADMIN,
                        auth_service_pb2.API_KEY_SCOPE_PROXY,
                        auth_service_pb2.API_KEY_SCOPE_READ,
                        auth_service_pb2.API_KEY_SCOPE_WRITE,
                    ],
                ),
                metadata=metadata,
                timeout=10,
            )
        result = Bootstrap(
            organization_id=organization.id,
            api_key_id=created.api_key.id,
            api_key=created.secret,
            reused=False,
        )
        self._save_bootstrap(result)
        return result

    # --- start-up steps --------------------------------------------------------------------------

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        leftovers = clean_leftovers(self.data_dir / "run" / "pids.json", self._report)
        if leftovers:
            self._say(f"stopped {len(leftovers)} processes left behind by an earlier crashed launcher")
        self._check_ports()
        # Installs (apt) happen one at a time, before anything runs in parallel.
        self._binaries = {
            "redis": self._redis_binary() if Component.REDIS in self.components else None,
            "clickhouse": self._clickhouse_binary() if Component.CLICKHOUSE in self.components else None,
        }
        self._run_graph({component: self._start_after(component) for component in self.components})

    def _start_after(self, component: Component) -> frozenset[Component]:
        """What must be ready before `component` starts (only parts of this stack count)."""
        if component is Component.ENVOY:
            return self.components - {Component.ENVOY}  # the gateway opens last, onto a ready mesh
        after = set(_REQUIRES.get(component, frozenset()))
        if component is Component.KAFKA and self.config.kafka_engine == "s3":
            after.add(Component.S3)
        if component is Component.PROXY:
            after.add(Component.FAKE_PROVIDER)
        return frozenset(after) & self.components

    def _launch(self, component: Component) -> list[ManagedProcess]:
        """Starts the processes of `component`: none for Postgres when it is the machine's server, one
        per writer for the writer, else one."""
        launchers: dict[Component, Callable[[], ManagedProcess]] = {
            Component.REDIS: self._launch_redis,
            Component.CLICKHOUSE: self._launch_clickhouse,
            Component.S3: self._launch_seaweed,
            Component.KAFKA: self._launch_broker,
            Component.FAKE_PROVIDER: self._launch_fake_provider,
            Component.ENVOY: self._launch_envoy,
        }
        if component is Component.POSTGRES:
            return [self._launch_own_postgres()] if self.config.own_postgres else []
        if component is Component.WRITER:
            return [self._launch_service(component, index) for index in range(self.config.writers)]
        if component in SERVICE_MODULES:
            return [self._launch_service(component)]
        return [launchers[component]()]

    def _finish(self, component: Component, processes: list[ManagedProcess]) -> None:
        """Waits until every process of `component` is ready, then provisions it (migrations, topics)."""
        if not processes:
            self._timed("postgres", self._prepare_postgres)
            return
        process = processes[0]
        if component is Component.POSTGRES:
            self._await(process, lambda: postgres.is_reachable(self.postgres_admin_dsn))
            self._timed("postgres database", self._prepare_postgres)
        elif component is Component.REDIS:
            self._await(process, lambda: tcp_open(self.ports.redis))
        elif component is Component.CLICKHOUSE:
            self._await(process, lambda: clickhouse.is_ready(self.ports.clickhouse_http))
            self._timed("clickhouse migrations", self._migrate_clickhouse)
        elif component is Component.S3:
            self._await_seaweed(process)
        elif component is Component.KAFKA:
            self._await(process, lambda: kafka.is_ready(self.ports.kafka))
            self._timed("kafka topics", self._create_topics)
        elif component is Component.FAKE_PROVIDER:
            self._await(process, lambda: http_ok(f"http://{LOOPBACK}:{self.ports.fake_provider}/healthz"))
        elif component is Component.ENVOY:
            self._await(process, lambda: http_ok(f"{self.envoy_admin_url}/ready", expect_body=b"LIVE"))
        else:
            for instance, service in enumerate(processes):  # several only for the writer
                self._await(service, self._service_probe(component, instance))

    def _run_graph(self, after: dict[Component, frozenset[Component]]) -> None:
        """Starts each component as soon as what it comes after is ready, until all are ready.

        Processes are launched from the calling thread only: Envoy asks the kernel for SIGTERM when the
        thread that started it exits, so a launch from a short-lived worker thread would kill it. The
        waits (and migrations, buckets, topics) run in worker threads, so each component's timing is
        its own. The first failure aborts the rest (waits end at once, nothing new is launched) and is
        raised once every worker has ended, so the following stop() sees every process started.
        """
        order = list(Component)  # ties launch in the documented order: auth before prompts, ...
        pending = sorted(after, key=order.index)
        ready: set[Component] = set()
        with concurrent.futures.ThreadPoolExecutor(len(pending), thread_name_prefix="candela-start") as pool:
            running: dict[concurrent.futures.Future[None], Component] = {}
            try:
                while pending or running:
                    for component in [c for c in pending if after[c] <= ready]:
                        pending.remove(component)
                        processes = self._launch(component)
                        running[pool.submit(self._finish, component, processes)] = component
                    if not running:
                        raise RuntimeError(f"cannot order the start of {pending}: circular dependencies")
                    finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        component = running.pop(future)
                        future.result()
                        ready.add(component)
            except BaseException:
                self._abort.set()  # the other waits end now; leaving the block joins their threads
                raise

    def _check_ports(self) -> None:
        clashes = sorted((port, name) for name, port in self._wanted_ports().items() if not port_is_free(port))
        if clashes:
            listing = ", ".join(f"{port} ({name})" for port, name in clashes)
            raise StartupError(
                f"ports already in use: {listing}. Another stack may be running on port base "
                f"{self.ports.base}; stop it or set CANDELA_STACK_PORT_BASE to another base."
            )

    def bound_ports(self) -> dict[str, int]:
        """Every port this stack's processes listen on, by name (only the components it runs)."""
        metrics = {
            f"{component.value}_metrics": port
            for component, port in self.metrics_ports().items()
            if component in self.components and component is not Component.WRITER  # listed per writer
        }
        return self._wanted_ports() | metrics

    def _wanted_ports(self) -> dict[str, int]:
        p = self.ports
        by_component: dict[Component, dict[str, int]] = {
            Component.REDIS: {"redis": p.redis},
            Component.CLICKHOUSE: {"clickhouse_tcp": p.clickhouse_tcp, "clickhouse_http": p.clickhouse_http},
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

    def _launch_own_postgres(self) -> ManagedProcess:
        if self._own_postgres_root is None:
            self._own_postgres_root = postgres.init_cluster(self._report)
        argv = postgres.cluster_server_argv(self._own_postgres_root, self.own_postgres_port)
        return self._supervisor.start(
            "postgres", argv, cwd=self._own_postgres_root, stop_grace=10.0, stop_signal=signal.SIGINT
        )

    def _prepare_postgres(self) -> None:
        if not self.config.own_postgres:
            postgres.ensure_server(self.config.postgres_admin_dsn, self._report)
        created = postgres.create_database(self.postgres_admin_dsn, self.config.database)
        self._database_created = self._database_created or created
        migrator.apply_postgres(self.postgres_dsn)

    def _redis_binary(self) -> Path:
        return binaries.ensure_apt_binary(
            "redis-server", ["redis-server"], self.log_dir / "apt-redis.log", self._report
        )

    def _clickhouse_binary(self) -> Path:
        return binaries.ensure_apt_binary(
            "clickhouse-server", clickhouse.APT_PACKAGES, self.log_dir / "apt-clickhouse.log", self._report
        )

    def _launch_redis(self) -> ManagedProcess:
        binary = self._binaries["redis"] or self._redis_binary()
        work_dir = self.data_dir / "redis"
        work_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            "--port", str(self.ports.redis),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(work_dir),
        ]  # fmt: skip
        return self._supervisor.start("redis", argv, cwd=work_dir)

    def _launch_clickhouse(self) -> ManagedProcess:
        binary = self._binaries["clickhouse"] or self._clickhouse_binary()
        root = self.data_dir / "clickhouse"
        config_path = clickhouse.write_config(
            root,
            root / "data",
            self.log_dir,
            self.ports.clickhouse_tcp,
            self.ports.clickhouse_http,
            password=self.clickhouse_password,
        )
        password_file = self.data_dir / CLICKHOUSE_PASSWORD_FILE
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(self.clickhouse_password)
        return self._supervisor.start(
            "clickhouse",
            clickhouse.server_argv(binary, config_path),
            cwd=root,
            stop_grace=_STOP_GRACE[Component.CLICKHOUSE],
        )

    def _migrate_clickhouse(self) -> None:
        migrator.apply_clickhouse(
            self.clickhouse_host,
            self.clickhouse_port,
            self.clickhouse_database,
            user=self.clickhouse_user,
            password=self.clickhouse_password,
        )

    def _launch_seaweed(self) -> ManagedProcess:
        root = self.data_dir / "seaweedfs"
        identities = seaweed.write_s3_identities(root / "s3.json", self.config.s3_access_key, self.config.s3_secret_key)
        seaweed.write_security(root / "security.toml")  # `weed` reads it from its working dir, `root`
        argv = seaweed.server_argv(
            binaries.venv_binary("weed"),
            root / "data",
            identities,
            self.ports,
            volume_size_limit_mb=self.config.seaweed_volume_size_limit_mb,
        )
        return self._supervisor.start("seaweedfs", argv, cwd=root, stop_grace=self.config.seaweed_stop_grace)

    def _await_seaweed(self, process: ManagedProcess) -> None:
        s3 = seaweed.client(self.s3_endpoint, self.config.s3_access_key, self.config.s3_secret_key)
        self._await(process, lambda: seaweed.can_list_buckets(s3))
        began = time.monotonic()
        seaweed.ensure_buckets(s3, [BODIES_BUCKET, kafka.TANSU_BUCKET])
        self._supervisor.wait_ready(
            process,
            lambda: seaweed.can_write_and_read(s3, BODIES_BUCKET),
            timeout=self.config.ready_timeout,
            abort=self._abort,
        )
        self.timings["s3 buckets"] = time.monotonic() - began

    def _launch_broker(self) -> ManagedProcess:
        env = dict(os.environ)
        if self.config.kafka_engine == "s3":
            env.update(kafka.broker_env(self.s3_endpoint, self.config.s3_access_key, self.config.s3_secret_key))
        argv = kafka.broker_argv(binaries.tansu_binary(), self.ports.kafka, self.config.kafka_engine)
        return self._supervisor.start("kafka", argv, env=env, cwd=self.data_dir)

    def _create_topics(self) -> None:
        partitions = self.config.kafka_partitions
        kafka.ensure_topics(self.kafka_bootstrap, {LOGS_TOPIC: partitions, DLQ_TOPIC: partitions})

    def _launch_fake_provider(self) -> ManagedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.config.env}
        argv = [sys.executable, "-m", "candela_stack.fake_provider", "--port", str(self.ports.fake_provider)]
        return self._supervisor.start("fake-provider", argv, env=env, cwd=self.data_dir)

    def _launch_service(self, component: Component, instance: int = 0) -> ManagedProcess:
        module = SERVICE_MODULES[component]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise StartupError(f"cannot start {component}: module {module} is not installed (run `uv sync`)")
        if component is Component.PROXY:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        return self._supervisor.start(
            self._process_names(component)[instance],
            [sys.executable, "-m", module],
            env=self.service_env(component, instance),
            cwd=self.data_dir,
            stop_grace=_STOP_GRACE.get(component, 10.0),
        )

    def _service_probe(self, component: Component, instance: int = 0) -> Probe:
        if component is Component.PROXY:
            return lambda: http_ok(f"{self.proxy_url}/healthz")
        address = {
            Component.AUTH: self.auth_addr,
            Component.PROMPTS: self.prompts_addr,
            Component.INGEST: self.ingest_addr,
            Component.WRITER: f"{LOOPBACK}:{self.ports.writer_grpc_port(instance)}",
            Component.QUERY: self.query_addr,
        }[component]
        return lambda: grpc_serving(address)

    def _process_names(self, component: Component) -> list[str]:
        """Process (and log file) names of `component`: `writer`, `writer-2`, ... for the writers."""
        if component is Component.WRITER:
            return ["writer", *(f"writer-{index + 1}" for index in range(1, self.config.writers))]
        return [_PROCESS_NAMES.get(component, component.value)]

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
                **clickhouse_env,
                **s3,
            }
        if component is Component.PROXY:
            env = {
                "CANDELA_HTTP_PORT": str(p.proxy_http),
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
            return env
        raise ValueError(f"{component} is not a service")

    def _otlp_env(self) -> dict[str, str]:
        """The OpenTelemetry SDK's own variables pointing a service at the stack's collector, if any."""
        if self.config.otlp_endpoint is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.config.otlp_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": str(self.config.otlp_flush_interval_ms),
        }

    def _launch_envoy(self) -> ManagedProcess:
        envoy = binaries.envoy_binary()
        envoy_dir = self.data_dir / "envoy"
        config = envoy_config.build_config(
            self.ports,
            envoy_config.descriptor_set_path(envoy_dir),
            access_log=self.log_dir / "envoy-access.log",
            otlp_port=loopback_port(self.config.otlp_endpoint) if self.config.otlp_endpoint else None,
            otlp_flush_interval_ms=self.config.otlp_flush_interval_ms,
            body_limits=self._gateway_body_limits(),
            console_dist=CONSOLE_DIST if CONSOLE_DIST.is_dir() else None,
        )
        config_path = envoy_config.write(config, envoy_dir / "envoy.yaml")
        envoy_config.validate(envoy, config_path)
        argv = envoy_config.server_argv(envoy, config_path, base_id=self.ports.base)
        return self._supervisor.start("envoy", argv, cwd=envoy_dir)

    def _gateway_body_limits(self) -> envoy_config.BodyLimits:
        """The services' own request size limits, as they will read them, for Envoy to enforce just above."""
        defaults = envoy_config.BodyLimits()
        proxy_env = self.service_env(Component.PROXY)
        ingest_env = self.service_env(Component.INGEST)
        return envoy_config.BodyLimits(
            proxy=int(proxy_env.get("CANDELA_MAX_BODY_BYTES", defaults.proxy)),
            ingest=int(ingest_env.get("CANDELA_MAX_CALL_BYTES", defaults.ingest)),
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _await(self, process: ManagedProcess, probe: Probe) -> None:
        seconds = self._supervisor.wait_ready(process, probe, timeout=self.config.ready_timeout, abort=self._abort)
        self.timings[process.name] = seconds
        self._say(f"  {process.name:<22} ready in {seconds:5.2f} s  (at +{self._elapsed():5.2f} s, pid {process.pid})")

    def _timed(self, name: str, step: Callable[[], None]) -> None:
        began = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - began
        self._say(f"  {name:<22} ready in {self.timings[name]:5.2f} s  (at +{self._elapsed():5.2f} s)")

    def _elapsed(self) -> float:
        return time.monotonic() - self._began

    def _say(self, line: str) -> None:
        if self._report is not None:
            self._report(line)

    def _caller_env(self, name: str) -> str | None:
        value = self.config.env.get(name) or os.environ.get(name)
        return value or None

    def _load_bootstrap(self) -> Bootstrap | None:
        try:
            record = json.loads(self.bootstrap_path.read_text())
            return Bootstrap(
                organization_id=str(record["organization_id"]),
                api_key_id=str(record["api_key_id"]),
                api_key=str(record["api_key"]),
                reused=True,
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as error:
            self._say(f"  ignoring unreadable {self.bootstrap_path}: {error}")
            return None

    def _save_bootstrap(self, result: Bootstrap) -> None:
        record = {
            "organization_id": result.organization_id,
            "api_key_id": result.api_key_id,
            "api_key": result.api_key,
        }
        tmp = self.bootstrap_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.bootstrap_path)

    @staticmethod
    def _still_valid(
        stub: auth_service_pb2_grpc.AuthServiceStub,
        metadata: tuple[tuple[str, str], ...],
        previous: Bootstrap,
    ) -> bool:
        try:
            resolved = stub.Authenticate(
                auth_service_pb2.AuthenticateRequest(api_key=previous.api_key), metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            # Errors of the synchronous stubs are also grpc.Call objects, which carry the status code.
            code = cast(grpc.Call, error).code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                return False
            raise
        return bool(resolved.organization_id == previous.organization_id)


_PROCESS_NAMES: dict[Component, str] = {Component.S3: "seaweedfs", Component.FAKE_PROVIDER: "fake-provider"}
"""Process (and log file) names that differ from the component's value."""


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
