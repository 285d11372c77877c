"""What a stack would start and with which settings, decided before anything runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from candela_stack.__main__ import banner
from candela_stack.addresses import StackAddresses
from candela_stack.stack import (
    DEV_DATA_DIR,
    EVERYTHING,
    INFRA,
    SERVICE_MODULES,
    Bootstrap,
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
    monkeypatch.delenv("CANDELA_BEDROCK_BASE_URL", raising=False)
    stack = Stack(StackConfig.for_tests(tmp_path))
    fake = f"http://127.0.0.1:{stack.ports.fake_provider}"
    assert stack.uses_fake_provider
    assert Component.FAKE_PROVIDER in stack.components
    proxy_env = stack.service_env(Component.PROXY)
    assert proxy_env["CANDELA_OPENAI_BASE_URL"] == f"{fake}/v1"
    assert proxy_env["CANDELA_ANTHROPIC_BASE_URL"] == fake
    assert proxy_env["CANDELA_BEDROCK_BASE_URL"] == fake
    assert proxy_env["CANDELA_GEMINI_BASE_URL"] == proxy_env["CANDELA_VERTEX_BASE_URL"] == fake

    monkeypatch.setenv("CANDELA_OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    real = Stack(StackConfig.for_tests(tmp_path))
    assert not real.uses_fake_provider
    assert Component.FAKE_PROVIDER not in real.components
    assert real.fake_provider_url is None
    assert real.service_env(Component.PROXY)["CANDELA_OPENAI_BASE_URL"] == "http://127.0.0.1:1/v1"
    assert "CANDELA_GEMINI_BASE_URL" not in real.service_env(Component.PROXY)  # the real Gemini API

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
    monkeypatch.delenv("CANDELA_POSTGRES_DATABASE", raising=False)
    config = StackConfig.dev()
    assert (config.port_base, config.data_dir, config.kafka_partitions) == (9100, tmp_path.resolve(), 8)
    assert (config.kafka_engine, config.database, config.drop_database_on_stop) == ("s3", "candela_9100", False)
    stack = Stack(config)
    assert stack.service_token == "fixed-token"
    assert stack.gateway_url == "http://127.0.0.1:9100"

    monkeypatch.setenv("CANDELA_STACK_PORT_BASE", "seven")
    with pytest.raises(ValueError, match="CANDELA_STACK_PORT_BASE"):
        StackConfig.dev()


def test_a_second_dev_stack_needs_only_another_port_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another CANDELA_STACK_PORT_BASE gives a stack its own Postgres database and data dir, not the first's."""
    for name in ("CANDELA_STACK_PORT_BASE", "CANDELA_STACK_DIR", "CANDELA_POSTGRES_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    first = StackConfig.dev()
    assert (first.port_base, first.database, first.data_dir) == (7700, "candela", DEV_DATA_DIR.resolve())

    monkeypatch.setenv("CANDELA_STACK_PORT_BASE", "9100")
    second = StackConfig.dev()
    assert second.database == "candela_9100"
    assert second.data_dir == DEV_DATA_DIR.resolve().with_name(".candela-9100")
    first_stack, second_stack = Stack(first), Stack(second)
    assert first_stack.postgres_dsn != second_stack.postgres_dsn
    assert first_stack.service_env(Component.AUTH)["CANDELA_POSTGRES_DSN"].endswith("/candela")
    assert second_stack.service_env(Component.AUTH)["CANDELA_POSTGRES_DSN"].endswith("/candela_9100")

    monkeypatch.setenv("CANDELA_POSTGRES_DATABASE", "chosen")
    assert StackConfig.dev().database == "chosen", "an explicit database still wins"


def _python_snippet(text: str) -> str:
    """The banner's OpenAI Python example, dedented."""
    lines = text.splitlines()
    start = lines.index("  Or with the OpenAI Python SDK:") + 1
    end = lines.index("", start)
    return "\n".join(line.removeprefix("    ") for line in lines[start:end])


BOOTSTRAP = Bootstrap(organization_id="org", api_key_id="key-id", api_key="cdl-key", reused=False)


def test_the_banner_with_real_upstreams_names_no_fake_provider_and_reads_the_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANDELA_OPENAI_BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("CANDELA_ANTHROPIC_BASE_URL", "https://api.anthropic.com")
    stack = Stack(StackConfig.for_tests(tmp_path))
    text = banner(stack, BOOTSTRAP)
    assert "fake_provider" not in text
    assert str(stack.ports.fake_provider) not in text
    assert f"gateway {stack.ports.gateway}" in text, "the ports the stack does use are listed"
    snippet = _python_snippet(text)
    assert '"$OPENAI_API_KEY"' not in snippet, "a shell variable inside a Python string is sent as is"
    call = next(
        node
        for node in ast.walk(ast.parse(snippet))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "OpenAI"
    )
    api_key = next(keyword.value for keyword in call.keywords if keyword.arg == "api_key")
    assert ast.unparse(api_key) == "os.environ['OPENAI_API_KEY']"
    assert "import os" in snippet
    assert '-H "Authorization: Bearer $OPENAI_API_KEY"' in text, "the shell example expands it"


def test_the_banner_with_the_fake_provider_lists_its_port_and_a_runnable_snippet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANDELA_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("CANDELA_ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("CANDELA_BEDROCK_BASE_URL", raising=False)
    stack = Stack(StackConfig.for_tests(tmp_path))
    text = banner(stack, BOOTSTRAP)
    assert f"fake_provider {stack.ports.fake_provider}" in text
    snippet = _python_snippet(text)
    compile(snippet, "<banner>", "exec")
    assert 'api_key="sk-local-fake"' in snippet


def test_the_clickhouse_password_is_random_per_stack_and_reaches_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Stack(StackConfig.for_tests(tmp_path / "a")), Stack(StackConfig.for_tests(tmp_path / "b"))
    assert first.clickhouse_password != second.clickhouse_password
    assert len(first.clickhouse_password) >= 24
    for component in (Component.WRITER, Component.QUERY):
        env = first.service_env(component)
        assert (env["CANDELA_CLICKHOUSE_USER"], env["CANDELA_CLICKHOUSE_PASSWORD"]) == (
            first.clickhouse_user,
            first.clickhouse_password,
        )
    assert "CANDELA_CLICKHOUSE_PASSWORD" not in first.service_env(Component.PROXY), "only ClickHouse's clients"

    monkeypatch.setenv("CANDELA_STACK_DIR", str(tmp_path / "dev"))
    monkeypatch.setenv("CANDELA_CLICKHOUSE_PASSWORD", "chosen-password")
    assert Stack(StackConfig.dev()).clickhouse_password == "chosen-password"


def test_azure_and_the_openai_compatible_providers_use_the_fake_provider_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANDELA_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("CANDELA_ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("CANDELA_AZURE_BASE_URL", raising=False)
    monkeypatch.setenv("CANDELA_GROQ_BASE_URL", "http://127.0.0.1:2/openai/v1")
    stack = Stack(StackConfig.for_tests(tmp_path))
    fake = f"http://127.0.0.1:{stack.ports.fake_provider}"
    proxy_env = stack.service_env(Component.PROXY)
    assert proxy_env["CANDELA_AZURE_BASE_URL"] == fake
    assert proxy_env["CANDELA_MISTRAL_BASE_URL"] == proxy_env["CANDELA_VLLM_BASE_URL"] == f"{fake}/v1"
    assert proxy_env["CANDELA_GROQ_BASE_URL"] == "http://127.0.0.1:2/openai/v1"

    monkeypatch.setenv("CANDELA_OPENAI_BASE_URL", "https://api.openai.com/v1")
    real = Stack(StackConfig.for_tests(tmp_path)).service_env(Component.PROXY)
    assert "CANDELA_MISTRAL_BASE_URL" not in real
    assert "CANDELA_AZURE_BASE_URL" not in real


def test_make_run_runs_a_proxy_worker_per_core_and_a_test_stack_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANDELA_PROXY_WORKERS", raising=False)
    monkeypatch.setenv("CANDELA_STACK_DIR", str(tmp_path / "dev"))
    dev = StackAddresses(StackConfig.dev())
    assert dev.service_env(Component.PROXY)["CANDELA_PROXY_WORKERS"] == "0"  # one per core
    monkeypatch.setenv("CANDELA_PROXY_WORKERS", "3")
    assert StackAddresses(StackConfig.dev()).service_env(Component.PROXY)["CANDELA_PROXY_WORKERS"] == "3"
    tests = StackAddresses(StackConfig.for_tests(tmp_path / "test"))
    assert tests.service_env(Component.PROXY)["CANDELA_PROXY_WORKERS"] == "1"


def test_make_run_leaves_ingest_and_query_workers_to_the_services_and_a_test_stack_runs_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CANDELA_INGEST_WORKERS", "CANDELA_QUERY_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CANDELA_STACK_DIR", str(tmp_path / "dev"))
    dev = StackAddresses(StackConfig.dev())
    assert "CANDELA_INGEST_WORKERS" not in dev.service_env(Component.INGEST)  # the service's default
    assert "CANDELA_QUERY_WORKERS" not in dev.service_env(Component.QUERY)
    monkeypatch.setenv("CANDELA_INGEST_WORKERS", "3")
    monkeypatch.setenv("CANDELA_QUERY_WORKERS", "2")
    dev = StackAddresses(StackConfig.dev())
    assert dev.service_env(Component.INGEST)["CANDELA_INGEST_WORKERS"] == "3"
    assert dev.service_env(Component.QUERY)["CANDELA_QUERY_WORKERS"] == "2"
    # A test stack runs one of each whatever the caller's environment says.
    tests = StackAddresses(StackConfig.for_tests(tmp_path / "test"))
    assert tests.service_env(Component.INGEST)["CANDELA_INGEST_WORKERS"] == "1"
    assert tests.service_env(Component.QUERY)["CANDELA_QUERY_WORKERS"] == "1"
