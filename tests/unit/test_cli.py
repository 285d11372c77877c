"""The candela CLI without a mesh: what `make run` tells about it, its usage errors, an unreachable gateway."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from candela_cli.main import main
from candela_cli.mesh import Mesh
from candela_stack.__main__ import banner, save_service_token, service_token_path
from candela_stack.stack import Bootstrap, Stack, StackConfig

pytestmark = pytest.mark.unit

BOOTSTRAP = Bootstrap(organization_id="org", api_key_id="key-id", api_key="cdl-key", reused=False)


def test_the_banner_points_the_cli_at_the_token_file_and_the_cli_reads_it(tmp_path: Path) -> None:
    stack = Stack(StackConfig.for_tests(tmp_path))
    save_service_token(stack)
    text = banner(stack, BOOTSTRAP)
    assert stack.service_token not in text, "the service credential is never printed"
    assert "uv run candela org create" in text
    exports = dict(
        word.split("=", 1)
        for line in text.splitlines()
        if line.strip().startswith("export ")
        for word in shlex.split(line)[1:]
    )
    assert exports["CANDELA_SERVICE_TOKEN_FILE"] == str(service_token_path(stack))
    assert service_token_path(stack).stat().st_mode & 0o777 == 0o600
    mesh = Mesh.from_environment(exports)
    assert (mesh.gateway, mesh.admin_url) == (stack.gateway_addr, stack.envoy_admin_url)
    assert mesh.service_token == stack.service_token
    for index in range(stack.config.writers):
        assert f"--writer 127.0.0.1:{stack.ports.writer_grpc_port(index)}" in text


def test_migrate_and_replay_hand_their_arguments_to_the_store_tools(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--only", "postgres"], environ={}) == 2, "candela-migrate's usage error: no DSN"
    assert "candela-migrate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as replay_usage:
        main(["replay", "window"], environ={})
    assert replay_usage.value.code == 2
    assert "--bootstrap" in capsys.readouterr().err


def test_a_command_without_a_credential_says_which_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "list"], environ={"CANDELA_GATEWAY": "127.0.0.1:1"}) == 2
    assert "CANDELA_SERVICE_TOKEN_FILE" in capsys.readouterr().err
    assert main(["export"], environ={"CANDELA_SERVICE_TOKEN": "t"}) == 2
    assert "READ key" in capsys.readouterr().err


def test_an_unreachable_gateway_is_a_one_line_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "list"], environ={"CANDELA_GATEWAY": "127.0.0.1:1", "CANDELA_API_KEY": "k"}) == 1
    assert "127.0.0.1:1 is unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--gateway", "127.0.0.1:1", "--api-key", "k", "key", "list"],
        ["key", "list", "--gateway", "127.0.0.1:1", "--api-key", "k"],
        ["--gateway", "127.0.0.1:1", "key", "list", "--api-key", "k"],
    ],
)
def test_options_count_before_or_after_the_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, environ={"CANDELA_GATEWAY": "127.0.0.1:2"}) == 1
    assert "127.0.0.1:1 is unreachable" in capsys.readouterr().err
