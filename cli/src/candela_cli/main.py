"""``candela``: run a Candela mesh from the command line, through its gateway.

    candela org create acme                                  # service credential only
    candela key create --org ORG_ID --name ci --scope proxy --scope read
    candela key list [--org ORG_ID] [--include-revoked]
    candela key revoke KEY_ID
    candela health [--writer HOST:PORT ...]
    candela export --format jsonl --since 2026-12-01 [--filter JSON] [-o FILE]
    candela migrate [candela-migrate's options]              # straight to Postgres and ClickHouse
    candela replay dlq|parked|window [--from T] [--to T]     # straight to Kafka, with a progress bar

Organization, key, export and health commands talk to the gateway (gRPC; CANDELA_GATEWAY, default the
`make run` stack's). The credential is the service token (CANDELA_SERVICE_TOKEN_FILE or
CANDELA_SERVICE_TOKEN; `make run` writes it to a file and prints its path) or an ADMIN key
(CANDELA_API_KEY), which acts on its own organization only; with both, the service token is used.
Export always reads with the key (the query API serves one organization: the key's). Pass secrets in the
environment or a file rather than on the command line, where `ps` shows them. ``migrate`` and ``replay``
are the operator tools that need the stores themselves (they take the services' CANDELA_* variables).

Exit codes: 0 done, 1 the mesh refused or failed (the message says why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, cast

import grpc
from google.protobuf import json_format
from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_cli.health import gateway_health, grpc_health
from candela_cli.mesh import CredentialError, Mesh

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SCOPES = {
    "proxy": auth_service_pb2.API_KEY_SCOPE_PROXY,
    "read": auth_service_pb2.API_KEY_SCOPE_READ,
    "write": auth_service_pb2.API_KEY_SCOPE_WRITE,
    "admin": auth_service_pb2.API_KEY_SCOPE_ADMIN,
}
"""Scope names on the command line -> the API's enum."""

FORMATS = {"csv": query_service_pb2.EXPORT_FORMAT_CSV, "jsonl": query_service_pb2.EXPORT_FORMAT_JSONL}

Say = Callable[[str], None]


