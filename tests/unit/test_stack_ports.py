"""The launcher's port layout: offsets of one base, a base that fits, and free ports.

The supervisor's real child processes are integration tests (tests/integration/test_stack_processes.py).
"""

from __future__ import annotations

import socket

import pytest

from candela_stack.ports import (
    MAX_PORT_BASE,
    MAX_WRITERS,
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


def test_a_listening_port_is_busy() -> None:

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])
