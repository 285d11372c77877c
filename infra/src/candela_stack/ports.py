"""Port layout of one Candela stack: every port is a fixed offset from a single base port."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, fields

DEV_PORT_BASE = 7700
"""Base port of the dev stack (`make run`) unless CANDELA_STACK_PORT_BASE says otherwise."""

PORT_BASE_ENV = "CANDELA_STACK_PORT_BASE"

SEAWEED_GRPC_OFFSET = 10000
"""SeaweedFS binds each of its ports plus this offset for its internal gRPC."""

MAX_PORT_BASE = 55000
"""Highest usable base: SeaweedFS's gRPC ports (base + 63 + 10000) must stay below 65536."""

LOOPBACK = "127.0.0.1"

MAX_WRITERS = 5
"""Writer processes a stack can run: writer i (0-based) serves gRPC on base + 15 + i and metrics on
base + 75 + i, so they fill base + 15..19 and base + 75..79 (base + 20 is the fake provider's)."""


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port one stack listens on, all on 127.0.0.1."""

    base: int
    """The base the other ports are offsets of."""
    gateway: int
    """Envoy's listener: the one URL users talk to (HTTP/1.1 and h2c)."""
    envoy_admin: int
    """Envoy's admin interface."""
    proxy_http: int
    """The proxy service's HTTP port (behind Envoy)."""
    auth_grpc: int
    """AuthService."""
    ingest_grpc: int
    """IngestService."""
    query_grpc: int
    """QueryService."""
    prompts_grpc: int
    """PromptsService."""
    writer_grpc: int
    """The first ingest writer's gRPC health endpoint (the others follow it: see `writer_grpc_port`)."""
    auth_metrics: int
    """Prometheus scrape endpoints (GET /metrics) of the gRPC services and the writer."""
    ingest_metrics: int
    query_metrics: int
    prompts_metrics: int
    writer_metrics: int
    """The first writer's; the others follow it (see `writer_metrics_port`)."""
    fake_provider: int
    """The local fake OpenAI/Anthropic upstream."""
    redis: int
    """The stack's own Redis."""
    clickhouse_tcp: int
    """ClickHouse native protocol."""
    clickhouse_http: int
    """ClickHouse HTTP interface (readiness)."""
    kafka: int
    """The Kafka-protocol broker (Tansu)."""
    seaweed_master: int
    """SeaweedFS master (also binds +10000)."""
    seaweed_volume: int
    """SeaweedFS volume server (also binds +10000)."""
    seaweed_filer: int
    """SeaweedFS filer (also binds +10000)."""
    seaweed_s3: int
    """SeaweedFS S3 API (also binds +10000)."""

    @classmethod
    def from_base(cls, base: int) -> StackPorts:
        """Lays out the ports of a stack whose base port is `base`."""
        if not 1024 <= base < MAX_PORT_BASE:
            raise ValueError(f"stack port base must be in [1024, {MAX_PORT_BASE}), got {base}")
        return cls(
            base=base,
            gateway=base,
            envoy_admin=base + 1,
            proxy_http=base + 10,
            auth_grpc=base + 11,
            ingest_grpc=base + 12,
            query_grpc=base + 13,
            prompts_grpc=base + 14,
            writer_grpc=base + 15,
            auth_metrics=base + 71,
            ingest_metrics=base + 72,
            query_metrics=base + 73,
            prompts_metrics=base + 74,
            writer_metrics=base + 75,
            fake_provider=base + 20,
            redis=base + 30,
            clickhouse_tcp=base + 40,
            clickhouse_http=base + 41,
            kafka=base + 50,
            seaweed_master=base + 60,
            seaweed_volume=base + 61,
            seaweed_filer=base + 62,
            seaweed_s3=base + 63,
        )

    def named(self) -> dict[str, int]:
        """Every port by name, base excluded."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "base"}

    def writer_grpc_port(self, index: int) -> int:
        """The gRPC health port of writer process `index` (0-based, below MAX_WRITERS)."""
        return self.writer_grpc + _writer_index(index)

    def writer_metrics_port(self, index: int) -> int:
        """The Prometheus port of writer process `index` (0-based, below MAX_WRITERS)."""
        return self.writer_metrics + _writer_index(index)

    def all_bound(self) -> list[int]:
        """Every port the stack may bind: SeaweedFS's hidden gRPC ports (+10000) and every writer slot included."""
        ports = list(self.named().values())
        for index in range(1, MAX_WRITERS):
            ports.extend((self.writer_grpc_port(index), self.writer_metrics_port(index)))
        seaweed = (self.seaweed_master, self.seaweed_volume, self.seaweed_filer, self.seaweed_s3)
        ports.extend(port + SEAWEED_GRPC_OFFSET for port in seaweed)
        return sorted(ports)