def _global_options(*, on_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (`candela --json key list` or
    `candela key list --json`). On a command they default to SUPPRESS, so that one not given there keeps
    the value given before the command."""
    options = argparse.ArgumentParser(add_help=False)

    def unset(default: object) -> object:
        return argparse.SUPPRESS if on_command else default

    options.add_argument(
        "--gateway", default=unset(None), help="gateway host:port (CANDELA_GATEWAY; default the make-run stack's)"
    )
    options.add_argument("--admin-url", default=unset(None), help="Envoy admin URL (CANDELA_ENVOY_ADMIN_URL)")
    options.add_argument(
        "--service-token-file", default=unset(None), help="file holding the service token (CANDELA_SERVICE_TOKEN_FILE)"
    )
    options.add_argument(
        "--api-key", default=unset(None), help="an ADMIN or READ key (prefer CANDELA_API_KEY: arguments show in `ps`)"
    )
    options.add_argument("--json", action="store_true", default=unset(False), help="print results as JSON")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="candela",
        description="Operate a running Candela mesh through its gateway.",
        epilog="Exit codes: 0 done, 1 the mesh refused or failed, 2 usage error.",
        parents=[_global_options(on_command=False)],
    )
    common = _global_options(on_command=True)
    commands = parser.add_subparsers(dest="command", required=True)

    org = commands.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    org_create = org.add_parser("create", help="create an organization (service credential)", parents=[common])
    org_create.add_argument("name")
    org_show = org.add_parser("show", help="an organization and its limits", parents=[common])
    org_show.add_argument("--org", default="", help="organization id (required with the service credential)")

    key = commands.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    key_create = key.add_parser("create", help="create an API key; its secret is printed once", parents=[common])
    key_create.add_argument("--org", default="", help="organization id (required with the service credential)")
    key_create.add_argument("--name", required=True)
    key_create.add_argument(
        "--scope", action="append", choices=sorted(SCOPES), required=True, help="repeat for several scopes"
    )
    key_create.add_argument("--expires", type=_timestamp, help="ISO 8601 expiry (UTC if naive)")
    key_list = key.add_parser("list", help="an organization's keys (never their secrets)", parents=[common])
    key_list.add_argument("--org", default="", help="organization id (required with the service credential)")
    key_list.add_argument("--include-revoked", action="store_true")
    key_revoke = key.add_parser(
        "revoke", help="revoke a key (services stop accepting it within seconds)", parents=[common]
    )
    key_revoke.add_argument("key_id")

    health = commands.add_parser(
        "health", help="every service's health, as the gateway sees it, and the writers'", parents=[common]
    )
    health.add_argument(
        "--writer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a writer's gRPC health address (repeat; CANDELA_WRITER_ADDRS, comma-separated)",
    )

    export = commands.add_parser(
        "export", help="export requests matching a filter (QueryService.ExportRequests)", parents=[common]
    )
    export.add_argument("--format", choices=sorted(FORMATS), default="jsonl")
    export.add_argument("--filter", help="a RequestFilter in proto3 JSON, e.g. '{\"conditions\": [...]}'")
    export.add_argument("--since", type=_timestamp, help="created at or after (ISO 8601, UTC if naive)")
    export.add_argument("--until", type=_timestamp, help="created before (ISO 8601, UTC if naive)")
    export.add_argument("--model", help="only this model")
    export.add_argument("--max-rows", type=int, default=0, help="at most this many rows (0: all)")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")

    commands.add_parser("migrate", help="apply pending Postgres and ClickHouse migrations", add_help=False)
    commands.add_parser("replay", help="replay the DLQ, parked letters or a time window", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, say: Say = print) -> int:
    """Runs one command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    # The store tools keep their own option parsers; everything after the command word is theirs.
    for word, tool in (("migrate", _migrate), ("replay", _replay)):
        if word in args_list:
            index = args_list.index(word)
            if all(arg.startswith("-") for arg in args_list[:index]):
                return tool(args_list[index + 1 :])
    args = _parser().parse_args(args_list)
    try:
        mesh = Mesh.from_environment(
            env,
            gateway=args.gateway,
            admin_url=args.admin_url,
            service_token_file=args.service_token_file,
            api_key=args.api_key,
        )
    except OSError as error:
        _complain(f"cannot read the service token file: {error}")
        return EXIT_USAGE
    try:
        return _dispatch(args, mesh, env, say)
    except CredentialError as error:
        _complain(str(error))
        return EXIT_USAGE
    except grpc.RpcError as error:
        _complain(_rpc_message(error, mesh))
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, mesh: Mesh, env: Mapping[str, str], say: Say) -> int:
    if args.command == "org":
        return _org(args, mesh, say)
    if args.command == "key":
        return _key(args, mesh, say)
    if args.command == "health":
        writers = [*args.writer, *filter(None, env.get("CANDELA_WRITER_ADDRS", "").split(","))]
        return _health(mesh, writers, as_json=args.json, say=say)
    return _export(args, mesh)


def _org(args: argparse.Namespace, mesh: Mesh, say: Say) -> int:
    with mesh.channel() as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        if args.action == "create":
            organization = stub.CreateOrganization(
                auth_service_pb2.CreateOrganizationRequest(name=args.name),
                metadata=mesh.metadata(internal_only=True),
                timeout=mesh.timeout_s,
            ).organization
        else:
            organization = stub.GetOrganization(
                auth_service_pb2.GetOrganizationRequest(organization_id=args.org),
                metadata=mesh.metadata(),
                timeout=mesh.timeout_s,
            ).organization
    if args.json:
        say(_json(organization))
    else:
        say(f"organization {organization.id}  {organization.name}")
    return EXIT_OK


