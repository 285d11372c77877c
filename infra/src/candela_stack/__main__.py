"""`python -m candela_stack run | migrate | stop`: the dev stack behind `make run`, and its chores."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from candela_schema import migrator
from candela_stack import clickhouse, postgres
from candela_stack.addresses import (
    CONSOLE_DIST,
    DEFAULT_CLUSTER,
    INFRA,
    Component,
    StackConfig,
    saved_clickhouse_password,
)
from candela_stack.clickhouse_cluster import ClusterLayout
from candela_stack.ports import StackPorts
from candela_stack.processes import StartupError, clean_leftovers
from candela_stack.stack import Bootstrap, Stack

DUPLICATE_SIGNAL_WINDOW = 1.0
"""Seconds after a stop signal during which another one counts as the same (uv run re-sends it)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line and runs the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m candela_stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start the whole local stack until Ctrl-C (make run)")
    run_parser.add_argument(
        "--infra-only",
        action="store_true",
        help="start Postgres, Redis, ClickHouse, S3, Kafka and Envoy but no Candela service",
    )
    run_parser.add_argument(
        "--cluster",
        action="store_true",
        help="run ClickHouse as a local cluster (ZooKeeper, 2 shards x 2 replicas) named "
        f"{DEFAULT_CLUSTER!r}; CANDELA_CLICKHOUSE_CLUSTER=<name> does the same with that name",
    )
    commands.add_parser("migrate", help="apply pending Postgres and ClickHouse migrations to the dev stores")
    commands.add_parser("stop", help="stop processes left behind by a crashed `run` on the dev data dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return run(infra_only=args.infra_only, cluster=args.cluster)
    if args.command == "migrate":
        return migrate()
    return stop_leftovers()


def say(line: str) -> None:
    """Prints one progress line at once."""
    print(line, flush=True)


def run(*, infra_only: bool, cluster: bool = False) -> int:
    """Starts the dev stack, prints how to use it, and stops it in order on SIGINT or SIGTERM."""
    config = StackConfig.dev(components=INFRA) if infra_only else StackConfig.dev()
    if cluster and not config.clickhouse_cluster:
        config = replace(config, clickhouse_cluster=DEFAULT_CLUSTER)
    stack = Stack(config, report=say)
    phase = "starting"
    first_signal_at: float | None = None
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal phase, first_signal_at
        now = time.monotonic()
        if first_signal_at is not None and now - first_signal_at < DUPLICATE_SIGNAL_WINDOW:
            return  # the same Ctrl-C, delivered once by the terminal and once more by `uv run`
        if phase == "starting":
            phase, first_signal_at = "stopping", now
            say(f"\n{signal.Signals(signum).name}: aborting start-up")
            raise KeyboardInterrupt  # start() stops whatever it had started, then re-raises
        if phase == "running":
            phase, first_signal_at = "stopping", now
            stop_requested.set()
            return
        say("Stopping right now: killing what is still running")
        stack.kill_now()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    say(f"Starting Candela (port base {stack.ports.base}, data in {stack.data_dir}) ...")
    try:
        stack.start()
        bootstrap = None if infra_only else stack.bootstrap()
    except KeyboardInterrupt:
        phase = "stopping"
        stack.stop()  # idempotent: start() has already stopped what it started if it was interrupted
        say("Start-up aborted; everything that had started is stopped.")
        return 130
    except StartupError as error:
        phase = "stopping"
        stack.stop()
        say(f"\nStart-up failed: {error}")
        return 1
    except BaseException:
        phase = "stopping"
        stack.stop()
        raise
    phase = "running"
    if bootstrap is not None:
        save_service_token(stack)
    say(banner(stack, bootstrap))
    watch_until_stopped(stack, stop_requested)
    say("Stopping Candela (in reverse start order; Ctrl-C again to kill at once) ...")
    began = time.monotonic()
    stack.stop()
    say(f"Stopped in {time.monotonic() - began:.1f} s.")
    return 0


def watch_until_stopped(stack: Stack, stop_requested: threading.Event) -> None:
    """Waits for a stop request, reporting (once) any process that exits on its own meanwhile."""
    reported: set[int] = set()
    while not stop_requested.wait(0.5):
        for process in stack.processes():
            code = process.popen.poll()
            if code is not None and process.pid not in reported:
                reported.add(process.pid)
                say(f"\n!! {process.name} (pid {process.pid}) exited with code {code}; see {process.log_path}")


def banner(stack: Stack, bootstrap: Bootstrap | None) -> str:
    """What a user needs to start: URL, key, upstream, examples, timings, ports, logs."""
    lines = ["", "=" * 100, f"Candela is running: started in {stack.startup_seconds or 0:.1f} s", ""]
    lines.append(f"  Gateway     {stack.gateway_url}   (OpenAI SDK base_url: {stack.gateway_url}/v1)")
    if bootstrap is not None:
        origin = "reused from" if bootstrap.reused else "saved in"
        lines.append(f"  API key     {bootstrap.api_key}")
        lines.append(f"              organization {bootstrap.organization_id}; {origin} {stack.bootstrap_path}")
    if CONSOLE_DIST.is_dir():
        lines.append(f"  Console     {stack.gateway_url}/   (sign in with the API key)")
    if Component.PROXY in stack.components:
        if stack.uses_fake_provider:
            lines.append(f"  Upstream    local fake provider at {stack.fake_provider_url} (deterministic replies)")
            lines.append("              set CANDELA_OPENAI_BASE_URL / CANDELA_ANTHROPIC_BASE_URL to use real providers")
        else:
            lines.append(f"  Upstream    OpenAI: {stack.openai_base_url or 'the proxy default (the real API)'}")
            lines.append(f"              Anthropic: {stack.anthropic_base_url or 'the proxy default (the real API)'}")
            lines.append(f"              Bedrock: {stack.bedrock_base_url or 'the proxy default (the real API)'}")
    if bootstrap is not None:
        key = bootstrap.api_key
        # With a real upstream the key is the user's own: the shell reads it from the environment, and so
        # does the Python snippet (a "$OPENAI_API_KEY" inside a Python string would be sent as is).
        provider_key = "sk-local-fake" if stack.uses_fake_provider else "$OPENAI_API_KEY"
        python_key = '"sk-local-fake"' if stack.uses_fake_provider else 'os.environ["OPENAI_API_KEY"]'
        python_imports = ["    from openai import OpenAI"]
        if not stack.uses_fake_provider:
            python_imports.insert(0, "    import os")
        lines += [
            "",
            "  Try it with curl:",
            f"    curl {stack.gateway_url}/v1/chat/completions \\",
            f'      -H "Candela-Auth: Bearer {key}" \\',
            f'      -H "Authorization: Bearer {provider_key}" -H "Content-Type: application/json" \\',
            """      -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}'""",
            "",
            "  Or with the OpenAI Python SDK:",
            *python_imports,
            f'    client = OpenAI(base_url="{stack.gateway_url}/v1", api_key={python_key},',
            f'                    default_headers={{"Candela-Auth": "Bearer {key}"}})',
            '    reply = client.chat.completions.create(model="gpt-4o-mini",',
            '                                           messages=[{"role": "user", "content": "Say hello"}])',
            "    print(reply.choices[0].message.content)",
            "",
            "  Then query the logs (REST through the gateway):",
            f"    curl {stack.gateway_url}/v1/request/query \\",
            f'      -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\',
            """      -d '{"limit": 10}'""",
            "",
            "  Operate it with the candela CLI (the service credential is in a file only you can read):",
            f"    export CANDELA_GATEWAY={stack.gateway_addr} CANDELA_ENVOY_ADMIN_URL={stack.envoy_admin_url}",
            f"    export CANDELA_SERVICE_TOKEN_FILE={service_token_path(stack)}",
            "    uv run candela org create acme            # a second organization: prints its id",
            "    uv run candela key create --org ORG_ID --name ci --scope proxy --scope read",
            "    uv run candela key list --org ORG_ID;  uv run candela key revoke KEY_ID",
            "    uv run candela health "
            + " ".join(f"--writer 127.0.0.1:{stack.ports.writer_grpc_port(i)}" for i in range(stack.config.writers)),
            f"    CANDELA_API_KEY={key} uv run candela export --format jsonl -o logs.jsonl",
        ]
    lines += ["", "  Start-up    " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stack.timings.items())]
    lines += ["  Ports       " + _ports_line(stack.bound_ports())]
    lines += [f"  Logs        {stack.log_dir}/<name>.log   (data in {stack.data_dir})", ""]
    lines += ["Press Ctrl-C to stop everything.", "=" * 100]
    return "\n".join(lines)