def _writer_index(index: int) -> int:
    if not 0 <= index < MAX_WRITERS:
        raise ValueError(f"writer index must be in [0, {MAX_WRITERS}), got {index}")
    return index


def dev_port_base() -> int:
    """The dev stack's base port: CANDELA_STACK_PORT_BASE or 7700."""
    raw = os.environ.get(PORT_BASE_ENV, "").strip()
    if not raw:
        return DEV_PORT_BASE
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PORT_BASE_ENV} must be an integer port, got {raw!r}") from None


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP listener could bind `host:port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As every server of the stack does: then only a live listener, not a connection of a
        # just-stopped stack lingering in TIME_WAIT, makes the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def busy_ports(ports: StackPorts) -> list[int]:
    """The ports of `ports` (SeaweedFS's +10000 ones included) that something already holds."""
    return [port for port in ports.all_bound() if not port_is_free(port)]


STACK_PORT_SPAN = 80
"""Ports a stack uses above its base (base .. base + 79), SeaweedFS's +10000 ones aside."""

PORT_BLOCK = 100
"""Test stacks take their bases at multiples of this: a stack's ports, its private Postgres (base + 80) and
its ClickHouse cluster's other members (base + 80..88) included, all lie in its block (and SeaweedFS's in
the block 10000 above)."""

_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LINUX_EPHEMERAL_START = 32768


def ephemeral_port_start() -> int:
    """The lowest port the kernel may give an outgoing connection (Linux's default when unknown)."""
    try:
        with open(_EPHEMERAL_RANGE) as found:
            return int(found.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _LINUX_EPHEMERAL_START


def pick_free_port_base(low: int = 10000, high: int | None = None, attempts: int = 200) -> int:
    """A random base in [low, high), a multiple of PORT_BLOCK, whose every port (and SeaweedFS's +10000
    ones) is bindable now.

    By default every port stays below the ephemeral range: there, any outgoing connection (to Kafka, S3,
    ClickHouse...) may take a port between this check and the server binding it. Randomised so that
    concurrent test runs rarely collide; the servers' own start-up errors report a collision that happens.

    Whole blocks, because a check of bindable ports cannot see a port whose server is stopped for a
    while: an outage drill stops a stack's private Postgres (base + 80) or kills a ClickHouse member for
    30 s, and a stack picking its base meanwhile at exactly that port would take it (seen: the Postgres
    drill's restart failing with "Address already in use" as another stack's gateway held its port). Two
    blocks never share a port, and a block in use always has a live listener at its base's offsets. By
    default the bases stay below ``low`` + 10000, so no stack's block is another's SeaweedFS block either.
    """
    if high is None:
        # Below low + 10000 too: no base then lies in another stack's SeaweedFS block.
        high = min(
            MAX_PORT_BASE, ephemeral_port_start() - SEAWEED_GRPC_OFFSET - STACK_PORT_SPAN, low + SEAWEED_GRPC_OFFSET
        )
    if high > MAX_PORT_BASE:
        raise ValueError(f"high must be <= {MAX_PORT_BASE}")
    if high <= low:
        raise ValueError(f"no port base fits in [{low}, {high})")
    first, last = -(-low // PORT_BLOCK), (high - 1) // PORT_BLOCK
    if last < first:
        raise ValueError(f"no port base fits in [{low}, {high})")
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = rng.randint(first, last) * PORT_BLOCK
        if not busy_ports(StackPorts.from_base(base)):
            return base
    raise RuntimeError(f"no free stack port base found in [{low}, {high}) after {attempts} attempts")
