"""SIGTERM to any service: it reports NOT_SERVING, finishes in-flight calls and exits 0 within its grace."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from candela_stack.stack import Bootstrap, Component, Stack

pytestmark = pytest.mark.e2e

GRACE_S = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start(stack: Stack, component: Component, module: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    # No metrics endpoint: the stack's own instance of the service holds that port.
    environment = {
        **stack.service_env(component),
        "CANDELA_SHUTDOWN_GRACE_S": str(GRACE_S),
        "CANDELA_METRICS_PORT": "0",
        **env,
    }
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=environment, stdout=output, stderr=subprocess.STDOUT
        )


def _wait(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("component", "module"),
    [
        (Component.AUTH, "candela_auth"),
        (Component.PROMPTS, "candela_prompts"),
        (Component.INGEST, "candela_ingest"),
        (Component.QUERY, "candela_query"),
        (Component.WRITER, "candela_ingest.writer"),
    ],
)
def test_grpc_service_reports_not_serving_and_exits_zero(
    stack: Stack,
    tmp_path: Path,
    stopper: list[subprocess.Popen[bytes]],
    component: Component,
    module: str,
) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    process = _start(stack, component, module, tmp_path / "service.log", CANDELA_GRPC_PORT=str(port))
    stopper.append(process)
    _wait(lambda: _serving(address) or process.poll() is not None)
    assert process.poll() is None, (tmp_path / "service.log").read_text()

    seen: list[int] = []
    errors: list[grpc.RpcError] = []
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)

        def follow() -> None:
            try:
                for update in watch:
                    seen.append(update.status)
            except grpc.RpcError as err:
                errors.append(err)  # the server closes the stream as it stops

        follower = threading.Thread(target=follow)
        follower.start()
        _wait(lambda: health_pb2.HealthCheckResponse.SERVING in seen or errors, 5)
        assert seen == [health_pb2.HealthCheckResponse.SERVING], errors
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=GRACE_S + 10) == 0, (tmp_path / "service.log").read_text()
        follower.join(timeout=5)
    assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING


def test_proxy_finishes_an_in_flight_stream_on_sigterm(
    stack: Stack, admin: Bootstrap, tmp_path: Path, stopper: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    log = tmp_path / "proxy.log"
    process = _start(
        stack,
        Component.PROXY,
        "candela_proxy",
        log,
        CANDELA_HTTP_PORT=str(port),
        CANDELA_SPOOL_DIR=str(tmp_path / "spool"),
    )
    stopper.append(process)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(lambda: healthy() or process.poll() is not None)
    assert process.poll() is None, log.read_text()

    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "slow please"}]}
    headers = {"Candela-Auth": f"Bearer {admin.api_key}", "x-fake-delay-ms": "300"}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)
        process.send_signal(signal.SIGTERM)
        rest = b"".join(chunks)
    # The stream that was in flight completed in full after SIGTERM.
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert process.wait(timeout=GRACE_S + 10) == 0, log.read_text()
