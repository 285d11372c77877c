"""``python -m candela_runtime.probe grpc|http``: one health probe, for a container's HEALTHCHECK.

    python -m candela_runtime.probe grpc              # grpc.health.v1 Check on 127.0.0.1:$CANDELA_GRPC_PORT
    python -m candela_runtime.probe http              # GET http://127.0.0.1:$CANDELA_HTTP_PORT/healthz

Exit code 0 when the service answers SERVING (gRPC) or 200 (HTTP), 1 otherwise, with the reason on stderr.
Images carry no grpc_health_probe binary: the service's own interpreter and grpcio do the check.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def grpc_serving(address: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when the server at ``address`` answers SERVING, else why not."""
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            # Errors of the synchronous stubs are also grpc.Call objects, which carry the status code.
            return f"{address}: {cast(grpc.Call, error).code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def http_ok(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``url`` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return None if reply.status == 200 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as error:
        error.close()  # the error is also the response: close its socket
        return f"{url}: HTTP {error.code}"
    except OSError as error:
        return f"{url}: {error}"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs one probe; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if args == ["grpc"]:
        failure = grpc_serving(f"127.0.0.1:{env.get('CANDELA_GRPC_PORT', '50051')}")
    elif args == ["http"]:
        failure = http_ok(f"http://127.0.0.1:{env.get('CANDELA_HTTP_PORT', '8080')}/healthz")
    else:
        print("usage: python -m candela_runtime.probe grpc|http", file=sys.stderr)
        return 2
    if failure is not None:
        print(f"unhealthy: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
