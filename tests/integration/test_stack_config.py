"""What a stack would start and with which settings, decided before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from candela_stack.stack import (
    EVERYTHING,
    INFRA,
    SERVICE_MODULES,
    Component,
    Stack,
    StackConfig,
    resolve_components,
)

pytestmark = pytest.mark.unit


def test_a_service_brings_what_it_needs() -> None:
    assert resolve_components(frozenset({Component.WRITER}), "memory") == {
        Component.WRITER,
        Component.KAFKA,
        Component.POSTGRES,
        Component.CLICKHOUSE,
    }
    assert Component.S3 in resolve_components(frozenset({Component.KAFKA}), "s3")
    assert Component.S3 not in resolve_components(frozenset({Component.KAFKA}), "memory")
    assert resolve_components(frozenset({Component.PROXY}), "memory") >= {
        Component.AUTH,
        Component.INGEST,
        Component.REDIS,
        Component.POSTGRES,
        Component.KAFKA,
        Component.S3,
    }


def test_the_fake_provider_stands_in_unless_an_upstream_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANDELA_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("CANDELA_ANTHROPIC_BASE_URL", raising=False)
    stack = Stack(StackConfig.for_tests(tmp_path))
    fake = f"http://127.0.0.1:{stack.ports.fake_provider}"
    assert stack.uses_fake_provider
    assert Component.FAKE_PROVIDER in stack.components
    proxy_env = stack.service_env(Component.PROXY)
    assert proxy_env["CANDELA_OPENAI_BASE_URL"] == f"{fake}/v1"
    assert proxy_env["CANDELA_ANTHROPIC_BASE_URL"] == fake

    monkeypatch.setenv("CANDELA_OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    real = Stack(StackConfig.for_tests(tmp_path))
    assert not real.uses_fake_provider
    assert Component.FAKE_PROVIDER not in real.components
    assert real.fake_provider_url is None
    assert real.service_env(Component.PROXY)["CANDELA_OPENAI_BASE_URL"] == "http://127.0.0.1:1/v1"

    infra = Stack(StackConfig.for_tests(tmp_path, components=INFRA))
    assert Component.FAKE_PROVIDER not in infra.components


def test_each_service_gets_its_addresses_and_the_callers_env_wins(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path, env={"CANDELA_LOG_LEVEL": "DEBUG", "CANDELA_KAFKA_GROUP": "mine"})
    stack = Stack(config)
    common = {"CANDELA_SERVICE_TOKEN": stack.service_token, "CANDELA_LOG_LEVEL": "DEBUG"}
    expected_ports = {
        Component.AUTH: stack.ports.auth_grpc,
        Component.PROMPTS: stack.ports.prompts_grpc,
        Component.INGEST: stack.ports.ingest_grpc,
        Component.WRITER: stack.ports.writer_grpc,
        Component.QUERY: stack.ports.query_grpc,
    }
    for component in SERVICE_MODULES:
        env = stack.service_env(component)
        assert common.items() <= env.items()
        if component in expected_ports:
            assert env["CANDELA_GRPC_PORT"] == str(expected_ports[component])
    writer = stack.service_env(Component.WRITER)
    assert writer["CANDELA_KAFKA_GROUP"] == "mine"
    assert writer["CANDELA_KAFKA_BOOTSTRAP"] == stack.kafka_bootstrap
    assert writer["CANDELA_KAFKA_DLQ_TOPIC"] == "candela.logs.dlq.v1"
    assert writer["CANDELA_POSTGRES_DSN"] == stack.postgres_dsn
    assert writer["CANDELA_CLICKHOUSE_PORT"] == str(stack.ports.clickhouse_tcp)
    ingest = stack.service_env(Component.INGEST)
    assert ingest["CANDELA_S3_ENDPOINT"] == stack.s3_endpoint
    assert ingest["CANDELA_S3_BUCKET"] == "candela"
    assert ingest["CANDELA_KAFKA_TOPIC"] == "candela.logs.v1"
    proxy = stack.service_env(Component.PROXY)
    assert proxy["CANDELA_HTTP_PORT"] == str(stack.ports.proxy_http)
    assert proxy["CANDELA_AUTH_ADDR"] == stack.auth_addr
    assert proxy["CANDELA_INGEST_ADDR"] == stack.ingest_addr
    assert proxy["CANDELA_REDIS_URL"] == stack.redis_url
    assert proxy["CANDELA_SPOOL_DIR"] == str(tmp_path.resolve() / "spool")
    assert stack.service_env(Component.QUERY)["CANDELA_AUTH_ADDR"] == stack.auth_addr


def test_test_stacks_are_isolated_from_each_other(tmp_path: Path) -> None:
    first = StackConfig.for_tests(tmp_path / "a")
    second = StackConfig.for_tests(tmp_path / "b")
    assert first.database != second.database
    assert first.database.startswith("candela_test_")
    assert first.drop_database_on_stop
    assert first.kafka_engine == "memory"
    assert first.components == EVERYTHING
    assert Stack(first).service_token != Stack(second).service_token


def test_the_dev_stack_reads_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDELA_STACK_PORT_BASE", "9100")
    monkeypatch.setenv("CANDELA_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("CANDELA_KAFKA_PARTITIONS", "8")
    monkeypatch.setenv("CANDELA_SERVICE_TOKEN", "fixed-token")
    monkeypatch.delenv("CANDELA_KAFKA_ENGINE", raising=False)
    config = StackConfig.dev()
    assert (config.port_base, config.data_dir, config.kafka_partitions) == (9100, tmp_path.resolve(), 8)
    assert (config.kafka_engine, config.database, config.drop_database_on_stop) == ("s3", "candela", False)
    stack = Stack(config)
    assert stack.service_token == "fixed-token"
    assert stack.gateway_url == "http://127.0.0.1:9100"

    monkeypatch.setenv("CANDELA_STACK_PORT_BASE", "seven")
    with pytest.raises(ValueError, match="CANDELA_STACK_PORT_BASE"):
        StackConfig.dev()
