"""The `candela` operator CLI against the running mesh, through the gateway: a second organization, its
key used through the proxy, listed, revoked (and then refused), the health of every service, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from candela_cli.main import main
from candela_stack.stack import Stack
from tests.e2e.proxy_support import wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello from the CLI"}]}


@pytest.fixture(scope="module")
def cli_env(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What `make run` prints: the gateway, Envoy's admin and a file holding the service token."""
    token_file = tmp_path_factory.mktemp("cli") / "service-token"
    token_file.write_text(stack.service_token)
    token_file.chmod(0o600)
    return {
        "CANDELA_GATEWAY": stack.gateway_addr,
        "CANDELA_ENVOY_ADMIN_URL": stack.envoy_admin_url,
        "CANDELA_SERVICE_TOKEN_FILE": str(token_file),
    }


def candela(env: dict[str, str], *argv: str) -> tuple[int, list[str]]:
    """Runs the CLI in-process; returns its exit code and printed lines."""
    lines: list[str] = []
    code = main(list(argv), environ=env, say=lines.append)
    return code, lines


def chat(stack: Stack, key: str) -> httpx.Response:
    headers = {"Candela-Auth": f"Bearer {key}", "Authorization": "Bearer sk-fake-provider"}
    return httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)


def test_second_organization_gets_a_key_that_works_until_revoked(stack: Stack, cli_env: dict[str, str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    code, lines = candela(cli_env, "--json", "org", "create", name)
    assert code == 0
    organization = json.loads(lines[0])
    assert organization["name"] == name

    code, lines = candela(
        cli_env, "--json", "key", "create", "--org", organization["id"], "--name", "ci", "--scope", "proxy"
    )
    assert code == 0
    created = json.loads(lines[0])
    key_id, secret = created["api_key"]["id"], created["secret"]
    assert created["api_key"]["organization_id"] == organization["id"]

    reply = chat(stack, secret)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith("Echo: Say hello from the CLI")

    code, lines = candela(cli_env, "key", "list", "--org", organization["id"])
    assert code == 0
    (listed,) = lines
    assert listed.startswith(key_id)
    assert listed.endswith("active")
    assert secret not in listed

    code, lines = candela(cli_env, "key", "revoke", key_id)
    assert code == 0
    assert lines[0].startswith(f"revoked {key_id}")
    code, lines = candela(cli_env, "--json", "key", "list", "--org", organization["id"], "--include-revoked")
    assert [key["id"] for key in json.loads(lines[0]) if "revoke_time" in key] == [key_id]
    # Services stop accepting a revoked key within their key cache's lifetime (5 s).
    wait_until(lambda: chat(stack, secret).status_code == 401, timeout_s=15, what="the revoked key refused")


def test_creating_an_organization_needs_the_service_credential(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = {key: value for key, value in cli_env.items() if key != "CANDELA_SERVICE_TOKEN_FILE"}
    code, lines = candela({**env, "CANDELA_API_KEY": "ck-not-a-service-token"}, "org", "create", "nope")
    assert (code, lines) == (2, [])
    assert "needs the service credential" in capsys.readouterr().err


def test_health_lists_every_service_and_the_installed_command_exits_zero(stack: Stack, cli_env: dict[str, str]) -> None:
    writers = [f"127.0.0.1:{stack.ports.writer_grpc_port(index)}" for index in range(stack.config.writers)]
    argv = [str(Path(sys.executable).with_name("candela")), "health", *(f"--writer={w}" for w in writers)]
    done = subprocess.run(argv, env={**os.environ, **cli_env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert {row[1] for row in rows} == {"gateway", "auth", "ingest", "query", "prompts", "proxy", "writer"}
    assert all(row[0] == "ok" for row in rows)
    assert len([row for row in rows if row[1] == "writer"]) == len(writers)


def test_health_fails_when_a_writer_is_unreachable(cli_env: dict[str, str]) -> None:
    code, lines = candela(cli_env, "health", "--writer", "127.0.0.1:1")
    assert code == 1
    assert lines[-1].split()[:2] == ["DOWN", "writer"]


def test_export_writes_the_organization_requests(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = candela(cli_env, "--json", "org", "create", f"export-{uuid.uuid4().hex[:8]}")
    organization_id = json.loads(lines[0])["id"]
    _, lines = candela(
        cli_env,
        "--json",
        "key",
        "create",
        "--org",
        organization_id,
        "--name",
        "e",
        "--scope",
        "proxy",
        "--scope",
        "read",
    )
    secret = json.loads(lines[0])["secret"]
    request_ids = [chat(stack, secret).headers["candela-id"] for _ in range(2)]
    target = tmp_path / "logs.jsonl"
    env = {**cli_env, "CANDELA_API_KEY": secret}

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    def exported() -> set[str]:
        argv = ["export", "--format", "jsonl", "--model", "gpt-4o-mini", "--since", since, "-o", str(target)]
        assert candela(env, *argv)[0] == 0
        return {json.loads(line)["request_id"] for line in target.read_text().splitlines()}

    wait_until(lambda: exported() == set(request_ids), timeout_s=20, what="both requests exported")
    assert candela(env, "export", "--model", "no-such-model", "-o", str(target))[0] == 0
    assert target.read_text() == ""
    assert candela(env, "export", "--until", since, "-o", str(target))[0] == 0
    assert target.read_text() == "", "nothing of this organization is older than an hour"
    capsys.readouterr()