def service_token_path(stack: Stack) -> Path:
    """Where `make run` keeps this run's service credential for the candela CLI (0600, rewritten each run)."""
    return stack.data_dir / "service-token"


def save_service_token(stack: Stack) -> None:
    """Writes the service credential to service_token_path(), readable by its owner only, never printed."""
    path = service_token_path(stack)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(stack.service_token)
    tmp.replace(path)


def _ports_line(ports: dict[str, int]) -> str:
    """The ports the stack's processes listen on, lowest first (none of a component it does not run)."""
    return ", ".join(f"{name} {port}" for name, port in sorted(ports.items(), key=lambda item: item[1]))


def migrate() -> int:
    """Applies pending migrations to the dev stack's Postgres database and ClickHouse (which must run)."""
    config = StackConfig.dev()
    ports = StackPorts.from_base(config.port_base)
    dsn = os.environ.get("CANDELA_POSTGRES_DSN")
    if not dsn:
        postgres.ensure_server(config.postgres_admin_dsn, say)
        postgres.create_database(config.postgres_admin_dsn, config.database)
        dsn = postgres.with_database(config.postgres_admin_dsn, config.database)
    applied = migrator.apply_postgres(dsn)
    say(f"Postgres: applied {len(applied)} migration(s) {applied}")
    host = os.environ.get("CANDELA_CLICKHOUSE_HOST", "127.0.0.1")
    port = int(os.environ.get("CANDELA_CLICKHOUSE_PORT", str(ports.clickhouse_tcp)))
    database = os.environ.get("CANDELA_CLICKHOUSE_DATABASE", config.clickhouse_database)
    password = os.environ.get("CANDELA_CLICKHOUSE_PASSWORD") or saved_clickhouse_password(config.data_dir)
    if password is None:
        say(f"ClickHouse: no CANDELA_CLICKHOUSE_PASSWORD and none saved in {config.data_dir} (start the stack first)")
        return 1
    user = os.environ.get("CANDELA_CLICKHOUSE_USER", clickhouse.USER)
    alt_hosts = os.environ.get("CANDELA_CLICKHOUSE_ALT_HOSTS", "")
    if not alt_hosts and "CANDELA_CLICKHOUSE_HOST" not in os.environ and config.clickhouse_cluster:
        # The dev stack's own cluster: its other members, should the first be down.
        layout = ClusterLayout.for_stack(config.clickhouse_cluster, ports)
        alt_hosts = ",".join(f"127.0.0.1:{member.tcp_port}" for member in layout.members[1:])
    applied = migrator.apply_clickhouse(
        host, port, database, user=user, password=password, cluster=config.clickhouse_cluster, alt_hosts=alt_hosts
    )
    say(f"ClickHouse {host}:{port}/{database}: applied {len(applied)} migration(s) {applied}")
    return 0


def stop_leftovers() -> int:
    """Stops what a crashed `run` left running from the dev data dir (recorded PIDs only)."""
    config = StackConfig.dev()
    try:
        stopped = clean_leftovers(config.data_dir / "run" / "pids.json", say)
    except RuntimeError as error:
        say(str(error))
        return 1
    say(f"Stopped {len(stopped)} leftover process(es)." if stopped else "Nothing left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
