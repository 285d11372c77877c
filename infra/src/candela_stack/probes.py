"""Readiness probes (HTTP, TCP, gRPC health) and a helper to run a coroutine from synchronous code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import urllib.error
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from candela_stack.ports import LOOPBACK

T = TypeVar("T")

# Never route the stack's own loopback probes through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GETs `url` directly (no proxy from the environment); returns (status, body), HTTP errors included."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def http_ok(url: str, expect_body: bytes | None = None, timeout: float = 1.0) -> bool:
    """True if GET `url` answers 200 (and, if given, a body that starts with `expect_body`)."""
    try:
        status, body = http_get(url, timeout)
    except (OSError, urllib.error.URLError):
        return False
    return status == 200 and (expect_body is None or body.startswith(expect_body))


def tcp_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def grpc_serving(address: str, service: str = "", timeout: float = 1.0) -> bool:
    """True if the standard grpc.health.v1 Check for `service` at `address` answers SERVING."""
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs `coroutine` to completion on a fresh event loop in a worker thread and returns its result.

    A worker thread keeps this usable from code that already runs inside an event loop (an async
    pytest fixture, a notebook), where asyncio.run() in the same thread would refuse.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="candela-stack") as pool:
        return pool.submit(asyncio.run, coroutine).result()