def _key(args: argparse.Namespace, mesh: Mesh, say: Say) -> int:
    with mesh.channel() as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        if args.action == "create":
            request = auth_service_pb2.CreateApiKeyRequest(
                organization_id=args.org, name=args.name, scopes=sorted({SCOPES[scope] for scope in args.scope})
            )
            if args.expires is not None:
                request.expire_time.FromDatetime(args.expires)
            created = stub.CreateApiKey(request, metadata=mesh.metadata(), timeout=mesh.timeout_s)
            if args.json:
                say(json.dumps({"api_key": _as_dict(created.api_key), "secret": created.secret}))
            else:
                say(f"key {created.api_key.id}  {created.api_key.name}  scopes {_scopes(created.api_key.scopes)}")
                say(f"secret {created.secret}")
                say("(the secret is shown once: store it now)")
            return EXIT_OK
        if args.action == "list":
            keys = stub.ListApiKeys(
                auth_service_pb2.ListApiKeysRequest(organization_id=args.org, include_revoked=args.include_revoked),
                metadata=mesh.metadata(),
                timeout=mesh.timeout_s,
            ).api_keys
            if args.json:
                say(json.dumps([_as_dict(key) for key in keys]))
            else:
                for key in keys:
                    say(_key_line(key))
            return EXIT_OK
        revoked = stub.RevokeApiKey(
            auth_service_pb2.RevokeApiKeyRequest(api_key_id=args.key_id),
            metadata=mesh.metadata(),
            timeout=mesh.timeout_s,
        ).api_key
    say(_json(revoked) if args.json else f"revoked {_key_line(revoked)}")
    return EXIT_OK


def _health(mesh: Mesh, writers: Iterable[str], *, as_json: bool, say: Say) -> int:
    results = gateway_health(mesh.admin_url, mesh.timeout_s)
    results += [grpc_health("writer", address, mesh.timeout_s) for address in writers]
    if as_json:
        say(json.dumps([result.__dict__ for result in results]))
    else:
        width = max(len(result.service) for result in results)
        for result in results:
            state = "ok  " if result.healthy else "DOWN"
            say(f"{state}  {result.service:<{width}}  {result.endpoint:<22}  {result.detail}")
    return EXIT_OK if all(result.healthy for result in results) else EXIT_FAILED


def _export(args: argparse.Namespace, mesh: Mesh) -> int:
    request = query_service_pb2.ExportRequestsRequest(format=FORMATS[args.format], max_rows=args.max_rows)
    if args.filter:
        try:
            json_format.Parse(args.filter, request.filter)
        except json_format.ParseError as error:
            _complain(f"--filter is not a RequestFilter: {error}")
            return EXIT_USAGE
    for operator, bound in (("gte", args.since), ("lt", args.until)):
        if bound is not None:
            condition = request.filter.conditions.add(field="created_at", operator=operator)
            condition.value.string_value = bound.isoformat()  # RFC 3339, as the filter takes it
    if args.model:
        request.filter.conditions.add(field="model", operator="equals").value.string_value = args.model
    metadata = mesh.key_metadata()
    output: IO[bytes] = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    progress = Progress(
        SpinnerColumn(),
        TextColumn("exporting"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        disable=not args.output,  # the bar goes to the terminal, never into a file piped to stdout
        transient=False,
    )
    try:
        with mesh.channel() as channel, progress:
            task = progress.add_task("export", total=None)
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            for chunk in stub.ExportRequests(request, metadata=metadata, timeout=3600):
                output.write(chunk.data)
                progress.advance(task, len(chunk.data))
    finally:
        if args.output:
            output.close()
    return EXIT_OK


def _migrate(argv: list[str]) -> int:
    from candela_schema import cli as migrate_cli

    return migrate_cli.main(argv)


def _replay(argv: list[str]) -> int:
    from candela_ingest.writer import replay

    return replay.main(argv)


def _timestamp(value: str) -> datetime:
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _key_line(key: auth_service_pb2.ApiKey) -> str:
    state = "revoked" if key.HasField("revoke_time") else "active"
    return f"{key.id}  {key.prefix}...  {key.name:<24}  {_scopes(key.scopes):<24}  {state}"


def _scopes(scopes: Iterable[int]) -> str:
    names = {int(value): name for name, value in SCOPES.items()}
    return ",".join(names.get(int(scope), str(scope)) for scope in scopes)


def _as_dict(message: Any) -> dict[str, Any]:
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _json(message: Any) -> str:
    return json.dumps(_as_dict(message))


def _rpc_message(error: grpc.RpcError, mesh: Mesh) -> str:
    call = cast(grpc.Call, error)  # errors of the synchronous stubs are also grpc.Call objects
    if call.code() is grpc.StatusCode.UNAVAILABLE:
        return f"the gateway at {mesh.gateway} is unreachable or its upstream is down: {call.details()}"
    return f"{call.code().name}: {call.details()}"


def _complain(line: str) -> None:
    print(f"candela: error: {line}", file=sys.stderr)


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
