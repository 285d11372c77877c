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

This module is the orchestration: starting, waiting, provisioning (databases, migrations, buckets,
topics) and stopping. Which port, URL, DSN, directory and environment each part gets is the address book,
candela_stack.addresses (StackConfig, Component, StackAddresses), which Stack extends.

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
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import grpc

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela_schema import migrator
from candela_stack import binaries, clickhouse, clickhouse_cluster, envoy_config, kafka, postgres, seaweed
from candela_stack.addresses import (
    BODIES_BUCKET,
    CLICKHOUSE_PASSWORD_FILE,
    CONSOLE_DIST,
    DEV_DATA_DIR,
    DLQ_TOPIC,
    EVERYTHING,
    INFRA,
    LOGS_TOPIC,
    REQUIRES,
    SERVICES,
    Component,
    StackAddresses,
    StackConfig,
    loopback_port,
    resolve_components,
)
from candela_stack.clickhouse_cluster import ClusterLayout, LocalCluster
from candela_stack.ports import LOOPBACK, port_is_free
from candela_stack.probes import grpc_serving, http_ok, tcp_open
from candela_stack.processes import ManagedProcess, Probe, Reporter, StartupError, Supervisor, clean_leftovers

# Stack and what a caller needs to configure one, in one import: the configuration and the components are
# defined in candela_stack.addresses (the address book) and exported here too.
__all__ = [
    "BODIES_BUCKET",
    "DEV_DATA_DIR",
    "EVERYTHING",
    "INFRA",
    "SERVICES",
    "SERVICE_MODULES",
    "Bootstrap",
    "Component",
    "Stack",
    "StackAddresses",
    "StackConfig",
    "loopback_port",
    "resolve_components",
]

SERVICE_TOKEN_METADATA = "candela-service-token"
"""The gRPC metadata key of the service credential (bootstrap() signs in to AuthService with it)."""

SERVICE_MODULES: dict[Component, str] = {
    Component.AUTH: "candela_auth",
    Component.PROMPTS: "candela_prompts",
    Component.INGEST: "candela_ingest",
    Component.WRITER: "candela_ingest.writer",
    Component.QUERY: "candela_query",
    Component.PROXY: "candela_proxy",
}
"""The module each service runs as (`python -m <module>`)."""


_STOP_GRACE: dict[Component, float] = {
    Component.WRITER: 15.0,  # a writer finishes its in-flight batch before it commits and exits
    Component.INGEST: 12.0,
    Component.PROXY: 12.0,  # the proxy flushes its log queue to ingest (or its spool)
    Component.CLICKHOUSE: 10.0,
}


@dataclass(frozen=True)
class Bootstrap:
    """The first organization and its all-scopes API key."""

    organization_id: str
    api_key_id: str
    api_key: str
    """The secret itself (shown once by AuthService; kept in `<data dir>/bootstrap.json`)."""
    reused: bool
    """True when an earlier run's key was still valid and is returned again."""


class Stack(StackAddresses):
    """A running (or startable) stack: its address book (StackAddresses) and the processes behind it;
    see the module docstring. Usable as a context manager."""

    def __init__(self, config: StackConfig, report: Reporter | None = None) -> None:
        """Prepares (does not start) a stack; `report` receives progress lines (e.g. print)."""
        super().__init__(config)
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
        self.clickhouse_cluster: LocalCluster | None = None
        """The local ClickHouse cluster once started (config.clickhouse_cluster), for fault drills."""

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
        after = set(REQUIRES.get(component, frozenset()))
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
        password_file = self.data_dir / CLICKHOUSE_PASSWORD_FILE
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(self.clickhouse_password)
        layout = self.clickhouse_cluster_layout
        if layout is not None:
            return self._launch_clickhouse_cluster(layout, binary, root)
        config_path = clickhouse.write_config(
            root,
            root / "data",
            self.log_dir,
            self.ports.clickhouse_tcp,
            self.ports.clickhouse_http,
            password=self.clickhouse_password,
        )
        return self._supervisor.start(
            "clickhouse",
            clickhouse.server_argv(binary, config_path),
            cwd=root,
            stop_grace=_STOP_GRACE[Component.CLICKHOUSE],
        )

    def _launch_clickhouse_cluster(self, layout: ClusterLayout, binary: Path, root: Path) -> ManagedProcess:
        """Starts ZooKeeper and every member (waiting for them); returns the first member, which clients dial."""
        # zooinspector is the one command Debian's zookeeper package puts on PATH: there iff ZooKeeper is.
        binaries.ensure_apt_binary(
            "zooinspector", clickhouse_cluster.ZOOKEEPER_APT_PACKAGES, self.log_dir / "apt-zookeeper.log", self._report
        )
        self.clickhouse_cluster = LocalCluster(
            layout,
            root,
            self.log_dir,
            self._supervisor,
            clickhouse_binary=binary,
            password=self.clickhouse_password,
            timeout=self.config.ready_timeout,
        )
        self.clickhouse_cluster.start()
        return self.clickhouse_cluster.process_of(layout.members[0])

    def _migrate_clickhouse(self) -> None:
        migrator.apply_clickhouse(
            self.clickhouse_host,
            self.clickhouse_port,
            self.clickhouse_database,
            user=self.clickhouse_user,
            password=self.clickhouse_password,
            cluster=self.config.clickhouse_cluster,
            alt_hosts=self.clickhouse_alt_hosts,
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
