"""The launcher's port layout: offsets of one base, a base that fits, and free ports.

The supervisor's real child processes are integration tests (tests/integration/test_stack_processes.py).
"""

from __future__ import annotations

import socket

import pytest

from candela_stack.addresses import DEFAULT_CLUSTER, OWN_POSTGRES_OFFSET
from candela_stack.clickhouse_cluster import ClusterLayout
from candela_stack.ports import (
    MAX_PORT_BASE,
    MAX_WRITERS,
    PORT_BLOCK,
    SEAWEED_GRPC_OFFSET,
    StackPorts,
    busy_ports,
    ephemeral_port_start,
    pick_free_port_base,
    port_is_free,
)

pytestmark = pytest.mark.unit


def test_ports_are_offsets_of_the_base() -> None:
    ports = StackPorts.from_base(7700)
    assert (ports.gateway, ports.envoy_admin, ports.proxy_http, ports.writer_grpc) == (7700, 7701, 7710, 7715)
    assert (ports.fake_provider, ports.redis, ports.clickhouse_tcp, ports.clickhouse_http) == (7720, 7730, 7740, 7741)
    assert (ports.kafka, ports.seaweed_master, ports.seaweed_s3) == (7750, 7760, 7763)
    assert len(set(ports.named().values())) == len(ports.named())
    assert ports.seaweed_s3 + SEAWEED_GRPC_OFFSET in ports.all_bound()


def test_every_writer_slot_has_its_own_ports_reserved_with_the_stack() -> None:
    ports = StackPorts.from_base(7700)
    grpc = [ports.writer_grpc_port(index) for index in range(MAX_WRITERS)]
    metrics = [ports.writer_metrics_port(index) for index in range(MAX_WRITERS)]
    assert (grpc, metrics) == ([7715, 7716, 7717, 7718, 7719], [7775, 7776, 7777, 7778, 7779])
    bound = ports.all_bound()
    assert len(set(bound)) == len(bound), "no writer slot collides with another port"
    assert set(grpc + metrics) <= set(bound), "a free port base is free for every writer"
    with pytest.raises(ValueError, match="writer index"):
        ports.writer_grpc_port(MAX_WRITERS)


@pytest.mark.parametrize("base", [80, MAX_PORT_BASE, 65000])
def test_a_base_whose_ports_do_not_fit_is_refused(base: int) -> None:
    with pytest.raises(ValueError, match="port base"):
        StackPorts.from_base(base)


def test_a_picked_base_has_every_port_free_and_below_the_ephemeral_range() -> None:
    base = pick_free_port_base()
    ports = StackPorts.from_base(base)
    assert busy_ports(ports) == []
    # An outgoing connection may take any port of the ephemeral range at any moment.
    assert base >= 10000
    assert max(ports.all_bound()) < ephemeral_port_start()


def test_picked_bases_are_whole_blocks_holding_every_port_of_their_stack() -> None:
    """A stack's stopped Postgres or killed ClickHouse member leaves its port free for a while; a stack
    picking its base then must not be able to land on it, so stacks live in disjoint blocks."""
    bases = {pick_free_port_base() for _ in range(50)}
    assert all(base % PORT_BLOCK == 0 and 10000 <= base < 10000 + SEAWEED_GRPC_OFFSET for base in bases)
    assert len(bases) > 1, "randomised"
    for base in bases:
        ports = StackPorts.from_base(base)
        cluster = ClusterLayout.for_stack(DEFAULT_CLUSTER, ports)
        cluster_ports = [cluster.zookeeper_port] + [
            port for member in cluster.members for port in (member.tcp_port, member.http_port, member.interserver_port)
        ]
        for port in [*ports.all_bound(), base + OWN_POSTGRES_OFFSET, *cluster_ports]:
            block = port - SEAWEED_GRPC_OFFSET if port >= base + SEAWEED_GRPC_OFFSET else port
            assert base <= block < base + PORT_BLOCK, f"port {port} of the stack at {base} is outside its block"
    with pytest.raises(ValueError, match="no port base fits"):
        pick_free_port_base(low=10001, high=10099)


def test_a_listening_port_is_busy() -> None:

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])
