"""`python -m candela_runtime.probe`, the images' HEALTHCHECK: SERVING / 200 is healthy, anything else is not."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from candela_runtime import probe

pytestmark = pytest.mark.unit


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def test_grpc_probe_follows_the_served_status(health_server: tuple[health.HealthServicer, int]) -> None:
    servicer, port = health_server
    environ = {"CANDELA_GRPC_PORT": str(port)}
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main(["grpc"], environ) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.main(["grpc"], environ) == 1


def test_grpc_probe_of_a_closed_port_fails() -> None:
    assert probe.grpc_serving("127.0.0.1:1", timeout_s=1) == "127.0.0.1:1: UNAVAILABLE"


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_http_probe_is_healthy_only_on_200() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        environ = {"CANDELA_HTTP_PORT": str(server.server_address[1])}
        assert probe.main(["http"], environ) == 0
        _Healthz.status = 503  # draining
        assert probe.main(["http"], environ) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        _Healthz.status = 200
