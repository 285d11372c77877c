"""The local ClickHouse cluster's layout and member configs, and what the stack tells the services in cluster mode."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from candela_runtime.failover import parse_members
from candela_stack import clickhouse
from candela_stack.addresses import Component, StackAddresses, StackConfig, cluster_name
from candela_stack.clickhouse_cluster import ClusterLayout, member_sections, write_zookeeper_config
from candela_stack.ports import StackPorts

pytestmark = pytest.mark.unit


def test_a_stacks_cluster_has_its_own_ports_and_the_first_member_where_one_server_would_be() -> None:
    ports = StackPorts.from_base(20000)
    layout = ClusterLayout.for_stack("candela", ports)
    assert [(member.shard, member.replica) for member in layout.members] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    first = layout.members[0]
    assert (first.tcp_port, first.http_port) == (ports.clickhouse_tcp, ports.clickhouse_http)
    cluster_ports = layout.all_ports()
    assert len(set(cluster_ports)) == len(cluster_ports) == 13
    others = set(ports.all_bound()) - {ports.clickhouse_tcp, ports.clickhouse_http}
    assert not others & set(cluster_ports), "no clash with another part of the stack"


def test_a_members_config_names_its_shard_replica_zookeeper_and_every_member(tmp_path: Path) -> None:
    layout = ClusterLayout.on_ports("c1", list(range(30000, 30013)))
    member = layout.members[3]
    path = clickhouse.write_config(
        tmp_path / "config",
        tmp_path / "data",
        tmp_path / "logs",
        member.tcp_port,
        member.http_port,
        password="p<&>w",
        log_name=member.name,
        extra_sections=member_sections(layout, member, password="p<&>w"),
    )
    root = ET.parse(path).getroot()
    assert root.findtext("macros/shard") == "02"
    assert root.findtext("macros/replica") == "clickhouse-s2r2"
    assert root.findtext("zookeeper/node/port") == str(layout.zookeeper_port)
    assert root.findtext("interserver_http_port") == str(member.interserver_port)
    shards = root.findall("remote_servers/c1/shard")
    assert [shard.findtext("internal_replication") for shard in shards] == ["true", "true"]
    assert [[int(r.findtext("port") or 0) for r in shard.findall("replica")] for shard in shards] == [
        [layout.members[0].tcp_port, layout.members[1].tcp_port],
        [layout.members[2].tcp_port, layout.members[3].tcp_port],
    ]
    assert {r.findtext("password") for shard in shards for r in shard.findall("replica")} == {"p<&>w"}
    assert root.findtext("distributed_ddl/path") == "/clickhouse/task_queue/ddl"
    assert root.findtext("logger/log", "").endswith("clickhouse-s2r2.log")


def test_zookeeper_listens_on_loopback_only(tmp_path: Path) -> None:
    lines = write_zookeeper_config(tmp_path, 30000).read_text().splitlines()
    assert "clientPort=30000" in lines
    assert "clientPortAddress=127.0.0.1" in lines
    assert "admin.enableServer=false" in lines


def test_the_services_read_and_write_through_the_cluster_only_in_cluster_mode(tmp_path: Path) -> None:
    single = StackAddresses(StackConfig.for_tests(tmp_path / "one"))
    assert single.clickhouse_cluster_layout is None
    assert "CANDELA_CLICKHOUSE_CLUSTER" not in single.service_env(Component.WRITER)
    assert "CANDELA_CLICKHOUSE_ALT_HOSTS" not in single.service_env(Component.WRITER), "one server: no failover"

    clustered = StackAddresses(StackConfig.for_tests(tmp_path / "two", clickhouse_cluster="candela"))
    for component in (Component.WRITER, Component.QUERY):
        env = clustered.service_env(component)
        assert env["CANDELA_CLICKHOUSE_CLUSTER"] == "candela"
        assert env["CANDELA_CLICKHOUSE_PORT"] == str(clustered.ports.clickhouse_tcp)
        # Every member, the first where one server would be, the others to fail over to.
        layout = clustered.clickhouse_cluster_layout
        assert layout is not None
        members = parse_members(
            env["CANDELA_CLICKHOUSE_HOST"], int(env["CANDELA_CLICKHOUSE_PORT"]), env["CANDELA_CLICKHOUSE_ALT_HOSTS"]
        )
        assert members == tuple(("127.0.0.1", member.tcp_port) for member in layout.members)


def test_the_cluster_variable_turns_the_cluster_on_or_names_it() -> None:
    assert [cluster_name(value) for value in ("", "0", "1", "true", "analytics")] == [
        "",
        "",
        "candela",
        "candela",
        "analytics",
    ]
    with pytest.raises(ValueError, match="CANDELA_CLICKHOUSE_CLUSTER"):
        cluster_name("two words")


def test_a_cluster_stack_binds_every_members_port_once(tmp_path: Path) -> None:
    stack = StackAddresses(StackConfig.for_tests(tmp_path, clickhouse_cluster="candela"))
    layout = stack.clickhouse_cluster_layout
    assert layout is not None
    bound = stack.bound_ports()
    assert sorted(set(bound.values())) == sorted(bound.values()), "no port listed twice"
    assert set(layout.all_ports()) <= set(bound.values())
