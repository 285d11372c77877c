"""What `make run` tells an operator about the candela CLI: where the service token is, never the token."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

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
